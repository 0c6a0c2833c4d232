"""Does the model work equally well for everyone? Metrics per sex, view and age band with
patient-level bootstrap CIs, and a test per attribute of whether *sensitivity* and *specificity*
differ across its groups — the original paper's PA-vs-AP analysis (AP films magnify the heart).

Why not a χ² of error rates: the overall error rate mixes prevalence with performance (a group with
more positives has a different error rate at the same sensitivity and specificity), and counting
images treats a patient's films as independent. Here the test is a Wald test of equal group
sensitivities (and, separately, specificities) with the covariance from resampling *patients*
(the same resamples for every group), Bonferroni over the two within an attribute and Holm across
attributes.

Small subgroups often hold one class: AUROC is then NaN with a note (not an error, unlike the
whole split), and sensitivity/specificity are NaN when their denominator is empty.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxrssl.evaluation.bootstrap import bootstrap_samples, cluster_weights
from cxrssl.evaluation.paired import holm
from cxrssl.evaluation.metrics import prepare_predictions

SUBGROUP_COLUMNS = ("attribute", "group", "n", "n_patients", "n_positive", "prevalence", "auroc", "auroc_lo",
                    "auroc_hi", "sensitivity", "sensitivity_lo", "sensitivity_hi", "specificity", "specificity_lo",
                    "specificity_hi", "accuracy", "n_correct", "n_incorrect", "test_p_holm", "note")
TEST_COLUMNS = ("attribute", "groups", "sensitivity_chi2", "sensitivity_p", "specificity_chi2", "specificity_p",
                "dof", "p_value", "p_holm", "note")
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
                     age_bands: Sequence[float] = (0, 40, 60, 80, 200), n_boot: int = 500,
                     seed: int = 0) -> pd.DataFrame:
    """One row per (attribute, group) with :data:`SUBGROUP_COLUMNS`: metrics with 95 % patient
    bootstrap CIs; ``test_p_holm`` is the attribute's Holm-adjusted sensitivity/specificity test,
    repeated on each of its rows. Rows with the attribute missing form a ``(missing)`` group that
    is reported but left out of the test."""
    df, _ = prepare_predictions(pred_df, "subgroups")
    df["correct"] = (df["probability"] >= threshold).astype(float) == df["label"]
    attributes = _attribute_columns(df, age_bands)
    tests = subgroup_tests(df, threshold, age_bands, n_boot, seed).set_index("attribute")
    rows: list[dict] = []
    for attribute, values in attributes.items():
        for group in [*sorted(values.dropna().unique(), key=str), MISSING_GROUP]:
            mask = values.isna() if group == MISSING_GROUP else values == group
            if mask.any():
                row = _group_row(df.loc[mask], threshold)
                row.update(_group_cis(df.loc[mask], threshold, n_boot, seed))
                row.update(attribute=attribute, group=str(group), test_p_holm=tests.loc[attribute, "p_holm"])
                if group == MISSING_GROUP:
                    row["note"] = "; ".join(filter(None, [row["note"], "excluded from the test"]))
                rows.append(row)
    return pd.DataFrame(rows, columns=list(SUBGROUP_COLUMNS))


def _group_cis(group: pd.DataFrame, threshold: float, n_boot: int, seed: int) -> dict:
    """Percentile CIs from resampling the group's patients (NaN where a class is absent)."""
    y = group["label"].to_numpy(float)
    out = {f"{m}_{e}": np.nan for m in ("auroc", "sensitivity", "specificity") for e in ("lo", "hi")}
    if y.min() == y.max():
        return out
    codes = pd.factorize(group["patient_id"])[0]
    values = bootstrap_samples(y, group["probability"].to_numpy(float), codes, threshold, n_boot, seed,
                               max_redraw=5).values
    for metric in ("auroc", "sensitivity", "specificity"):
        finite = values[metric][np.isfinite(values[metric])]
        if len(finite):
            out[f"{metric}_lo"], out[f"{metric}_hi"] = np.quantile(finite, [0.025, 0.975])
    return out


def subgroup_tests(pred_df: pd.DataFrame, threshold: float, age_bands: Sequence[float] = (0, 40, 60, 80, 200),
                   n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Per attribute: Wald χ² of equal sensitivity and of equal specificity across its groups
    (patient-bootstrap covariance), their Bonferroni-combined ``p_value``, and ``p_holm`` across
    attributes."""
    df, _ = prepare_predictions(pred_df, "subgroups")
    y = df["label"].to_numpy(float)
    called = (df["probability"].to_numpy(float) >= threshold)
    codes = pd.factorize(df["patient_id"])[0]
    w = cluster_weights(codes, n_boot, np.random.default_rng(seed))
    rows = []
    for attribute, values in _attribute_columns(df, age_bands).items():
        groups = sorted(values.dropna().unique(), key=str)
        row = {"attribute": attribute, "groups": ", ".join(map(str, groups)), "note": ""}
        results = {name: _wald(w, [(values == g).to_numpy() & (y == truth) for g in groups],
                               called if truth == 1 else ~called)
                   for name, truth in (("sensitivity", 1), ("specificity", 0))}
        for name, (chi2, p, dof, note) in results.items():
            row.update({f"{name}_chi2": chi2, f"{name}_p": p, "dof": dof})
            row["note"] = "; ".join(filter(None, [row["note"], note]))
        ps = [results[n][1] for n in results if np.isfinite(results[n][1])]
        row["p_value"] = min(1.0, 2 * min(ps)) if ps else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in TEST_COLUMNS if c != "p_holm"])
    out["p_holm"] = holm(out["p_value"].to_numpy(float)) if len(out) else []
    return out[list(TEST_COLUMNS)]


def _wald(w: np.ndarray, members: list[np.ndarray], hit: np.ndarray) -> tuple[float, float, float, str]:
    """χ² = dᵀ V⁺ d for the differences d of each group's rate from the first group's."""
    usable = [m for m in members if m.sum() > 0]
    if len(usable) < 2:
        return np.nan, np.nan, np.nan, "fewer than two groups with cases"
    point = np.array([hit[m].mean() for m in usable])
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.stack([(w @ (m & hit)) / (w @ m) for m in usable], axis=1)
    boot = boot[np.isfinite(boot).all(axis=1)]
    if len(boot) < 10:
        return np.nan, np.nan, np.nan, "too few resamples with cases in every group"
    contrast = np.hstack([-np.ones((len(usable) - 1, 1)), np.eye(len(usable) - 1)])
    d = contrast @ point
    cov = contrast @ np.cov(boot, rowvar=False) @ contrast.T
    if np.allclose(cov, 0):
        return (0.0, 1.0, float(len(d)), "") if np.allclose(d, 0) else (np.inf, 0.0, float(len(d)), "")
    chi2 = float(d @ np.linalg.pinv(np.atleast_2d(cov)) @ d)
    return chi2, float(stats.chi2.sf(chi2, len(d))), float(len(d)), ""


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
        "n": len(y), "n_patients": int(group["patient_id"].nunique()), "n_positive": n_pos, "prevalence": n_pos / len(y),
        "auroc": float(roc_auc_score(y, p)) if both else np.nan,
        "sensitivity": tp / n_pos if n_pos else np.nan,
        "specificity": tn / n_neg if n_neg else np.nan,
        "accuracy": correct / len(y), "n_correct": correct, "n_incorrect": len(y) - correct,
        "note": "" if both else f"AUROC undefined: only {'positives' if n_pos else 'negatives'}",
    }
