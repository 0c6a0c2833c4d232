"""Paired ΔAUROC: DeLong against a brute-force Mann–Whitney computation, the paired bootstrap,
Holm, and the command-line entry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxrssl.evaluation.paired import (compare_predictions, delong_test, holm, main,
                                      paired_delta_over_repeats)
from tests.evaluation.helpers import synthetic_predictions


def _brute_force_delong(y, a, b):
    """DeLong (1988) written from the definition: ψ(x, z) = 1 if x > z, ½ if tied, per pair."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        psi = np.array([[1.0 if x > z else 0.5 if x == z else 0.0 for z in s[neg]] for x in s[pos]])
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    m, n = pos.sum(), neg.sum()

    def cov(u, v):
        return np.sum((u - u.mean()) * (v - v.mean())) / (len(u) - 1)

    s10 = [[cov(comps[i][0], comps[j][0]) for j in (0, 1)] for i in (0, 1)]
    s01 = [[cov(comps[i][1], comps[j][1]) for j in (0, 1)] for i in (0, 1)]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    delta = comps[0][0].mean() - comps[1][0].mean()
    return delta, var


def test_delong_matches_brute_force_and_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(90) < 0.35).astype(float)
    a = np.round(y * 0.8 + rng.normal(0, 0.6, 90), 1)  # rounded: ties, which count ½
    b = np.round(y * 0.4 + 0.5 * a + rng.normal(0, 0.6, 90), 1)
    result = delong_test(y, a, b)
    delta, var = _brute_force_delong(y, a, b)
    assert result["auroc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result["auroc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert result["delta"] == pytest.approx(delta, abs=1e-12)
    assert result["se"] ** 2 == pytest.approx(var, rel=1e-10)
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(delta) / np.sqrt(var)), rel=1e-9)


def test_identical_models_have_no_difference():
    df = synthetic_predictions(n_patients=80, seed=3)
    same = compare_predictions(df, df.copy(), n_boot=300)
    assert same["delta"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    assert same["delong_p"] == 1.0


def test_better_model_separates_and_weaker_order_flips_sign():
    strong = synthetic_predictions(n_patients=200, separation=2.0, seed=4)
    weak = strong.copy()
    rng = np.random.default_rng(1)
    weak["probability"] = np.clip(weak["probability"] + rng.normal(0, 0.35, len(weak)), 0, 1)
    r = compare_predictions(strong, weak, n_boot=500)
    assert r["delta"] > 0.05 and r["ci_low"] > 0 and r["delong_p"] < 0.01 and r["bootstrap_p"] < 0.01
    flipped = compare_predictions(weak, strong, n_boot=500)
    assert flipped["delta"] == pytest.approx(-r["delta"]) and flipped["ci_high"] < 0


def test_repeats_widen_the_interval():
    df = synthetic_predictions(n_patients=150, separation=1.5, seed=5)
    y, codes = df["label"].to_numpy(), pd.factorize(df["patient_id"])[0]
    base = df["probability"].to_numpy()
    rng = np.random.default_rng(2)
    noisy = [np.clip(base + rng.normal(0, 0.25, len(base)), 0, 1) for _ in range(4)]
    one = paired_delta_over_repeats(y, codes, [noisy[0]], [base], n_boot=400)
    many = paired_delta_over_repeats(y, codes, noisy, [base] * 4, n_boot=400)
    assert many["n_repeats"] == 4 and many["delta_sd"] > 0
    assert many["delta"] == pytest.approx(np.mean([roc_auc_score(y, n) - roc_auc_score(y, base) for n in noisy]))
    assert many["ci_high"] < 0 and one["ci_high"] < 0  # noise hurts


def test_mismatched_tables_are_refused():
    a = synthetic_predictions(n_patients=40, seed=6)
    with pytest.raises(ValueError, match="same test rows"):
        compare_predictions(a, a.iloc[:-5])
    b = a.copy()
    b.loc[0, "label"] = 1 - b.loc[0, "label"]
    with pytest.raises(ValueError, match="disagree on labels"):
        compare_predictions(a, b)


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.5, np.nan, 0.001])
    assert np.isnan(out[1]) and out[2] == pytest.approx(0.002) and out[0] == pytest.approx(0.5)


def test_command_line(tmp_path, capsys):
    strong = synthetic_predictions(n_patients=60, separation=2.0, seed=7)
    strong.to_csv(tmp_path / "a.csv", index=False)
    strong.assign(probability=0.5).to_csv(tmp_path / "b.csv", index=False)
    assert main([f"a={tmp_path / 'a.csv'}", f"b={tmp_path / 'b.csv'}", "n_boot=200"]) == 0
    out = capsys.readouterr().out
    assert "ΔAUROC (a − b) = +0.4" in out and "DeLong" in out
    assert main([f"a={tmp_path / 'a.csv'}"]) == 2
