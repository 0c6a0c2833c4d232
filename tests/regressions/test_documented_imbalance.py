"""Every imbalance strategy through `cxrssl finetune`, stronger augmentation of oversampled
positives, and Hydra's `--info` on the real console script."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from cxrssl.commands.inprocess import run_command
from cxrssl.data.dataset import CXRDataset
from cxrssl.data.loaders import prepare_table

#: strategy → (sampler class name, has pos_weight, has focal gamma)
EXPECTED = {"none": ("shuffle", False, False), "weighted": ("shuffle", True, False),
            "oversample": ("OversampleSampler", False, False), "undersample": ("UndersampleSampler", False, False),
            "oversample_weighted": ("OversampleSampler", True, False), "focal": ("shuffle", False, True)}


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_each_imbalance_strategy_runs_through_finetune(tiny, tmp_path, strategy):
    _, summary = run_command("finetune", [*tiny, "trainer.limit_batches=1", f"imbalance={strategy}"],
                             run_dir=tmp_path / strategy)
    sampler, weighted, focal = EXPECTED[strategy]
    described = summary["imbalance"]
    assert described["imbalance"] == strategy and described["sampler"] == sampler
    # prevalence is ~25 %: the derived pos_weight (negatives / positives) is well above 1
    assert (described["pos_weight"] is not None and described["pos_weight"] > 1.5) == weighted
    assert (described["focal_gamma"] == 2.0) == focal
    assert summary["epochs_completed"] == 1 and 0 < summary["threshold"] < 1


def _csv_table(root: Path):
    rng = np.random.default_rng(0)
    import cv2

    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(12):
        image = np.zeros((64, 64), np.uint8)
        image[16:48, 20:44] = 200
        image = (image + rng.integers(0, 30, image.shape)).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{p}.png"), image)
        rows.append({"image_id": str(p), "path": f"images/{p}.png", "patient_id": f"P{p}", "age": 50, "sex": "M",
                     "view": "PA", "cardiomegaly": int(p % 2 == 0), "split": "train"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    cfg = OmegaConf.create({"source": "csv", "root": str(root), "csv": "metadata.csv", "image_size": 64,
                            "resize_mode": "stretch", "equalize": "none", "on_error": "raise",
                            "augment": {"rotate_limit": 7, "scale_limit": 0.08, "brightness_contrast": 0.1,
                                        "hflip": False}, "cache": {"enabled": False}})
    return prepare_table(cfg), cfg


def _deviation(dataset, reference, index, epochs=12) -> float:
    total = 0.0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        total += float((dataset[index]["image"] - reference[index]["image"]).abs().mean())
    return total / epochs


def test_strong_augment_changes_positives_more_and_leaves_negatives(tmp_path):
    table, cfg = _csv_table(tmp_path / "ds")
    plain = CXRDataset(table, cfg, train=True, seed=3)
    strong = CXRDataset(table, cfg, train=True, seed=3, strong_augment_positives=True)
    reference = CXRDataset(table, cfg, train=False)
    labels = strong.table["cardiomegaly"].to_numpy()
    pos, neg = int(np.flatnonzero(labels == 1)[0]), int(np.flatnonzero(labels == 0)[0])
    assert _deviation(strong, reference, pos) > 1.3 * _deviation(plain, reference, pos)
    for epoch in range(3):  # negatives get the ordinary augmentation, identically
        plain.set_epoch(epoch), strong.set_epoch(epoch)
        assert (plain[neg]["image"] == strong[neg]["image"]).all()


def test_info_flag_prints_hydra_information(tmp_path):
    exe = Path(sys.executable).parent / "cxrssl"
    result = subprocess.run([str(exe), "pretrain", "--info"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Config search path" in result.stdout or "Defaults List" in result.stdout, result.stdout[:2000]
    assert not (tmp_path / "outputs").exists()  # --info runs nothing
