"""The study table: AUROC over repeats, paired Δ vs matched control, Holm, harness verdicts, figure."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrssl.evaluation.study import harness_verdict, label_efficiency_figure, markdown_table, summarise_cells


def _scores(y, strength, rng):
    return 1 / (1 + np.exp(-(strength * (y - 0.5) * 2 + rng.normal(0, 1, len(y)))))


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    n_patients = 150
    patient = np.repeat(np.arange(n_patients), 2)
    y = np.repeat((rng.random(n_patients) < 0.3).astype(float), 2)
    codes = patient
    cells = []
    for fraction in (0.1, 1.0):
        for method, control, strength in (("random init → linear probe", None, 0.4),
                                          ("positive control (CTR) → linear probe", "random init → linear probe", 2.0),
                                          ("negative control (random) → linear probe", "random init → linear probe", 0.4),
                                          ("age only", None, 0.1)):
            probs = [_scores(y, strength, np.random.default_rng(hash((method, fraction, r)) % 2**32)) for r in range(3)]
            cells.append({"method": method, "fraction": fraction, "control": control, "probs": probs,
                          "thresholds": [0.5] * 3, "n_patients": int(100 * fraction), "n_positive_patients": 3,
                          "n_images": int(200 * fraction)})
    return cells, y, codes, summarise_cells(cells, y, codes, n_boot=300)


def test_table_has_mean_auroc_and_paired_delta(study):
    cells, y, _, table = study
    assert len(table) == len(cells)
    first = table.iloc[1]
    expected = np.mean([roc_auc_score(y, p) for p in cells[1]["probs"]])
    assert first["auroc"] == pytest.approx(expected)
    assert first["auroc_lo"] < first["auroc"] < first["auroc_hi"]
    control = np.mean([roc_auc_score(y, p) for p in cells[0]["probs"]])
    assert first["delta"] == pytest.approx(expected - control)
    assert np.isnan(table.iloc[0]["delta"]) and np.isnan(table.iloc[3]["p_holm"])  # no control: not compared
    compared = table["p_value"].notna()
    assert (table.loc[compared, "p_holm"] >= table.loc[compared, "p_value"]).all()


def test_verdict_passes_when_controls_behave(study):
    *_, table = study
    verdict = harness_verdict(table)
    assert verdict["positive_separates"] and not verdict["negative_separates"] and verdict["warnings"] == []


def test_verdict_warns_underpowered_and_biased(study):
    cells, y, codes, _ = study
    swapped = []
    for c in cells:  # the positive control no better than random init; the negative one much better
        c = dict(c)
        if c["method"].startswith("positive"):
            c["probs"] = [p.copy() for p in cells[0]["probs"]]
        elif c["method"].startswith("negative"):
            c["probs"] = [_scores(y, 2.5, np.random.default_rng(r)) for r in range(3)]
        swapped.append(c)
    verdict = harness_verdict(summarise_cells(swapped, y, codes, n_boot=300))
    assert not verdict["positive_separates"] and verdict["negative_separates"]
    assert any("UNDERPOWERED" in w for w in verdict["warnings"]) and any("BIASED" in w for w in verdict["warnings"])
    fractions = sorted({float(c["fraction"]) for c in swapped if c["method"].startswith("negative")})
    assert verdict["negative_separates_at"] == fractions  # the strong negative control separates everywhere
    assert any(w.startswith("BIASED at label fraction " + ", ".join(f"{f:g}" for f in fractions)) for w in verdict["warnings"])


def test_markdown_and_figure(study, tmp_path):
    *_, table = study
    text = markdown_table(table)
    assert "positive control (CTR) → linear probe" in text and "vs random init → linear probe" in text
    assert text.count("\n") == len(table) + 1
    path = label_efficiency_figure(table, tmp_path / "fig.png")
    assert path.stat().st_size > 5000
