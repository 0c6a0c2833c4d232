"""The decision threshold travels finetune → checkpoint → evaluate / predict, chosen on validation.

Observed from outside: predictions are re-read from `cxrssl evaluate` on each split, the rule is
re-applied to them here, and the checkpoint is read with plain `torch.load`. A run whose validation
and test splits have different best thresholds is required (asserted), so choosing on the wrong
split, or falling back to 0.5, changes a number these tests compare.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrssl.commands.inprocess import run_command
from cxrssl.engine.checkpoint import save_checkpoint
from cxrssl.evaluation import choose_threshold
from tests.conftest import TINY

FT = [*TINY, "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """One tiny finetune, then evaluate on val and on test with a fixed threshold (probabilities only)."""
    root = tmp_path_factory.mktemp("threshold_flow")
    mlflow = [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]
    _, ft = run_command("finetune", [*FT, *mlflow], run_dir=root / "ft")
    best = ft["checkpoints"]["best"]
    probs = {}
    for split in ("val", "test"):
        run_command("evaluate", [*mlflow, f"checkpoint={best}", f"data.split={split}", "evaluate.threshold=0.5",
                                 "evaluate.n_boot=20"], run_dir=root / f"ev_{split}")
        table = pd.read_csv(root / f"ev_{split}" / "predictions.csv").dropna(subset=["label"])
        assert (table["split"] == split).all()
        probs[split] = table
    youden = {s: choose_threshold(t["label"], t["probability"], "youden") for s, t in probs.items()}
    # Preconditions: without them the tests below could not tell the splits (or 0.5) apart.
    assert abs(youden["val"] - youden["test"]) > 1e-6, youden
    assert abs(youden["val"] - 0.5) > 1e-6, youden
    return {"root": root, "mlflow": mlflow, "ft": ft, "best": best, "probs": probs, "youden": youden}


def _labels_follow(pred: pd.DataFrame, threshold: float) -> None:
    """predicted == (probability >= threshold), allowing the CSV round trip of the one image whose
    probability *is* the threshold (rules return an observed probability)."""
    wrong = pred["predicted"] != (pred["probability"] >= threshold)
    assert (np.abs(pred.loc[wrong, "probability"] - threshold) < 1e-6).all(), pred[wrong]


def _saved(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def test_saved_threshold_is_the_validation_rule(flow):
    """finetune saves youden-on-validation in best.pt and last.pt (not test's, not 0.5)."""
    for name in ("best.pt", "last.pt"):
        saved = _saved(flow["root"] / "ft" / "checkpoints" / name)["threshold"]
        assert saved == pytest.approx(flow["youden"]["val"], abs=1e-5), (name, saved, flow["youden"])
        assert saved != pytest.approx(flow["youden"]["test"], abs=1e-6)
    val_pred = pd.read_csv(flow["root"] / "ft" / "val_predictions.csv")
    assert (val_pred["split"] == "val").all()
    _labels_follow(val_pred, flow["ft"]["threshold"])


def test_evaluate_rule_override_is_chosen_on_validation(flow):
    """`evaluate.threshold=youden` on the test split uses validation's youden threshold."""
    out = flow["root"] / "ev_rule"
    _, summary = run_command("evaluate", [*flow["mlflow"], f"checkpoint={flow['best']}", "evaluate.threshold=youden",
                                          "evaluate.n_boot=20"], run_dir=out)
    ev = summary["evaluation"]
    assert ev["split"] == "test"
    assert ev["threshold"] == pytest.approx(flow["youden"]["val"], abs=1e-5), (ev["threshold"], flow["youden"])
    assert "val" in ev["threshold_rule"]


def _checkpoint_with_threshold(src, dst, threshold: float):
    state = torch.load(src, map_location="cpu", weights_only=True)
    state["meta"] = {**state["meta"], "threshold": float(threshold)}
    state.pop("version", None)
    return save_checkpoint(state, dst)


def _straddling_threshold(p: np.ndarray) -> float:
    """A threshold between two of the probabilities that classifies some image differently from 0.5."""
    s = np.unique(p)
    mids = (s[:-1] + s[1:]) / 2
    mids = mids[np.abs(mids - 0.5) > 1e-4]
    differs = [m for m in mids if ((p >= m) != (p >= 0.5)).any()]
    assert differs, p
    return float(differs[len(differs) // 2])


def test_predict_applies_the_saved_threshold(flow, tmp_path):
    """predict labels images by the checkpoint's threshold; some images lie between it and 0.5."""
    val = flow["probs"]["val"]
    threshold = _straddling_threshold(val["probability"].to_numpy())
    ckpt = _checkpoint_with_threshold(flow["best"], tmp_path / "moved.pt", threshold)
    listing = tmp_path / "inputs.csv"
    pd.DataFrame({"path": val["path"]}).to_csv(listing, index=False)
    _, summary = run_command("predict", [*flow["mlflow"], f"checkpoint={ckpt}", f"inputs={listing}"],
                             run_dir=tmp_path / "pred")
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv").merge(
        val[["path", "probability"]].rename(columns={"probability": "p_eval"}), on="path")
    assert len(pred) == len(val) and summary["n_scored"] == len(val)
    assert np.allclose(pred["probability"], pred["p_eval"], atol=1e-5)  # same model, same preprocessing
    expected = (pred["probability"] >= threshold).astype(int)
    assert (pred["predicted"] == expected).all()
    assert (expected != (pred["probability"] >= 0.5)).any()  # the test can tell 0.5 from the saved one


def test_evaluate_uses_the_saved_threshold_by_default(flow, tmp_path):
    val = flow["probs"]["val"]
    threshold = _straddling_threshold(val["probability"].to_numpy())
    ckpt = _checkpoint_with_threshold(flow["best"], tmp_path / "moved.pt", threshold)
    _, summary = run_command("evaluate", [*flow["mlflow"], f"checkpoint={ckpt}", "evaluate.n_boot=20"],
                             run_dir=tmp_path / "ev")
    assert summary["evaluation"]["threshold"] == pytest.approx(threshold)


@pytest.mark.parametrize("rule", ["f1", "sensitivity@0.9", "specificity@0.8", "0.37"])
def test_evaluate_other_rules(flow, rule):
    """Every documented rule works inside `cxrssl evaluate` and is applied to validation."""
    out = flow["root"] / f"ev_{rule.replace('@', '_')}"
    _, summary = run_command("evaluate", [*flow["mlflow"], f"checkpoint={flow['best']}", f"evaluate.threshold={rule}",
                                          "evaluate.n_boot=20"], run_dir=out)
    val = flow["probs"]["val"]
    expected = choose_threshold(val["label"], val["probability"], rule)
    assert summary["evaluation"]["threshold"] == pytest.approx(expected, abs=1e-5)
    pred = pd.read_csv(out / "predictions.csv")
    _labels_follow(pred, summary["evaluation"]["threshold"])
