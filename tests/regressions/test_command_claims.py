"""Command-level claims: early stopping fires, `data.label_fraction` reaches finetune's training
set, and `data.on_error=skip` reports every skipped row (file and count)."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrssl.commands.inprocess import run_command
from cxrssl.evaluation import choose_threshold
from tests.conftest import TINY

FAST = ["trainer.limit_batches=1"]


def test_early_stopping_fires_on_a_plateauing_monitor(tiny, tmp_path):
    """A frozen encoder with a vanishing LR gives the same val AUROC every epoch: with patience 2
    the run stops after epoch 3 of 6."""
    overrides = [*tiny, *FAST, "finetune.strategy=linear", "optimizer.lr=1e-12", "scheduler=none",
                 "trainer.max_epochs=6", "trainer.early_stopping.enabled=true", "trainer.early_stopping.patience=2"]
    _, summary = run_command("finetune", overrides, run_dir=tmp_path / "ft")
    assert summary["stopped_early"] is True
    assert summary["epochs_completed"] == 3, summary
    assert summary["best_epoch"] == 1


def _train_patients(run_dir) -> set[str]:
    splits = pd.read_csv(run_dir / "splits.csv")
    return set(splits.loc[splits["split"] == "train", "patient_id"].astype(str))


def test_label_fraction_reduces_finetune_training_patients(tiny, tmp_path):
    runs = {}
    for fraction, rule in (("1.0", "specificity@0.9"), ("0.3", "0.42")):
        _, summary = run_command("finetune", [*tiny, *FAST, f"data.label_fraction={fraction}",
                                              f"evaluate.threshold={rule}"], run_dir=tmp_path / fraction)
        runs[fraction] = (summary, _train_patients(tmp_path / fraction))
        # finetune applies the configured rule (not the default youden) to validation
        val = pd.read_csv(tmp_path / fraction / "val_predictions.csv")
        saved = torch.load(tmp_path / fraction / "checkpoints" / "best.pt", weights_only=True)["meta"]["threshold"]
        assert saved == pytest.approx(choose_threshold(val["label"], val["probability"], rule), abs=1e-6)
    assert runs["0.3"][0]["threshold"] == pytest.approx(0.42)
    (full, all_patients), (part, some_patients) = runs["1.0"], runs["0.3"]
    assert some_patients < all_patients  # a strict subset
    assert abs(len(some_patients) - 0.3 * len(all_patients)) <= 2, (len(some_patients), len(all_patients))
    assert part["n_train"] < full["n_train"] and part["label_fraction"] == pytest.approx(0.3)
    val = {f: pd.read_csv(tmp_path / f / "splits.csv").query("split != 'train'") for f in runs}
    pd.testing.assert_frame_equal(val["1.0"].reset_index(drop=True), val["0.3"].reset_index(drop=True))


def _csv_dataset(root, n_patients=16, bad=()):
    """PNG images + metadata.csv; `bad` rows are appended: (kind, image_id)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        for k in range(2):
            image_id = f"p{p:02d}_{k}"
            image = (rng.random((48, 48)) * 200).astype(np.uint8)
            cv2.imwrite(str(root / "images" / f"{image_id}.png"), image)
            rows.append({"image_id": image_id, "path": f"images/{image_id}.png", "patient_id": f"P{p:02d}",
                         "age": 30 + p, "sex": "MF"[p % 2], "view": "PA", "cardiomegaly": int(p % 3 == 0)})
    extra = {"missing": {"path": "images/nowhere.png"}, "age": {"age": "abc"},
             "corrupt": {"path": "images/corrupt.png"}}
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    for kind, image_id in bad:
        rows.append({**rows[0], "image_id": image_id, "patient_id": f"B{image_id}", **extra[kind]})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_skipped_rows_are_listed_and_counted(tmp_path):
    bad = [("missing", "bad_missing"), ("age", "bad_age"), ("corrupt", "bad_corrupt")]
    root = _csv_dataset(tmp_path / "ds", bad=bad)
    overrides = ["pretext=age", "backbone=tiny", "data=csv", f"data.root={root}", "data.image_size=32",
                 "data.batch_size=8", "data.num_workers=0", "data.on_error=skip", "data.cache.workers=1",
                 "data.cache.progress=false", "trainer.max_epochs=1", "trainer.progress=false", *FAST,
                 f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    _, summary = run_command("pretrain", overrides, run_dir=tmp_path / "run")
    skipped = pd.read_csv(tmp_path / "run" / "skipped_rows.csv")
    assert list(skipped.columns) == ["file", "row", "path", "reason"]
    assert len(skipped) == len(bad), skipped
    # CSV line numbers of the bad rows: header is line 1, 32 good rows follow.
    assert sorted(skipped["row"].astype(int)) == [34, 35, 36]
    assert skipped["path"].astype(str).str.contains("nowhere.png").any()
    assert skipped["path"].astype(str).str.contains("corrupt.png").any()
    assert summary["data"]["rows_skipped"] == len(bad)
    kept = pd.read_csv(tmp_path / "run" / "splits.csv")
    assert not kept["image_id"].astype(str).str.startswith("bad_").any() and len(kept) == 32
