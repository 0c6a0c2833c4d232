"""Learning is real, through the real configs and commands (in-process Hydra compose):
pretext heads beat their trivial baselines, and fine-tuning from a pretext checkpoint detects
cardiomegaly; evaluate reuses the checkpoint's threshold and writes the clinical report."""
from __future__ import annotations

import json

import pytest
import torch

from cxrssl.commands.inprocess import run_command
from cxrssl.engine.checkpoint import load_checkpoint
from cxrssl.models.loading import WeightsMismatchError

DATA = ["backbone=tiny", "data.image_size=64", "data.synthetic.n_patients=200", "data.synthetic.native_size=128",
        "data.synthetic.preset=easy", "data.num_workers=0", "trainer.progress=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    return root, [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]


@pytest.fixture(scope="module")
def age_run(store):
    root, mlflow = store
    _, summary = run_command("pretrain", [*DATA, *mlflow, "pretext=age", "trainer.max_epochs=8", "optimizer.lr=3e-3"],
                             run_dir=root / "age")
    return summary


def test_age_beats_mean_predictor(age_run):
    final = age_run["final"]
    assert final["val/mae"] < 0.85 * final["val/mae_mean_baseline"], final


def test_sex_auroc_clearly_above_chance(store):
    root, mlflow = store
    _, summary = run_command("pretrain", [*DATA, *mlflow, "pretext=sex", "trainer.max_epochs=4"], run_dir=root / "sex")
    assert summary["best_value"] > 0.75, summary["final"]


def test_recon_loss_falls(store):
    root, mlflow = store
    _, summary = run_command("pretrain", [*DATA, *mlflow, "pretext=recon", "pretext.mask_ratio=0.5",
                                          "trainer.max_epochs=3"], run_dir=root / "recon")
    assert summary["final"]["val/loss"] < 0.7 * summary["first"]["val/loss"], (summary["first"], summary["final"])
    assert (root / "recon" / "artifacts" / "recon_epoch003.png").is_file()


@pytest.fixture(scope="module")
def finetuned(store, age_run):
    root, mlflow = store
    _, summary = run_command("finetune", [*DATA, *mlflow, f"pretrained={age_run['checkpoints']['best']}",
                                          "finetune.strategy=full", "finetune.backbone_lr_scale=1.0",
                                          "trainer.max_epochs=8", "optimizer.lr=3e-3"], run_dir=root / "ft")
    return summary


def test_finetune_from_pretext_checkpoint_detects_cardiomegaly(finetuned):
    assert finetuned["pretrained"]["pretext"] == "age"
    assert finetuned["best_value"] > 0.7, finetuned["final"]
    meta = load_checkpoint(finetuned["checkpoints"]["best"])["meta"]
    assert meta["threshold"] == pytest.approx(finetuned["threshold"]) and 0 < meta["threshold"] < 1


def test_evaluate_reuses_threshold_and_writes_the_report(store, finetuned):
    root, mlflow = store
    _, summary = run_command("evaluate", [*mlflow, f"checkpoint={finetuned['checkpoints']['best']}",
                                          "evaluate.n_boot=200"], run_dir=root / "ev")
    ev = summary["evaluation"]
    assert ev["threshold"] == pytest.approx(finetuned["threshold"]) and ev["split"] == "test"
    auroc = ev["metrics"]["auroc"]
    assert auroc["ci_low"] < auroc["value"] < auroc["ci_high"] and auroc["value"] > 0.6
    for name in ("report.md", "metrics.csv", "predictions.csv", "roc.png", "pr.png", "calibration.png",
                 "confusion.png", "cohort.csv", "subgroups.csv"):
        assert (root / "ev" / name).is_file(), name
    assert json.loads((root / "ev" / "summary.json").read_text())["mlflow_run_id"]


def test_evaluate_other_split_keeps_the_trained_data(store, finetuned):
    root, mlflow = store
    _, summary = run_command("evaluate", [*mlflow, f"checkpoint={finetuned['checkpoints']['best']}", "data.split=val",
                                          "evaluate.n_boot=50"], run_dir=root / "ev_val")
    assert summary["evaluation"]["split"] == "val"
    used = (root / "ev_val" / "config.yaml").read_text()
    assert "n_patients: 200" in used and "image_size: 64" in used  # the checkpoint's data, not the default


def test_evaluate_refuses_a_one_class_split(store, finetuned):
    root, mlflow = store
    from cxrssl.evaluation import OneClassError

    with pytest.raises(OneClassError, match="test"):
        run_command("evaluate", [*mlflow, *DATA[1:5], "data.synthetic.prevalence=0.0", "data.synthetic.label_noise=0.0",
                                 f"checkpoint={finetuned['checkpoints']['best']}", "evaluate.n_boot=50"],
                    run_dir=root / "ev_one_class")


def test_backbone_mismatch_names_expected_and_found(store, age_run):
    root, mlflow = store
    with pytest.raises(WeightsMismatchError, match="expected resnet18, found test_resnet"):
        run_command("finetune", [*DATA, *mlflow, "backbone=resnet18", f"pretrained={age_run['checkpoints']['best']}"],
                    run_dir=root / "mismatch")


def test_pretrained_by_mlflow_run_id(store, age_run):
    root, mlflow = store
    from cxrssl.models.loading import load_encoder

    encoder, info = load_encoder({"name": "test_resnet"}, age_run["mlflow_run_id"], f"sqlite:///{root}/mlflow.db")
    state = load_checkpoint(age_run["checkpoints"]["best"])["model"]
    torch.testing.assert_close(encoder.state_dict()["net.conv1.0.weight"], state["encoder.net.conv1.0.weight"])
    assert info["pretext"] == "age"
