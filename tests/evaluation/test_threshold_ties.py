"""Youden and F1 return the highest threshold among ties, ties judged with a tolerance (issue 8 item 14).

In floating point 0.3 - 0.1 < 0.5 - 0.3, so a plain argmax picks the lower of two mathematically
equal Youden points; the exact rational scores below are the reference.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from cxrssl.evaluation.thresholds import choose_threshold


def exact_best(labels: list[int], rule: str) -> float:
    """Highest-threshold maximiser with exact rational arithmetic (scores sorted descending)."""
    probs = np.round(np.linspace(0.99, 0.01, len(labels)), 6)
    n_pos, n_neg = sum(labels), len(labels) - sum(labels)
    best, best_t, tp, fp = None, None, 0, 0
    for label, t in zip(labels, probs):
        tp, fp = tp + label, fp + 1 - label
        score = (Fraction(tp, n_pos) - Fraction(fp, n_neg) if rule == "youden"
                 else Fraction(2 * tp, 2 * tp + fp + (n_pos - tp)))
        if best is None or score > best:
            best, best_t = score, float(t)
    return best_t


def run(labels: list[int], rule: str) -> float:
    probs = np.round(np.linspace(0.99, 0.01, len(labels)), 6)
    return choose_threshold(np.array(labels, float), probs, rule)


def test_youden_rounding_tie_picks_highest_threshold():
    # descending scores: J = 0.3 - 0.1 (float 0.19999999999999998) first, then 0.5 - 0.3 (0.2)
    labels = [1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    probs = np.round(np.linspace(0.99, 0.01, len(labels)), 6)
    assert run(labels, "youden") == exact_best(labels, "youden") == pytest.approx(probs[3])


def test_f1_rounding_tie_picks_highest_threshold():
    labels = [0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1]
    assert run(labels, "f1") == exact_best(labels, "f1")


@pytest.mark.parametrize("rule", ["youden", "f1"])
def test_random_label_orders_match_exact_arithmetic(rule):
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(400):
        n = int(rng.integers(6, 40))
        labels = [int(v) for v in rng.integers(0, 2, n)]
        if 0 < sum(labels) < n:
            assert run(labels, rule) == pytest.approx(exact_best(labels, rule), abs=1e-12), labels
            checked += 1
    assert checked > 300


@pytest.mark.parametrize("rule", ["youdn", "sensitivity", "sensitivity@x", "specificity@1.5", "1.2", "f1@0.5"])
def test_bad_rules_are_config_errors_before_any_data(rule):
    from cxrssl.errors import ConfigError
    from cxrssl.evaluation.thresholds import check_rule

    with pytest.raises(ConfigError):
        check_rule(rule)
    with pytest.raises(ValueError):  # ConfigError stays a ValueError for existing callers
        choose_threshold([0, 1], [0.2, 0.8], rule)


def test_good_rules_parse():
    from cxrssl.evaluation.thresholds import check_rule

    assert check_rule("Sensitivity@0.9") == ("sensitivity", "0.9") and check_rule(0.3)[0] == "fixed"
