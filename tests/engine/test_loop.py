"""The hand-written loop: it learns, checkpoints atomically, resumes exactly."""
from __future__ import annotations

import torch
import pytest

from cxrssl.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cxrssl.engine.loop import NonFiniteLossError, Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.seed import seed_everything
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tracking import NullTracker
from tests.helpers import toy_loaders

TRAINER = {"max_epochs": 2, "seed": 0, "grad_clip_norm": 1.0, "progress": False, "log_every_n_steps": 1}


def make_trainer(run_dir, max_epochs=2, lr=3e-3, scheduler="cosine", **overrides):
    seed_everything(0)
    task = AgeTask(create_encoder("test_resnet"), train_mean_age=55.0)
    opt = build_optimizer({"name": "adamw", "lr": lr, "weight_decay": 0.0}, task.optimizer_groups(0.0))
    loaders = toy_loaders()
    schedule = LRSchedule(opt, {"name": scheduler, "warmup_epochs": 1}, len(loaders["train"]), max_epochs)
    cfg = {**TRAINER, "max_epochs": max_epochs, **overrides}
    trainer = Trainer(task, opt, schedule, resolve_precision("cpu", "auto"), cfg, run_dir, NullTracker(),
                      "cfg: 1", {"command": "test"})
    return trainer, loaders


def test_fit_learns_and_writes_checkpoints(tmp_path):
    trainer, loaders = make_trainer(tmp_path, max_epochs=6)
    result = trainer.fit(loaders["train"], loaders["val"])
    assert result["epochs_completed"] == 6
    final = result["final"]
    assert final["val/mae"] < 0.8 * final["val/mae_mean_baseline"], final
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "checkpoints" / name)
        assert ckpt["meta"]["monitor"] == "mae" and any(k.startswith("encoder.net.") for k in ckpt["model"])
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == result["best_epoch"]
    maes = [record["val/mae"] for record in trainer.state.history]  # monitor mode min: the lowest MAE wins
    assert result["best_epoch"] == 1 + maes.index(min(maes)) and result["best_value"] == pytest.approx(min(maes))


def test_resume_matches_uninterrupted_run(tmp_path):
    straight, loaders = make_trainer(tmp_path / "a", max_epochs=2)
    straight.fit(loaders["train"], loaders["val"])
    first, loaders = make_trainer(tmp_path / "b", max_epochs=1)
    first.fit(loaders["train"], loaders["val"])
    second, loaders = make_trainer(tmp_path / "b", max_epochs=2)
    second.fit(loaders["train"], loaders["val"], resume_from=tmp_path / "b" / "checkpoints" / "last.pt")
    assert second.state.global_step == straight.state.global_step
    for key, value in straight.task.state_dict().items():
        torch.testing.assert_close(second.task.state_dict()[key], value, msg=key)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer, loaders = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(loaders["train"], loaders["val"])
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    trainer.cfg["max_epochs"] = 2
    with torch.no_grad():
        trainer.task.head.fc.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        trainer.fit(loaders["train"], loaders["val"])
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_accumulation_counts_optimizer_steps(tmp_path):
    trainer, loaders = make_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(loaders["train"], loaders["val"])
    assert trainer.state.global_step == 2  # 4 batches / 2


def test_limit_batches(tmp_path):
    trainer, loaders = make_trainer(tmp_path, max_epochs=1, limit_batches=1)
    trainer.fit(loaders["train"], loaders["val"])
    assert trainer.state.global_step == 1


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    good = save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_resume_into_a_new_run_dir_carries_best_and_does_not_overtrain(tmp_path):
    first, loaders = make_trainer(tmp_path / "a", max_epochs=2)
    first.fit(loaders["train"], loaders["val"])
    again, loaders = make_trainer(tmp_path / "b", max_epochs=2)
    result = again.fit(loaders["train"], loaders["val"], resume_from=tmp_path / "a" / "checkpoints" / "last.pt")
    assert again.state.global_step == first.state.global_step  # finished run: no further epochs
    assert result["epochs_completed"] == 2
    assert (tmp_path / "b" / "checkpoints" / "best.pt").read_bytes() == \
        (tmp_path / "a" / "checkpoints" / "best.pt").read_bytes()


def test_improvement_resets_patience_and_best_follows_the_monitor(tmp_path):
    """Scripted validation MAEs 5, 6, 7, 4, 5, 6, 7, 8 with patience 3: epoch 4 improves and resets
    the count, so the run stops after epoch 7 (not 5) with best.pt from epoch 4."""
    trainer, loaders = make_trainer(tmp_path, max_epochs=8, early_stopping={"enabled": True, "patience": 3})
    scripted = iter([5.0, 6.0, 7.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    trainer.task.compute_metrics = lambda: {"mae": next(scripted)}
    result = trainer.fit(loaders["train"], loaders["val"])
    assert result["stopped_early"] and result["epochs_completed"] == 7
    assert result["best_epoch"] == 4 and result["best_value"] == 4.0
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 4
