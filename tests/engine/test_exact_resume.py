"""Exact resume with the real input pipeline: CXRDataset + albumentations + 2 workers.

Augmentation is a pure function of (seed, epoch, sample index) and the shuffle of (seed, epoch),
so 1 epoch + resume == 2 straight epochs bit for bit, and a mid-epoch recovery checkpoint
continues at its batch cursor (sampler offset) to the same weights.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.data.loaders import build_dataloaders
from cxrssl.engine.checkpoint import find_resume_checkpoint, load_checkpoint
from cxrssl.engine.loop import Preempted, Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.seed import seed_everything
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tracking import NullTracker
from tests.data.conftest import make_csv_dataset


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    rows = pd.read_csv(make_csv_dataset(root, n_patients=12, images_per_patient=2))
    rows["path"] = [str(root / p) for p in rows["path"]]
    rows["age"] = rows["age"].astype(float)
    rows["cardiomegaly"] = rows["cardiomegaly"].astype(float)
    rows["mask_path"] = float("nan")
    rows["split"] = ["train"] * 16 + ["val"] * 8
    return rows


def data_cfg(workers):
    return OmegaConf.create({"image_size": 32, "batch_size": 4, "num_workers": workers, "cache": {"enabled": False},
                             "augment": {"p": 1.0, "rotate_limit": 15, "scale_limit": 0.1,
                                         "brightness_contrast": 0.2}})


def trainer_for(run_dir, table, max_epochs=2, workers=2, data=None, batch_transform=None, **cfg):
    """The engine on `table` (tests/engine/test_gpu_augment_resume.py passes its own data config and
    the device-side augmentation as `batch_transform`)."""
    seed_everything(0)
    loaders = build_dataloaders(data_cfg(workers) if data is None else data, table, seed=0, splits=("train", "val"))
    task = AgeTask(create_encoder("test_resnet"), train_mean_age=50.0, dropout=0.2)
    opt = build_optimizer({"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}, task.optimizer_groups(0.01))
    schedule = LRSchedule(opt, {"name": "cosine", "warmup_epochs": 1}, len(loaders["train"]), max_epochs)
    trainer_cfg = {"max_epochs": max_epochs, "seed": 0, "progress": False, "log_every_n_steps": 2,
                   "grad_clip_norm": 1.0, **cfg}
    trainer = Trainer(task, opt, schedule, resolve_precision("cpu", "off"), trainer_cfg, run_dir, NullTracker(),
                      "cfg: 1", {"command": "test"}, batch_transform=batch_transform)
    return trainer, loaders


def assert_same_run(a: Trainer, b: Trainer):
    for key, value in a.task.state_dict().items():
        assert torch.equal(b.task.state_dict()[key], value), key
    metrics = [[{k: v for k, v in record.items() if "images_per_s" not in k and "data_wait" not in k}
                for record in h] for h in (a.state.history, b.state.history)]
    assert metrics[0] == metrics[1]
    assert a.state.global_step == b.state.global_step


def test_augmented_batches_do_not_depend_on_workers_or_history(table):
    def epoch_batch(workers, epoch, warmup_epochs=()):
        loader = build_dataloaders(data_cfg(workers), table, seed=0, splits=("train",))["train"]
        for e in warmup_epochs:  # a loader that already ran other epochs
            loader.dataset.set_epoch(e)
            loader.sampler.set_epoch(e)
            list(loader)
        loader.dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["image"] for b in loader])

    reference = epoch_batch(0, 1)
    assert torch.equal(epoch_batch(2, 1, warmup_epochs=(0,)), reference)
    assert not torch.equal(epoch_batch(0, 2), reference)  # and it does change with the epoch


def straight_and_resumed(make, tmp_path) -> tuple[Trainer, Trainer]:
    """Two straight epochs, and 1 epoch + `resume` from its last.pt; `make(run_dir, **kw)` builds a
    (trainer, loaders) pair (shared with tests/engine/test_gpu_augment_resume.py)."""
    straight, loaders = make(tmp_path / "a")
    straight.fit(loaders["train"], loaders["val"])
    first, loaders = make(tmp_path / "b", max_epochs=1)
    first.fit(loaders["train"], loaders["val"])
    second, loaders = make(tmp_path / "b")
    second.fit(loaders["train"], loaders["val"], resume_from=tmp_path / "b" / "checkpoints" / "last.pt")
    return straight, second


def test_one_plus_one_epochs_equal_two_straight_epochs_with_workers(table, tmp_path):
    assert_same_run(*straight_and_resumed(lambda run, **kw: trainer_for(run, table, **kw), tmp_path))


class StopAt:
    """Raise the preemption flag (as the SIGTERM handler would) after optimizer step `step`."""

    def __init__(self, trainer, step):
        self.trainer, self.step = trainer, step
        original = trainer.task.on_after_optimizer_step

        def hook(global_step, max_steps):
            original(global_step, max_steps)
            if global_step == self.step:
                trainer.preemption.received = "SIGTERM"
        trainer.task.on_after_optimizer_step = hook


def test_mid_epoch_recovery_continues_exactly(table, tmp_path):
    straight, loaders = trainer_for(tmp_path / "a", table)
    straight.fit(loaders["train"], loaders["val"])
    run = tmp_path / "b"
    interrupted, loaders = trainer_for(run, table, checkpoint_every_n_steps=100)
    StopAt(interrupted, 6)  # epoch 2, batch 2 of 4
    with pytest.raises(Preempted, match="SIGTERM.*resume=true") as stop:
        interrupted.fit(loaders["train"], loaders["val"])
    assert stop.value.checkpoint == run / "checkpoints" / "recovery.pt"
    recovery = load_checkpoint(run / "checkpoints" / "recovery.pt")
    assert (recovery["epoch"], recovery["batch_cursor"], recovery["global_step"]) == (1, 2, 6)
    assert find_resume_checkpoint(True, run) == run / "checkpoints" / "recovery.pt"
    resumed, loaders = trainer_for(run, table)
    seen = []
    original = resumed.task.training_step
    resumed.task.training_step = lambda batch: (seen.append(batch["image_id"]), original(batch))[1]
    resumed.fit(loaders["train"], loaders["val"], resume_from=find_resume_checkpoint(True, run))
    assert len(seen) == 2  # batches 3 and 4 of epoch 2 only: no replay, no skip
    assert_same_run(straight, resumed)
    assert not (run / "checkpoints" / "recovery.pt").exists()  # pruned once last.pt covers it


def test_best_checkpoint_is_weights_only_and_last_has_optimizer(table, tmp_path):
    trainer, loaders = trainer_for(tmp_path, table, max_epochs=1, workers=0)
    trainer.fit(loaders["train"], loaders["val"])
    best, last = (load_checkpoint(tmp_path / "checkpoints" / n) for n in ("best.pt", "last.pt"))
    assert "optimizer" not in best and "rng" not in best and best["meta"]["monitor"] == "mae"
    assert "optimizer" in last and torch.equal(best["model"]["head.fc.weight"], last["model"]["head.fc.weight"])
    sizes = {n: (tmp_path / "checkpoints" / n).stat().st_size for n in ("best.pt", "last.pt")}
    assert sizes["best.pt"] < 0.6 * sizes["last.pt"], sizes  # AdamW keeps two moments per weight
