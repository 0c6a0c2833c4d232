import json

import numpy as np
import pandas as pd
import pytest
from tests.evaluation.helpers import synthetic_predictions

from cxrssl.evaluation import METRIC_NAMES, evaluate_predictions, format_terminal_table, save_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_save_plots_writes_non_empty_pngs(predictions, tmp_path):
    paths = save_plots(predictions, 0.5, tmp_path / "plots", ci={"auroc": (0.8, 0.75, 0.85)})
    assert set(paths) == {"roc", "pr", "calibration", "confusion", "decision_curve"}
    for path in (p for p in paths.values() if p.suffix == ".png"):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


def test_evaluate_predictions_writes_everything(tmp_path):
    test = synthetic_predictions(n_patients=150, seed=1)
    test.loc[[3, 4], "label"] = np.nan
    val = synthetic_predictions(n_patients=60, seed=2).assign(split="val")
    both = pd.concat([val, test], ignore_index=True)
    summary = evaluate_predictions(both, 0.42, tmp_path, cohort={"val": val, "test": test}, n_boot=200,
                                   threshold_rule="youden on val", dataset="synthetic")
    json.dumps(summary, allow_nan=False)
    assert summary["n"] == 298 and summary["n_excluded"] == 2 and summary["threshold"] == 0.42
    assert summary["n_patients"] == 150 and set(summary["metrics"]) == set(METRIC_NAMES)
    auroc = summary["metrics"]["auroc"]
    assert auroc["ci_low"] < auroc["value"] < auroc["ci_high"]
    names = {"metrics", "subgroups", "subgroup_tests", "cohort", "predictions", "report",
             "roc", "pr", "calibration", "confusion", "decision_curve"}
    assert names <= set(summary["files"])
    for path in summary["files"].values():
        assert (tmp_path / path.split("/")[-1]).stat().st_size > 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["metric", "value", "ci_low", "ci_high"]
    assert list(metrics.metric) == list(METRIC_NAMES)
    written = pd.read_csv(tmp_path / "predictions.csv")
    assert len(written) == 300 and set(written.split) == {"test"}
    assert (written.predicted == (written.probability >= 0.42)).all()
    report = (tmp_path / "report.md").read_text()
    for text in ("youden on val", "## Subgroups", "## Cohort", "![roc](roc.png)", "AUROC", "300"):
        assert text in report
    assert set(summary["subgroup_p_values"]) == {"sex", "view", "age_band"}


def test_rule_threshold_is_flagged_and_terminal_table(predictions, tmp_path):
    summary = evaluate_predictions(predictions, "youden", tmp_path, n_boot=100)
    assert "optimistic" in summary["threshold_rule"]
    table = format_terminal_table(summary)
    assert "AUROC" in table and "95 % CI" in table
    lo, hi = summary["metrics"]["auroc"]["ci_low"], summary["metrics"]["auroc"]["ci_high"]
    assert f"{lo:.3f}–{hi:.3f}" in table
    assert len(table.splitlines()) == len(METRIC_NAMES) + 3


def test_missing_split_is_a_clear_error(predictions, tmp_path):
    predictions.loc[:10, "split"] = "val"
    with pytest.raises(ValueError, match=r"not 'train'"):
        evaluate_predictions(predictions, 0.5, tmp_path, split_name="train", n_boot=10)
