"""Cohort description ("Table 1"): who is in each split, and are the splits comparable?

Every test counts *patients*, not images: a patient's films share their age and sex, and treating
2.5 films per patient as independent shrinks p-values. Age: median (IQR) of one age per patient
(the first recorded), a normality test per group (Shapiro–Wilk up to 5000 values, D'Agostino–Pearson
K² above), then Mann–Whitney U (two groups) or Kruskal–Wallis (more). Male: patients. PA view and
positive: image counts are shown, the χ² test compares patients with at least one such film
(``scipy.stats.chi2_contingency`` defaults, so Yates's correction for 2×2). Missing values are
excluded from tests and reported as image counts.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

_SHAPIRO_MAX_N = 5000


def cohort_table(tables: dict[str, pd.DataFrame], label_column: str | None = None) -> pd.DataFrame:
    """One row per characteristic, one column per group, plus ``p_value`` and ``statistical_test``.

    Each table needs ``patient_id``; ``age``, ``sex``, ``view`` and the label (``label`` or
    ``cardiomegaly``, or ``label_column``) are used when present.
    """
    if len(tables) < 1:
        raise ValueError("cohort_table needs at least one named table, e.g. {'train': ..., 'test': ...}")
    for name, table in tables.items():
        if "patient_id" not in table.columns:
            raise ValueError(f"cohort table {name!r} lacks column 'patient_id'; columns: {list(table.columns)}")
    groups = list(tables)
    rows: list[dict] = [
        _row("n images", {g: f"{len(t)}" for g, t in tables.items()}),
        _row("n patients", {g: f"{t['patient_id'].nunique()}" for g, t in tables.items()}),
    ]
    if all("age" in t.columns for t in tables.values()):
        rows += _age_rows(tables)
    for column, category, title in (("sex", "M", "male"), ("view", "PA", "PA view")):
        if all(column in t.columns for t in tables.values()):
            rows += _proportion_rows(tables, column, category, title)
    label = label_column or next((c for c in ("label", "cardiomegaly")
                                  if all(c in t.columns for t in tables.values())), None)
    if label is not None:
        numeric = {g: pd.to_numeric(t[label], errors="coerce") for g, t in tables.items()}
        rows += _proportion_rows({g: pd.DataFrame({label: s, "patient_id": tables[g]["patient_id"]})
                                  for g, s in numeric.items()},
                                 label, 1.0, "positive")
    return pd.DataFrame(rows, columns=["characteristic", *groups, "p_value", "statistical_test"])


def _row(name: str, values: dict[str, str], p: float = np.nan, test: str = "") -> dict:
    return {"characteristic": name, **values, "p_value": p, "statistical_test": test}


def _per_patient(table: pd.DataFrame, values: pd.Series, how: str = "first") -> pd.Series:
    """One value per patient among the known ones: the first, or whether any equals True."""
    known = values.notna()
    grouped = values[known].groupby(table.loc[known, "patient_id"].astype(str))
    return grouped.first() if how == "first" else grouped.max()


def _age_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    ages = {g: pd.to_numeric(t["age"], errors="coerce") for g, t in tables.items()}
    known = {g: _per_patient(tables[g], a).to_numpy(float) for g, a in ages.items()}
    summary = {g: (f"{np.median(a):.0f} ({np.percentile(a, 25):.0f}–{np.percentile(a, 75):.0f})"
                   if len(a) else "–") for g, a in known.items()}
    normality = {g: _normality_p(a) for g, a in known.items()}
    p, test = _compare_ages(list(known.values()))
    rows = [_row("age, median (IQR)", summary, p, f"{test} (one age per patient)" if test else test),
            _row("age normality p", {g: f"{p:.3g} ({test})" for g, (p, test) in normality.items()},
                 np.nan, "per group: Shapiro–Wilk (n ≤ 5000) or D'Agostino K²"),
            _row("age missing, n", {g: f"{int(a.isna().sum())}" for g, a in ages.items()})]
    return rows


def _normality_p(values: np.ndarray) -> tuple[float, str]:
    if len(values) < 3 or np.ptp(values) == 0:
        return float("nan"), "too few distinct values"
    if len(values) <= _SHAPIRO_MAX_N:
        return float(stats.shapiro(values).pvalue), "Shapiro–Wilk"
    return float(stats.normaltest(values).pvalue), "D'Agostino K²"


def _compare_ages(samples: list[np.ndarray]) -> tuple[float, str]:
    samples = [s for s in samples if len(s)]
    if len(samples) < 2:
        return float("nan"), ""
    if len(samples) == 2:
        return float(stats.mannwhitneyu(samples[0], samples[1]).pvalue), "Mann–Whitney U"
    try:
        return float(stats.kruskal(*samples).pvalue), "Kruskal–Wallis"
    except ValueError:  # all values identical
        return float("nan"), "Kruskal–Wallis (undefined: identical values)"


def _proportion_rows(tables: dict[str, pd.DataFrame], column: str, category: object,
                     title: str) -> list[dict]:
    counts, values = {}, {}
    for group, table in tables.items():
        hit = table[column].where(table[column].isna(), table[column] == category)
        per_patient = _per_patient(table, hit, "first" if column == "sex" else "any").astype(bool)
        counts[group] = (int(per_patient.sum()), int((~per_patient).sum()))
        shown = per_patient if column == "sex" else hit.dropna().astype(bool)  # sex: patients; else images
        values[group] = f"{int(shown.sum())} ({100 * shown.mean():.1f} %)" if len(shown) else "–"
    p, test = _chi2(np.array(list(counts.values())))
    if test == "χ²":
        test = "χ² (patients)" if column == "sex" else "χ² (patients with any)"
    missing = {g: f"{int(t[column].isna().sum())}" for g, t in tables.items()}
    return [_row(f"{title}, n (%)", values, p, test), _row(f"{column} missing, n", missing)]


def _chi2(contingency: np.ndarray) -> tuple[float, str]:
    """χ² test of independence; NaN when a row or column is empty (expected count 0)."""
    if contingency.shape[0] < 2:
        return float("nan"), ""
    if (contingency.sum(axis=0) == 0).any() or (contingency.sum(axis=1) == 0).any():
        return float("nan"), "χ² (undefined: an empty row or column)"
    return float(stats.chi2_contingency(contingency).pvalue), "χ²"
