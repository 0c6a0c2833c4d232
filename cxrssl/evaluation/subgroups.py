"""Does the model work equally well for everyone? Metrics per sex, view and age band, and a χ²
test of error rates (correct vs incorrect counts) across the groups of each attribute — the
original paper's PA-vs-AP analysis (AP films magnify the heart, so errors cluster there).

Small subgroups often hold one class: AUROC is then NaN with a note (not an error, unlike the
whole split), and sensitivity/specificity are NaN when their denominator is empty.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxrssl.evaluation.metrics import prepare_predictions

SUBGROUP_COLUMNS = ("attribute", "group", "n", "n_positive", "prevalence", "auroc", "sensitivity",
                    "specificity", "accuracy", "n_correct", "n_incorrect", "chi2_p_value", "note")
MISSING_GROUP = "(missing)"


def age_band_labels(age: pd.Series, age_bands: Sequence[float]) -> pd.Series:
    """Left-closed bands ``[lo, hi)`` labelled like ``40–59`` (whole years); an open top band
    (upper edge ≥ 120) reads ``80+``."""
    edges = list(age_bands)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"age_bands must be at least two increasing edges, got {age_bands!r}")
    labels = [f"{lo:g}+" if hi >= 120 else f"{lo:g}–{hi - 1:g}" for lo, hi in zip(edges, edges[1:])]
    banded = pd.cut(pd.to_numeric(age, errors="coerce"), bins=edges, right=False, labels=labels)
    return banded.astype(object)


def subgroup_metrics(pred_df: pd.DataFrame, threshold: float,
                     age_bands: Sequence[float] = (0, 40, 60, 80, 200)) -> pd.DataFrame:
    """One row per (attribute, group) with :data:`SUBGROUP_COLUMNS`; ``chi2_p_value`` is the
    attribute's test, repeated on each of its rows. Rows with the attribute missing form a
    ``(missing)`` group that is reported but left out of the test."""
    df, _ = prepare_predictions(pred_df, "subgroups")
    df["correct"] = (df["probability"] >= threshold).astype(float) == df["label"]
    attributes = _attribute_columns(df, age_bands)
    rows: list[dict] = []
    for attribute, values in attributes.items():
        test = error_rate_test(df["correct"], values)
        for group in [*sorted(values.dropna().unique(), key=str), MISSING_GROUP]:
            mask = values.isna() if group == MISSING_GROUP else values == group
            if mask.any():
                row = _group_row(df.loc[mask], threshold)
                row.update(attribute=attribute, group=str(group), chi2_p_value=test["p_value"])
                if group == MISSING_GROUP:
                    row["note"] = "; ".join(filter(None, [row["note"], "excluded from χ² test"]))
                rows.append(row)
    return pd.DataFrame(rows, columns=list(SUBGROUP_COLUMNS))


def subgroup_tests(pred_df: pd.DataFrame, threshold: float,
                   age_bands: Sequence[float] = (0, 40, 60, 80, 200)) -> pd.DataFrame:
    """χ² statistic, dof, p-value and groups tested, one row per attribute."""
    df, _ = prepare_predictions(pred_df, "subgroups")
    correct = (df["probability"] >= threshold).astype(float) == df["label"]
    rows = [{"attribute": a, **error_rate_test(correct, v)}
            for a, v in _attribute_columns(df, age_bands).items()]
    return pd.DataFrame(rows, columns=["attribute", "chi2", "dof", "p_value", "groups", "note"])


def error_rate_test(correct: pd.Series, groups: pd.Series) -> dict:
    """χ² test (``scipy.stats.chi2_contingency``) of correct/incorrect counts across groups."""
    known = groups.notna()
    table = pd.crosstab(groups[known], correct[known].astype(bool)).reindex(
        columns=[True, False], fill_value=0)
    result = {"chi2": np.nan, "dof": np.nan, "p_value": np.nan,
              "groups": ", ".join(map(str, table.index)), "note": ""}
    if len(table) < 2:
        result["note"] = "fewer than two groups with data"
    elif (table.sum(axis=0) == 0).any():
        result["note"] = "no errors (or no correct calls) at all: test undefined"
    else:
        chi2, p, dof, _ = stats.chi2_contingency(table.to_numpy())
        result.update(chi2=float(chi2), dof=int(dof), p_value=float(p))
    return result


def _attribute_columns(df: pd.DataFrame, age_bands: Sequence[float]) -> dict[str, pd.Series]:
    attributes: dict[str, pd.Series] = {}
    for column in ("sex", "view"):
        if column in df.columns:
            attributes[column] = df[column].where(df[column].notna(), None).astype(object)
    if "age" in df.columns:
        attributes["age_band"] = age_band_labels(df["age"], age_bands)
    return attributes


def _group_row(group: pd.DataFrame, threshold: float) -> dict:
    y = group["label"].to_numpy(int)
    p = group["probability"].to_numpy(float)
    tn, fp, fn, tp = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel()
    n_pos, n_neg = int(tp + fn), int(tn + fp)
    both = n_pos > 0 and n_neg > 0
    correct = int(tp + tn)
    return {
        "n": len(y), "n_positive": n_pos, "prevalence": n_pos / len(y),
        "auroc": float(roc_auc_score(y, p)) if both else np.nan,
        "sensitivity": tp / n_pos if n_pos else np.nan,
        "specificity": tn / n_neg if n_neg else np.nan,
        "accuracy": correct / len(y), "n_correct": correct, "n_incorrect": len(y) - correct,
        "note": "" if both else f"AUROC undefined: only {'positives' if n_pos else 'negatives'}",
    }
