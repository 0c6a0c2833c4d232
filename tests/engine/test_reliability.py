"""Failure paths of the engine: full disk, unwritable folders, NaN/missing monitor, one-class
validation, checkpoint footprint options, preemption bookkeeping."""
from __future__ import annotations

import errno
import os
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import cxrssl.engine.checkpoint as checkpoint_module
from cxrssl.commands.training import check_outputs, checkpoint_artifacts, warn_one_class_validation
from cxrssl.data.writable import OutputNotWritable
from cxrssl.engine.checkpoint import CheckpointWriteError, find_resume_checkpoint, load_checkpoint, save_checkpoint
from cxrssl.engine.signals import EXIT_PREEMPTED, Preempted, end_preempted
from cxrssl.errors import ConfigError, UserError
from tests.engine.test_loop import make_trainer


def test_full_disk_keeps_previous_checkpoint_and_stops_clearly(tmp_path, monkeypatch):
    trainer, loaders = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(loaders["train"], loaders["val"])
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def disk_full(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)  # a partial file ends up on disk ...
        fh.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    trainer.cfg["max_epochs"] = 2
    with pytest.raises(CheckpointWriteError, match="last.pt: the disk is full.*previous last.pt is intact.*resume=true"):
        trainer.fit(loaders["train"], loaders["val"])
    assert last.read_bytes() == before and load_checkpoint(last)["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))
    assert issubclass(CheckpointWriteError, UserError)


def test_unwritable_output_and_cache_folders_fail_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputNotWritable, match="checkpoint folder .*a_file/run/checkpoints.*hydra.run.dir"):
        check_outputs(blocker / "run")
    from cxrssl.data.loaders import build_dataloaders

    rows = pd.DataFrame({"image_id": ["i0"], "path": ["x.png"], "patient_id": ["p0"], "age": [50.0], "sex": ["M"],
                         "view": ["PA"], "cardiomegaly": [0.0], "split": ["train"], "mask_path": [float("nan")]})
    cfg = OmegaConf.create({"image_size": 32, "batch_size": 1, "cache": {"enabled": True, "dir": str(blocker / "c")}})
    with pytest.raises(OutputNotWritable, match="image cache folder .*a_file/c.*data.cache.dir"):
        build_dataloaders(cfg, rows, seed=0, splits=("train",))
    check_outputs(tmp_path / "fine")  # a writable one passes and leaves no probe behind
    assert [p.name for p in (tmp_path / "fine" / "checkpoints").iterdir()] == []


class NoMonitor:
    """Wraps compute_metrics of a task to drop or NaN its monitored value."""

    def __init__(self, task, value):
        original = task.compute_metrics

        def compute():
            metrics = original()
            metrics.pop(task.monitor)
            return metrics if value is None else {**metrics, task.monitor: value, "prevalence": 0.0}
        task.compute_metrics = compute


@pytest.mark.parametrize("value, why", [(None, "val/mae is missing"),
                                        (float("nan"), "val/mae is NaN: validation has no positive images")])
def test_missing_or_nan_monitor_is_a_bad_epoch_with_a_reason(tmp_path, value, why):
    trainer, loaders = make_trainer(tmp_path, max_epochs=3, early_stopping={"enabled": True, "patience": 2})
    NoMonitor(trainer.task, value)
    with pytest.warns(RuntimeWarning, match=why):
        result = trainer.fit(loaders["train"], loaders["val"])
    assert result["stopped_early"] and result["epochs_completed"] == 2 and trainer.state.bad_epochs == 2


def test_one_class_validation_is_reported_before_training(capsys):
    table = pd.DataFrame({"cardiomegaly": [0.0] * 8 + [1.0] * 8})
    loader = SimpleNamespace(dataset=SimpleNamespace(table=table), batch_size=4)
    task = SimpleNamespace(name="cardiomegaly", monitor="auroc")
    warn_one_class_validation(task, loader, limit=None)
    assert capsys.readouterr().out == ""
    warn_one_class_validation(task, loader, limit=2)
    out = capsys.readouterr().out
    assert "first 8 validation images (trainer.limit_batches=2) have only class [0.0]" in out and "NaN" in out


