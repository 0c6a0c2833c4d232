"""Point estimates of the binary metrics a clinical paper reports, from scikit-learn.

Conventions (shared with the bootstrap, which recomputes the same numbers vectorised):

* an image is predicted positive when ``probability >= threshold``;
* a metric is NaN only where it is mathematically undefined (0/0): PPV with no predicted
  positives, NPV with no predicted negatives, MCC when a confusion-matrix margin is empty
  (scikit-learn returns 0 there; we return NaN so "undefined" is never mistaken for "no skill");
* AUROC needs both classes: a one-class input raises :class:`OneClassError` instead of a NaN.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from cxrssl.errors import UserError
from cxrssl.evaluation.calibration import expected_calibration_error

#: Every metric :func:`binary_metrics` returns, in report order.
METRIC_NAMES: tuple[str, ...] = (
    "auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1", "mcc",
    "balanced_accuracy", "accuracy", "brier", "ece",
)
#: Columns a predictions table (design.md §8) must have for evaluation.
REQUIRED_PREDICTION_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "probability", "label")


class OneClassError(UserError, ValueError):
    """The evaluated labels hold one class only, so AUROC (and sensitivity or specificity) is
    undefined; raised instead of returning a silent NaN."""


def ensure_two_classes(labels: np.ndarray, split: str = "data") -> None:
    """Raise :class:`OneClassError` naming the split, n and the class present."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) < 2:
        only = "none (no labelled rows)" if len(present) == 0 else f"{present[0]:g}"
        raise OneClassError(
            f"split {split!r}: n={len(labels)} labelled images, all of class {only}; AUROC and "
            "sensitivity/specificity are undefined. Evaluate on a split with both positives and "
            "negatives (check the split fractions, label_fraction or the label column).")


def as_arrays(labels: Sequence[float], probs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels in {0, 1} and probabilities in [0, 1]; return float arrays."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must be 1-D and equally long")
    bad_y = ~np.isin(y, (0.0, 1.0))
    if bad_y.any():
        raise ValueError(f"labels must be 0 or 1; bad values {np.unique(y[bad_y])[:5].tolist()} at "
                         f"positions {np.flatnonzero(bad_y)[:5].tolist()} (drop NaN labels first)")
    bad_p = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad_p.any():
        raise ValueError(f"probabilities must be finite and in [0, 1]; bad at positions "
                         f"{np.flatnonzero(bad_p)[:5].tolist()} (apply a sigmoid to logits first)")
    return y, p


def binary_metrics(labels: Sequence[float], probs: Sequence[float], threshold: float,
                   n_bins: int = 10, split: str = "data") -> dict[str, float]:
    """All of :data:`METRIC_NAMES` for one labelled set at one operating point."""
    y, p = as_arrays(labels, probs)
    ensure_two_classes(y, split)
    pred = (p >= threshold).astype(int)
    y_int = y.astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_int, pred, labels=[0, 1]).ravel()
    mcc_defined = min(tp + fp, tp + fn, tn + fp, tn + fn) > 0
    return {
        "auroc": float(skm.roc_auc_score(y_int, p)),
        "auprc": float(skm.average_precision_score(y_int, p)),
        "sensitivity": float(skm.recall_score(y_int, pred, pos_label=1)),
        "specificity": float(skm.recall_score(y_int, pred, pos_label=0)),
        "ppv": float(skm.precision_score(y_int, pred, pos_label=1, zero_division=np.nan)),
        "npv": float(skm.precision_score(y_int, pred, pos_label=0, zero_division=np.nan)),
        "f1": float(skm.f1_score(y_int, pred, zero_division=np.nan)),
        "mcc": float(skm.matthews_corrcoef(y_int, pred)) if mcc_defined else float("nan"),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_int, pred)),
        "accuracy": float(skm.accuracy_score(y_int, pred)),
        "brier": float(skm.brier_score_loss(y_int, p)),
        "ece": float(expected_calibration_error(y, p, n_bins=n_bins)),
    }


def prepare_predictions(pred_df: pd.DataFrame, split: str = "data") -> tuple[pd.DataFrame, int]:
    """Check a predictions table and drop rows with a NaN label.

    Returns ``(labelled rows with a fresh index, number of rows excluded)``.
    """
    missing = [c for c in REQUIRED_PREDICTION_COLUMNS if c not in pred_df.columns]
    if missing:
        raise ValueError(f"predictions table for split {split!r} lacks column(s) {missing}; "
                         f"expected at least {list(REQUIRED_PREDICTION_COLUMNS)} (design.md §8)")
    label = pd.to_numeric(pred_df["label"], errors="coerce")
    unparsable = label.isna() & pred_df["label"].notna()
    if unparsable.any():
        raise ValueError(f"predictions for split {split!r}: non-numeric label at rows "
                         f"{pred_df.index[unparsable][:5].tolist()}; labels must be 0, 1 or NaN")
    keep = label.notna()
    out = pred_df.loc[keep].copy()
    out["label"] = label[keep].astype(float)
    out["probability"] = pd.to_numeric(out["probability"], errors="coerce").astype(float)
    bad_p = ~np.isfinite(out["probability"]) | (out["probability"] < 0) | (out["probability"] > 1)
    if bad_p.any():
        raise ValueError(f"predictions for split {split!r}: probability missing or outside [0, 1] "
                         f"at rows {out.index[bad_p][:5].tolist()} (image_id "
                         f"{out.loc[bad_p, 'image_id'].head(5).tolist()})")
    bad_y = ~out["label"].isin([0.0, 1.0])
    if bad_y.any():
        raise ValueError(f"predictions for split {split!r}: label must be 0, 1 or NaN; bad rows "
                         f"{out.index[bad_y][:5].tolist()}")
    if out["patient_id"].isna().any():
        raise ValueError(f"predictions for split {split!r}: patient_id missing at rows "
                         f"{out.index[out['patient_id'].isna()][:5].tolist()}")
    out["patient_id"] = out["patient_id"].astype(str)
    return out.reset_index(drop=True), int((~keep).sum())
