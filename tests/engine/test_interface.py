"""The engine ↔ task interface (notes/INTERFACE.md): device batches, hooks, no per-step host sync."""
from __future__ import annotations

import traceback

import torch
from torch import nn

from cxrssl.engine.batch import StepSums, to_device
from cxrssl.engine.loop import Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.protocol import TrainableTask
from cxrssl.engine.seed import seed_everything
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tracking import NullTracker
from tests.helpers import toy_loaders


class TwoViewTask(AgeTask):
    """A multi-view task in the style of SSL methods: two views, a momentum copy, custom batch size."""

    def __init__(self):
        super().__init__(create_encoder("test_resnet"), train_mean_age=55.0)
        self.teacher_steps: list[tuple[int, int]] = []
        self.seen_batches: list[dict] = []

    def training_step(self, batch):
        self.seen_batches.append(batch)
        views = batch["views"]
        out = [self(v)["age"] for v in views]
        loss = sum(((o / 100 - batch["age"] / 100) ** 2).mean() for o in out)
        return {"loss": loss, "consistency": (out[0] - out[1]).abs().mean().detach()}

    def on_after_optimizer_step(self, global_step, max_steps):
        self.teacher_steps.append((global_step, max_steps))

    def batch_size(self, batch):
        return 2 * len(batch["age"])


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return {**item, "views": [item["image"], item["image"].flip(-1)]}


def make(task, loaders, **cfg):
    opt = build_optimizer({"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}, task.optimizer_groups(0.0))
    schedule = LRSchedule(opt, {"name": "none"}, len(loaders["train"]), cfg.get("max_epochs", 1))
    trainer_cfg = {"max_epochs": 1, "seed": 0, "progress": False, "log_every_n_steps": 1000, **cfg}
    return Trainer(task, opt, schedule, resolve_precision("cpu", "auto"), trainer_cfg, cfg.pop("run_dir"),
                   NullTracker(), "cfg: 1", {"command": "test"})


def test_to_device_recurses_and_applies_channels_last():
    batch = {"views": [torch.rand(2, 1, 4, 4), (torch.rand(2, 3, 4, 4),)], "ids": ["a", "b"],
             "label": torch.tensor([1, 0])}
    moved = to_device(batch, torch.device("cpu"), channels_last=True)
    assert moved["ids"] == ["a", "b"] and isinstance(moved["views"][1], tuple)
    assert moved["views"][1][0].is_contiguous(memory_format=torch.channels_last)
    assert moved["label"].dtype == torch.int64


def test_loop_drives_a_multi_view_task_through_the_hooks(tmp_path):
    seed_everything(0)
    task = TwoViewTask()
    assert isinstance(task, TrainableTask)
    base = toy_loaders()
    loaders = {"train": torch.utils.data.DataLoader(TwoViews(base["train"].dataset), batch_size=16),
               "val": base["val"]}
    trainer = make(task, loaders, run_dir=tmp_path, max_epochs=2)
    result = trainer.fit(loaders["train"], loaders["val"])
    assert [s for s, _ in task.teacher_steps] == list(range(1, 9))  # 4 batches × 2 epochs
    assert {m for _, m in task.teacher_steps} == {8}
    assert all(isinstance(v, torch.Tensor) for b in task.seen_batches for v in b["views"])
    assert "train/consistency" in result["final"] and result["final"]["train/consistency"] > 0


def test_training_syncs_with_the_host_only_every_log_every_n_steps(tmp_path, monkeypatch):
    seed_everything(0)
    loaders = toy_loaders(n=128)  # 8 batches
    trainer = make(AgeTask(create_encoder("test_resnet"), 55.0), loaders, run_dir=tmp_path, log_every_n_steps=4)
    calls = {"engine_syncs": 0, "totals": 0}
    real_totals = StepSums.totals

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args):
            caller = traceback.extract_stack(limit=2)[0]
            if "/cxrssl/engine/" in caller.filename:  # the loop itself (not torch's optimizers, not the task)
                calls["engine_syncs"] += 1
            return real(self, *args)
        return wrapper

    def totals(self):
        calls["totals"] += 1
        return real_totals(self)

    for name in ("item", "tolist", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    monkeypatch.setattr(StepSums, "totals", totals)
    logs = trainer.train_one_epoch(loaders["train"], 0)
    assert calls["totals"] == 1 + 8 // 4 + 1  # start of epoch, steps 4 and 8, epoch end
    assert calls["engine_syncs"] == 3  # one .tolist() per sync with data (steps 4, 8, end), nothing per step
    assert logs["loss"] > 0


def test_validation_step_default_updates_metrics_and_returns_outputs():
    task = AgeTask(create_encoder("test_resnet"), 55.0).eval()
    batch = next(iter(toy_loaders()["val"]))
    task.reset_metrics()
    out = task.validation_step(batch)
    assert set(out) >= {"loss", "outputs"} and not out["loss"].requires_grad
    assert task.compute_metrics()["mae"] > 0


def test_task_logs_are_detached_tensors():
    task = AgeTask(create_encoder("test_resnet"), 55.0)
    batch = next(iter(toy_loaders()["train"]))
    out = task.training_step(batch)
    assert out["loss"].requires_grad
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    assert isinstance(task, nn.Module)