def test_log_checkpoints_option():
    def cfg(**mlflow):
        return OmegaConf.create({"mlflow": mlflow})

    names = lambda c: [p.name for _, p in checkpoint_artifacts(c, "ck")]  # noqa: E731
    assert names(cfg()) == ["best.pt"]
    assert names(cfg(log_checkpoints="all")) == ["best.pt", "last.pt"]
    assert names(cfg(log_checkpoints="none")) == [] == names(cfg(log_model=False))
    with pytest.raises(ConfigError, match="mlflow.log_checkpoints='some'"):
        checkpoint_artifacts(cfg(log_checkpoints="some"), "ck")


def test_preemption_ends_the_run_killed_with_a_resume_hint(tmp_path):
    calls = []
    tracker = SimpleNamespace(set_tags=lambda tags: calls.append(("tags", tags)),
                              end=lambda status, error=None: calls.append(("end", status, error)))
    stop = Preempted("SIGUSR1", tmp_path / "recovery.pt", 42)
    exit_ = end_preempted(stop, tracker, "pretrain")
    assert isinstance(exit_, SystemExit) and exit_.code == EXIT_PREEMPTED == 143
    tags = calls[0][1]
    assert tags["preempted"] == "SIGUSR1" and "resume=true" in tags["resume_hint"] and tags["preempted_at_step"] == 42
    assert calls[1][:2] == ("end", "KILLED")


def test_resume_true_picks_the_newer_of_recovery_and_last(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    save_checkpoint({"model": {}, "global_step": 4}, ckpt / "last.pt")
    assert find_resume_checkpoint(True, tmp_path / "run") == ckpt / "last.pt"
    save_checkpoint({"model": {}, "global_step": 6}, ckpt / "recovery.pt")
    assert find_resume_checkpoint(True, tmp_path / "run") == ckpt / "recovery.pt"
    assert find_resume_checkpoint(str(tmp_path / "run"), tmp_path / "other") == ckpt / "recovery.pt"
    later = time.time() + 5
    os.utime(ckpt / "last.pt", (later, later))  # killed after last.pt was written, before recovery.pt was pruned
    assert find_resume_checkpoint(True, tmp_path / "run") == ckpt / "last.pt"
    # a run killed in its first epoch has only recovery.pt; a sibling run dir finds it
    save_checkpoint({"model": {}, "global_step": 2}, tmp_path / "early" / "checkpoints" / "recovery.pt")
    (ckpt / "last.pt").unlink()
    (ckpt / "recovery.pt").unlink()
    assert find_resume_checkpoint(True, tmp_path / "new") == tmp_path / "early" / "checkpoints" / "recovery.pt"


def test_restore_reads_the_checkpoint_onto_the_cpu_first(tmp_path, monkeypatch):
    """On CUDA, map_location=<cuda> put the RNG states on the GPU and set_rng_state crashed."""
    import cxrssl.engine.loop as loop_module

    trainer, loaders = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(loaders["train"], loaders["val"])
    seen = {}
    real_load = loop_module.load_checkpoint

    def spy(path, map_location="cpu"):
        seen["map_location"] = str(map_location)
        state = real_load(path, map_location=map_location)
        seen["rng_device"] = state["rng"]["torch"].device.type
        return state

    monkeypatch.setattr(loop_module, "load_checkpoint", spy)
    again, _ = make_trainer(tmp_path / "again", max_epochs=1)
    from cxrssl.engine.precision import Precision

    again.precision = Precision(torch.device("cuda"), torch.bfloat16, False)  # as on a GPU (model stays on CPU here)
    again.restore(tmp_path / "checkpoints" / "last.pt")
    assert seen == {"map_location": "cpu", "rng_device": "cpu"}
