"""Calibration slope/intercept, temperature/Platt recalibration on validation, net benefit, BCa ties,
and their wiring into evaluate_predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrssl.evaluation.bootstrap import _bca_quantiles
from cxrssl.evaluation.calibration import (calibration_slope_intercept, fit_recalibration, net_benefit,
                                           recalibrate_predictions)
from cxrssl.evaluation.report import evaluate_predictions
from cxrssl.evaluation.thresholds import choose_threshold
from tests.evaluation.helpers import synthetic_predictions


def _calibrated(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5, 1.5, n)
    p = 1 / (1 + np.exp(-z))
    return (rng.random(n) < p).astype(float), p, z


def test_slope_and_intercept_detect_over_confidence_and_offset():
    y, p, z = _calibrated()
    ideal = calibration_slope_intercept(y, p)
    assert ideal["calibration_slope"] == pytest.approx(1, abs=0.05)
    assert ideal["calibration_intercept"] == pytest.approx(0, abs=0.05)
    over = calibration_slope_intercept(y, 1 / (1 + np.exp(-2 * z)))
    assert over["calibration_slope"] == pytest.approx(0.5, abs=0.04)
    high = calibration_slope_intercept(y, 1 / (1 + np.exp(-(z + 1))))
    assert high["calibration_intercept"] == pytest.approx(-1, abs=0.06)


def test_temperature_and_platt_undo_miscalibration():
    y, _, z = _calibrated(seed=1)
    over = 1 / (1 + np.exp(-2 * z))
    transform, params = fit_recalibration(y, over, "temperature")
    assert params["temperature"] == pytest.approx(2, rel=0.06)
    assert calibration_slope_intercept(y, transform(over))["calibration_slope"] == pytest.approx(1, abs=0.05)
    shifted = 1 / (1 + np.exp(-(0.5 * z - 1)))
    transform, params = fit_recalibration(y, shifted, "platt")
    assert params["platt_a"] == pytest.approx(2, rel=0.08) and params["platt_b"] == pytest.approx(2, abs=0.15)
    identity, _ = fit_recalibration(y, over, "none")
    assert np.array_equal(identity(over), over)
    with pytest.raises(ValueError, match="evaluate.recalibrate"):
        fit_recalibration(y, over, "isotonic")


def test_threshold_is_rechosen_on_recalibrated_validation():
    val = synthetic_predictions(n_patients=200, seed=1)
    test = synthetic_predictions(n_patients=200, seed=2)
    val["probability"] = val["probability"] ** 3  # badly calibrated model
    test["probability"] = test["probability"] ** 3
    out, threshold, info = recalibrate_predictions(val, test, "platt", "youden")
    transform, _ = fit_recalibration(val["label"].to_numpy(), val["probability"].to_numpy(), "platt")
    assert threshold == pytest.approx(choose_threshold(val["label"], transform(val["probability"].to_numpy()), "youden"))
    assert np.allclose(out["probability"], transform(test["probability"].to_numpy()))
    assert (out["probability_raw"] == test["probability"]).all() and info["method"] == "platt"


def test_net_benefit_by_hand():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    table = net_benefit(y, p, np.array([0.5, 0.3]))
    # t=0.5: TP 1, FP 1 of 5 → 0.2 − 0.2·1 = 0; treat all: 0.4 − 0.6·1 = −0.2
    assert table.loc[0, "net_benefit_model"] == pytest.approx(0.0)
    assert table.loc[0, "net_benefit_all"] == pytest.approx(-0.2)
    # t=0.3: TP 2, FP 1 → 0.4 − 0.2·(3/7)
    assert table.loc[1, "net_benefit_model"] == pytest.approx(0.4 - 0.2 * 3 / 7)
    assert (table["net_benefit_none"] == 0).all()
    with pytest.raises(ValueError, match="strictly between"):
        net_benefit(y, p, np.array([0.0]))


def test_bca_counts_ties_as_half():
    values = np.r_[np.full(25, 0.4), np.full(50, 0.5), np.full(25, 0.6)]
    jack = np.r_[np.full(10, 0.49), np.full(10, 0.51)]  # symmetric: no acceleration
    assert _bca_quantiles(values, 0.5, jack, np.array([0.025, 0.975])) == pytest.approx([0.025, 0.975])


def test_evaluate_predictions_reports_calibration_ci_method_and_net_benefit(tmp_path):
    df = synthetic_predictions(n_patients=120, seed=3)
    summary = evaluate_predictions(df, 0.5, tmp_path, n_boot=200, ci_method="bca")
    assert summary["bootstrap"]["method"] == "bca"
    assert set(summary["calibration"]) == {"calibration_slope", "calibration_intercept"}
    curve = pd.read_csv(tmp_path / "net_benefit.csv")
    assert len(curve) == 99 and {"net_benefit_model", "net_benefit_all"} <= set(curve.columns)
    assert "calibration: slope" in (tmp_path / "report.md").read_text()
