"""Operating-point rules: pick the probability threshold on one split (normally validation) and
apply it unchanged to another, so the test metrics are not tuned on the test set.

A case is called positive when ``probability >= threshold`` (as in :mod:`metrics`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxrssl.errors import ConfigError
from cxrssl.evaluation.metrics import as_arrays, ensure_two_classes

#: Scores closer than this count as tied: rounding makes 3/10 - 1/10 differ from 5/10 - 3/10.
TIE_TOLERANCE = 1e-9
VALID_RULES = ("youden", "f1", "sensitivity@X", "specificity@X", "<number in [0, 1]>")


def choose_threshold(labels: Sequence[float], probs: Sequence[float], rule: str | float,
                     split: str = "data") -> float:
    """Threshold chosen by ``rule``.

    * ``youden``: maximises sensitivity + specificity − 1 (highest threshold among ties, scores
      within ``TIE_TOLERANCE`` being ties);
    * ``f1``: maximises F1 (highest threshold among ties, likewise);
    * ``sensitivity@X``: the highest threshold whose sensitivity is ≥ X (e.g. ``sensitivity@0.9``);
    * ``specificity@X``: the lowest threshold whose specificity is ≥ X;
    * a float or a number string: that fixed threshold.
    """
    fixed = _as_fixed(rule)
    if fixed is not None:
        return fixed
    name, arg = check_rule(rule)
    y, p = as_arrays(labels, probs)
    ensure_two_classes(y, split)
    if name == "f1":
        return _best_f1(y, p)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop sklearn's +inf "nothing positive" point
    if name == "youden":
        return float(thr[_first_best(tpr - fpr)])  # thresholds decrease: first best = highest
    target = _fraction(arg, rule)
    if name == "sensitivity":
        return float(thr[np.flatnonzero(tpr >= target - 1e-12)[0]])
    ok = np.flatnonzero(1 - fpr >= target - 1e-12)
    if len(ok) == 0:  # only "call nothing positive" reaches that specificity
        return float(np.nextafter(p.max(), np.inf))
    return float(thr[ok[-1]])


def check_rule(rule: str | float) -> tuple[str, str]:
    """Parse ``rule`` without data: ``(name, argument)``; a :class:`ConfigError` (a ValueError)
    naming the valid rules otherwise. Lets commands reject a typo before any work."""
    if _as_fixed(rule) is not None:
        return "fixed", str(rule)
    name, _, arg = str(rule).strip().lower().partition("@")
    if name not in ("youden", "f1", "sensitivity", "specificity") or (bool(arg) != (name in (
            "sensitivity", "specificity"))):
        raise ConfigError(f"unknown threshold rule {rule!r}; valid rules: {', '.join(VALID_RULES)}")
    if arg:
        _fraction(arg, rule)
    return name, arg


def _best_f1(y: np.ndarray, p: np.ndarray) -> float:
    precision, recall, thr = precision_recall_curve(y, p, drop_intermediate=False)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return float(thr[len(f1) - 1 - _first_best(f1[::-1])])  # thresholds increase: last best = highest


def _first_best(score: np.ndarray) -> int:
    """Index of the first score within ``TIE_TOLERANCE`` of the maximum (ties by tolerance, not
    by floating-point accident, so the rule really returns the highest tied threshold)."""
    return int(np.flatnonzero(score >= score.max() - TIE_TOLERANCE)[0])


def _as_fixed(rule: str | float) -> float | None:
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        value = float(rule)
    else:
        try:
            value = float(str(rule).strip())
        except ValueError:
            return None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"fixed threshold {rule!r} must be a probability in [0, 1]")
    return value


def _fraction(arg: str, rule: object) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"threshold rule {rule!r}: {arg!r} is not a number; write e.g. "
                         f"'sensitivity@0.9'. Valid rules: {', '.join(VALID_RULES)}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"threshold rule {rule!r}: target must be in (0, 1], got {value}")
    return value
