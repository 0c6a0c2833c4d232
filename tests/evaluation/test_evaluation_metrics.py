import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torchmetrics.classification import BinaryCalibrationError

from cxrssl.evaluation import METRIC_NAMES, OneClassError, binary_metrics, prepare_predictions, weighted_metrics
from cxrssl.evaluation.calibration import expected_calibration_error


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.71])
def test_binary_metrics_equal_sklearn(seed, threshold):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 250)
    p = np.clip(rng.beta(2, 2, 250) * 0.6 + 0.4 * y * rng.random(250), 0, 1)
    pred = (p >= threshold).astype(int)
    got = binary_metrics(y, p, threshold)
    assert set(got) == set(METRIC_NAMES)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    expected = {
        "auroc": skm.roc_auc_score(y, p), "auprc": skm.average_precision_score(y, p),
        "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
        "npv": tn / (tn + fn), "f1": skm.f1_score(y, pred), "mcc": skm.matthews_corrcoef(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred), "accuracy": skm.accuracy_score(y, pred),
        "brier": skm.brier_score_loss(y, p),
        "ece": BinaryCalibrationError(n_bins=10, norm="l1")(torch.tensor(p), torch.tensor(y)).item(),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_torchmetrics_including_probability_one(n_bins):
    rng = np.random.default_rng(n_bins)
    p = np.r_[rng.random(300), 1.0, 1.0, 0.0]
    y = (rng.random(303) < p).astype(float)
    reference = BinaryCalibrationError(n_bins=n_bins, norm="l1")(torch.tensor(p), torch.tensor(y)).item()
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(reference, abs=1e-6)


def test_undefined_metrics_are_nan_only_where_undefined():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    nobody_positive = binary_metrics(y, p, threshold=0.9)
    assert np.isnan(nobody_positive["ppv"]) and np.isnan(nobody_positive["mcc"])
    assert nobody_positive["f1"] == 0.0 and nobody_positive["sensitivity"] == 0.0
    assert nobody_positive["npv"] == 0.5 and nobody_positive["specificity"] == 1.0
    everybody_positive = binary_metrics(y, p, threshold=0.0)
    assert np.isnan(everybody_positive["npv"]) and everybody_positive["ppv"] == 0.5


def test_one_class_raises_clear_error():
    with pytest.raises(OneClassError, match=r"split 'test'.*n=5.*class 1") as info:
        binary_metrics(np.ones(5), np.linspace(0, 1, 5), 0.5, split="test")
    assert isinstance(info.value, ValueError)


def test_bad_probabilities_and_labels_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\].*positions \[1\]"):
        binary_metrics([0, 1], [0.2, 1.5], 0.5)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        binary_metrics([0, 2], [0.2, 0.5], 0.5)


def test_prepare_predictions_drops_and_counts_nan_labels(predictions):
    predictions.loc[[0, 5, 9], "label"] = np.nan
    clean, n_excluded = prepare_predictions(predictions, "test")
    assert n_excluded == 3 and len(clean) == len(predictions) - 3
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['probability'\]"):
        prepare_predictions(predictions.drop(columns="probability"), "test")
    predictions.loc[2, "probability"] = np.nan
    with pytest.raises(ValueError, match="img2"):
        prepare_predictions(predictions, "test")


def test_weighted_metrics_equal_sklearn_on_explicit_resamples():
    """The bootstrap's vectorised metrics equal binary_metrics on the materialised resample."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80).astype(float)
    p = np.round(rng.random(80), 1)  # many ties
    weights = rng.integers(0, 3, size=(6, 80)).astype(float)
    batch = weighted_metrics(y, p, 0.5, weights)
    for row, w in enumerate(weights):
        idx = np.repeat(np.arange(80), w.astype(int))
        expected = binary_metrics(y[idx], p[idx], 0.5)
        for name in METRIC_NAMES:
            assert batch[name][row] == pytest.approx(expected[name], abs=1e-9, nan_ok=True), name
