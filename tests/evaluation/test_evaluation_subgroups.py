import numpy as np
import pandas as pd
import pytest
from tests.evaluation.helpers import synthetic_predictions
from scipy import stats

from cxrssl.evaluation import subgroup_metrics, subgroup_tests


def view_case(ap_error_rate: float, pa_error_rate: float, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Predictions whose error rate is set per view."""
    rng = np.random.default_rng(seed)
    view = np.array(["AP"] * n + ["PA"] * n, dtype=object)
    y = rng.integers(0, 2, 2 * n).astype(float)
    wrong = rng.random(2 * n) < np.where(view == "AP", ap_error_rate, pa_error_rate)
    called_positive = (y == 1) ^ wrong
    prob = np.where(called_positive, rng.uniform(0.55, 1, 2 * n), rng.uniform(0, 0.45, 2 * n))
    return pd.DataFrame({"image_id": np.arange(2 * n).astype(str), "patient_id": np.arange(2 * n).astype(str),
                         "probability": prob, "label": y, "view": view,
                         "sex": rng.choice(np.array(["M", "F"], dtype=object), 2 * n),
                         "age": rng.uniform(20, 90, 2 * n)})


def test_ap_errors_detected_by_sensitivity_specificity_test():
    df = view_case(ap_error_rate=0.35, pa_error_rate=0.08)
    table = subgroup_metrics(df, 0.5, n_boot=300)
    view = table[table.attribute == "view"].set_index("group")
    assert view.loc["AP", "n_incorrect"] > 2 * view.loc["PA", "n_incorrect"]
    assert view["test_p_holm"].iloc[0] < 0.01
    assert view.loc["AP", "accuracy"] == pytest.approx(view.loc["AP", "n_correct"] / view.loc["AP", "n"])
    for metric in ("auroc", "sensitivity", "specificity"):  # patient-bootstrap CIs around the point
        assert (view[f"{metric}_lo"] <= view[metric]).all() and (view[metric] <= view[f"{metric}_hi"]).all()
    tests = subgroup_tests(df, 0.5, n_boot=300).set_index("attribute")
    assert tests.loc["view", "sensitivity_p"] < 0.01 and tests.loc["view", "specificity_p"] < 0.01
    assert (tests["p_holm"] >= tests["p_value"]).all()


def test_prevalence_difference_alone_is_not_flagged():
    """Same sensitivity and specificity, different prevalence: the old error-rate χ² fired here."""
    rng = np.random.default_rng(5)
    n = 600
    view = np.array(["AP"] * n + ["PA"] * n, dtype=object)
    y = (rng.random(2 * n) < np.where(view == "AP", 0.7, 0.1)).astype(float)
    wrong = rng.random(2 * n) < np.where(y == 1, 0.3, 0.05)  # sens 0.7, spec 0.95 in both views
    called = (y == 1) ^ wrong
    df = pd.DataFrame({"image_id": np.arange(2 * n).astype(str), "patient_id": np.arange(2 * n).astype(str),
                       "probability": np.where(called, 0.8, 0.2), "label": y, "view": view})
    counts = pd.crosstab(df["view"], called == (y == 1)).to_numpy()
    assert stats.chi2_contingency(counts).pvalue < 1e-6  # error rates differ through prevalence only
    tests = subgroup_tests(df, 0.5, n_boot=400).set_index("attribute")
    assert tests.loc["view", "p_value"] > 0.05


def test_equal_error_rates_are_not_flagged():
    tests = subgroup_tests(view_case(0.2, 0.2, seed=3), 0.5).set_index("attribute")
    assert tests.loc["view", "p_value"] > 0.01 and tests.loc["view", "dof"] == 1


def test_images_of_one_patient_are_resampled_together():
    df = view_case(0.3, 0.1, n=60, seed=4)
    repeated = pd.concat([df.assign(image_id=df["image_id"] + f"_{k}") for k in range(5)], ignore_index=True)
    naive = subgroup_tests(repeated.assign(patient_id=repeated["image_id"]), 0.5, n_boot=400).set_index("attribute")
    clustered = subgroup_tests(repeated, 0.5, n_boot=400).set_index("attribute")
    assert clustered.loc["view", "sensitivity_chi2"] < naive.loc["view", "sensitivity_chi2"] / 2


def test_one_class_subgroup_has_nan_auroc_with_note(predictions):
    predictions.loc[predictions.sex == "F", "label"] = 1.0
    table = subgroup_metrics(predictions, 0.5).set_index(["attribute", "group"])
    female = table.loc[("sex", "F")]
    assert np.isnan(female["auroc"]) and np.isnan(female["specificity"])
    assert "only positives" in female["note"]
    assert not np.isnan(table.loc[("sex", "M"), "auroc"])


def test_age_bands_and_missing_group():
    df = synthetic_predictions(n_patients=200, images_per_patient=1)
    df.loc[:9, "age"] = np.nan
    df.loc[:4, "view"] = None
    table = subgroup_metrics(df, 0.5, age_bands=(0, 50, 200))
    ages = table[table.attribute == "age_band"].set_index("group")
    assert list(ages.index) == ["0–49", "50+", "(missing)"]
    assert ages.loc["0–49", "n"] == (df.age < 50).sum() and ages.loc["(missing)", "n"] == 10
    assert "excluded from the test" in ages.loc["(missing)", "note"]
    assert table[table.attribute == "view"].set_index("group").loc["(missing)", "n"] == 5
    with pytest.raises(ValueError, match="increasing"):
        subgroup_metrics(df, 0.5, age_bands=(0, 60, 40))
