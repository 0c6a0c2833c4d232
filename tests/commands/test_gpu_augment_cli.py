"""data.gpu_augment=true through the real commands (in-process runner, CPU device).

Observed from outside: the batch transform the command hands to the Trainer is wrapped, so the
test sees what the train loader delivered (uint8, unaugmented) and what the task trained on
(float in [0, 1]); validation batches never pass through it. A multi-view pretext is refused
with one ConfigError naming the key, before any data is loaded.
"""
from __future__ import annotations

import pytest
import torch

import cxrssl.data.gpu_augment as gpu_augment
from cxrssl.commands.inprocess import run_command
from cxrssl.errors import ConfigError
from tests.conftest import TINY


@pytest.fixture
def seen(monkeypatch):
    """Every call of TrainBatchAugment: (input dtype, output dtype, output min, max, strong_positives)."""
    calls = []
    original = gpu_augment.TrainBatchAugment.__call__

    def spy(self, batch, epoch, step):
        out = original(self, batch, epoch, step)
        calls.append({"in": batch["image"].dtype, "out": out["image"].dtype, "shape": tuple(out["image"].shape),
                      "min": float(out["image"].min()), "max": float(out["image"].max()),
                      "strong": self.strong_positives, "key": (epoch, step)})
        return out

    monkeypatch.setattr(gpu_augment.TrainBatchAugment, "__call__", spy)
    return calls


def test_pretrain_with_gpu_augment_trains_on_uint8_batches(tmp_path, seen):
    _, summary = run_command("pretrain", [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                          "pretext=age", "data.gpu_augment=true", "trainer.device=cpu",
                                          "trainer.max_epochs=2", "trainer.limit_batches=2",
                                          "data.pretrain_pool=train"], run_dir=tmp_path / "run")
    assert summary["epochs_completed"] == 2
    assert [c["key"] for c in seen] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # train batches only, keyed per step
    assert all(c["in"] == torch.uint8 and c["out"] == torch.float32 for c in seen)
    assert all(c["shape"] == (16, 1, 32, 32) and 0.0 <= c["min"] and c["max"] <= 1.0 for c in seen)
    assert not any(c["strong"] for c in seen)
    assert summary["final"]["train/loss"] == summary["final"]["train/loss"]  # finite, not NaN


def test_finetune_oversampling_strong_augment_uses_strength_two(tmp_path, seen):
    _, summary = run_command("finetune", [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                          "imbalance=oversample", "data.gpu_augment=true", "trainer.device=cpu",
                                          "trainer.limit_batches=2"], run_dir=tmp_path / "ft")
    assert summary["epochs_completed"] == 1
    assert len(seen) == 2 and all(c["in"] == torch.uint8 and c["strong"] for c in seen)


def test_lr_finder_also_gets_augmented_float_batches(tmp_path, seen):
    run_command("pretrain", [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "pretext=age",
                             "data.gpu_augment=true", "lr_find=true", "lr_finder.num_steps=12",
                             "lr_finder.end_lr=1e-3", "data.pretrain_pool=train"], run_dir=tmp_path / "lr")
    assert [c["key"] for c in seen] == [(-1, i) for i in range(12)]  # its own draws, not epoch 0's
    assert all(c["in"] == torch.uint8 and c["out"] == torch.float32 for c in seen)


@pytest.mark.parametrize("pretext", ["simclr", "dino"])
def test_multi_view_pretext_is_refused_with_the_key(tmp_path, pretext, seen):
    with pytest.raises(ConfigError, match=r"data\.gpu_augment=true .*pretext=" + pretext + r".*data\.gpu_augment=false"):
        run_command("pretrain", [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                 f"pretext={pretext}", "data.gpu_augment=true"], run_dir=tmp_path / "mv")
    assert not seen and not (tmp_path / "mv" / "checkpoints" / "last.pt").exists()
