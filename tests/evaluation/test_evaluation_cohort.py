import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrssl.evaluation import cohort_table


def cohort(n: int, age_shift: float, male: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.gamma(9, 6, n) + age_shift
    age[:3] = np.nan
    return pd.DataFrame({
        "patient_id": rng.integers(0, n // 2, n).astype(str), "age": age,
        "sex": np.where(rng.random(n) < male, "M", "F").astype(object),
        "view": rng.choice(np.array(["PA", "AP", None], dtype=object), n),
        "cardiomegaly": (rng.random(n) < 0.3).astype(float)})


def patient_values(table, column, pick):
    """Independent per-patient reduction: ``pick`` over a patient's known values, in row order."""
    out = []
    for _, rows in table.groupby(table["patient_id"], sort=True):
        known = [v for v in rows[column] if not (v is None or (isinstance(v, float) and np.isnan(v)))]
        if known:
            out.append(pick(known))
    return np.array(out, dtype=float)


def row(table, name):
    return table.set_index("characteristic").loc[name]


def test_two_group_p_values_match_scipy():
    train, test = cohort(400, 0, 0.55, 0), cohort(150, 8, 0.40, 1)
    table = cohort_table({"train": train, "test": test})
    assert list(table.columns) == ["characteristic", "train", "test", "p_value", "statistical_test"]
    age = row(table, "age, median (IQR)")
    ages = [patient_values(t, "age", lambda v: v[0]) for t in (train, test)]  # one age per patient
    assert age["p_value"] == pytest.approx(stats.mannwhitneyu(*ages).pvalue)
    assert age["train"].startswith(f"{np.median(ages[0]):.0f} (") and "per patient" in age["statistical_test"]
    normality = row(table, "age normality p")
    assert normality["test"].startswith(f"{stats.shapiro(ages[1]).pvalue:.3g}")
    for column, category, name, pick in (("sex", "M", "male, n (%)", lambda v: v[0] == category),
                                         ("view", "PA", "PA view, n (%)", lambda v: any(x == category for x in v)),
                                         ("cardiomegaly", 1.0, "positive, n (%)", lambda v: any(x == category for x in v))):
        hits = [patient_values(t, column, pick) for t in (train, test)]
        counts = [[sum(h), len(h) - sum(h)] for h in hits]  # patients, not images
        assert row(table, name)["p_value"] == pytest.approx(stats.chi2_contingency(counts).pvalue), name
        assert "patients" in row(table, name)["statistical_test"]
    assert row(table, "n images")["test"] == "150"
    assert row(table, "n patients")["train"] == str(train.patient_id.nunique())
    assert row(table, "age missing, n")["train"] == "3"
    assert row(table, "view missing, n")["test"] == str(test.view.isna().sum())


def test_three_groups_use_kruskal_wallis():
    groups = {name: cohort(120, shift, 0.5, seed) for seed, (name, shift) in
              enumerate((("train", 0), ("val", 2), ("test", 10)))}
    table = cohort_table(groups)
    age = row(table, "age, median (IQR)")
    expected = stats.kruskal(*(patient_values(g, "age", lambda v: v[0]) for g in groups.values())).pvalue
    assert age["statistical_test"].startswith("Kruskal–Wallis") and age["p_value"] == pytest.approx(expected)


def test_empty_category_gives_nan_not_crash():
    a, b = cohort(50, 0, 0.5, 0), cohort(50, 0, 0.5, 1)
    a["view"], b["view"] = "PA", "PA"
    pa = row(cohort_table({"a": a, "b": b}), "PA view, n (%)")
    assert np.isnan(pa["p_value"]) and "undefined" in pa["statistical_test"]


def test_missing_patient_id_is_a_clear_error():
    with pytest.raises(ValueError, match="'test' lacks column 'patient_id'"):
        cohort_table({"test": pd.DataFrame({"age": [1.0]})})
