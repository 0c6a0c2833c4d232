"""Exact resume with data.gpu_augment=true: the Trainer's batch_transform augments uint8 batches.

The draws are a function of (seed, rank, epoch, batch index) only, so 1 epoch + resume equals 2
straight epochs bit for bit, and a mid-epoch recovery checkpoint continues to the same weights
(on the CPU here; torch's affine_grid/grid_sample are the same code on CUDA).
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.data.gpu_augment import TrainBatchAugment
from cxrssl.data.loaders import build_dataloaders
from cxrssl.engine.checkpoint import find_resume_checkpoint
from cxrssl.engine.loop import Preempted
from tests.engine.test_exact_resume import StopAt, assert_same_run, table  # noqa: F401 (fixture)
from tests.engine.test_exact_resume import straight_and_resumed, trainer_for as exact_trainer_for


def data_cfg(enabled=True):
    return OmegaConf.create({"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": {"enabled": False},
                             "gpu_augment": True, "augment": {"enabled": enabled, "p": 1.0, "rotate_limit": 15,
                                                              "scale_limit": 0.1, "brightness_contrast": 0.2}})


def trainer_for(run_dir, table, max_epochs=2, enabled=True, **cfg):
    return exact_trainer_for(run_dir, table, max_epochs, data=data_cfg(enabled),
                             batch_transform=TrainBatchAugment(data_cfg(enabled), seed=0), **cfg)


def test_loaders_deliver_uint8_train_and_float_val(table):
    loaders = build_dataloaders(data_cfg(), table, seed=0, splits=("train", "val"))
    train, val = next(iter(loaders["train"])), next(iter(loaders["val"]))
    assert train["image"].dtype == torch.uint8 and train["image"].shape == (4, 1, 32, 32)
    assert val["image"].dtype == torch.float32 and float(val["image"].max()) <= 1.0


def test_one_plus_one_epochs_equal_two_straight_epochs(table, tmp_path):
    straight, second = straight_and_resumed(lambda run, **kw: trainer_for(run, table, **kw), tmp_path)
    assert_same_run(straight, second)
    plain, loaders = trainer_for(tmp_path / "c", table, enabled=False)  # the augmentation did change training
    plain.fit(loaders["train"], loaders["val"])
    assert not torch.equal(plain.task.state_dict()["head.fc.weight"], straight.task.state_dict()["head.fc.weight"])


def test_mid_epoch_recovery_continues_exactly(table, tmp_path):
    straight, loaders = trainer_for(tmp_path / "a", table)
    straight.fit(loaders["train"], loaders["val"])
    run = tmp_path / "b"
    interrupted, loaders = trainer_for(run, table, checkpoint_every_n_steps=100)
    StopAt(interrupted, 6)  # epoch 2, batch 2 of 4
    with pytest.raises(Preempted):
        interrupted.fit(loaders["train"], loaders["val"])
    resumed, loaders = trainer_for(run, table)
    resumed.fit(loaders["train"], loaders["val"], resume_from=find_resume_checkpoint(True, run))
    assert_same_run(straight, resumed)
