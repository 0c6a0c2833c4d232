"""No DataLoader worker outlives `Trainer.fit`, however fit ends.

Why: persistent workers that were left to the iterator's `__del__` stalled whoever dropped the
last reference inside a reference cycle (an exception's traceback): gc ran the queues' finalizers
first, torch's shutdown message was lost, and it waited 5 s + 5 s per worker (SIGTERM is ignored
by our workers) and still left them running — tests/engine/test_exact_resume.py took 90 s for
5 s of work. Observed from outside: the child processes of this process, read from /proc.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import pytest

from cxrssl.engine.loop import Preempted
from tests.engine.test_exact_resume import StopAt, table, trainer_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def live_children() -> set[int]:
    """Pids whose parent is this process and that have not exited (zombies count as gone)."""
    me, out = str(os.getpid()), set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # exited while we read
            continue
        if fields.get("PPid", "").strip() == me and not fields.get("State", "").strip().startswith("Z"):
            out.add(int(status.parent.name))
    return out


def still_running(pids: set[int], within: float = 2.0) -> set[int]:
    deadline = time.monotonic() + within
    while (alive := pids & live_children()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def record_workers(trainer) -> set[int]:
    """The children alive during the first training step (filled in by fit): the loader workers."""
    seen: set[int] = set()
    original = trainer.task.training_step

    def step(batch):
        if not seen:
            seen.update(live_children())
        return original(batch)
    trainer.task.training_step = step
    return seen


def test_fit_returns_without_live_workers_and_loaders_still_work(table, tmp_path):
    before = live_children()
    trainer, loaders = trainer_for(tmp_path, table, max_epochs=1, workers=2)
    during = record_workers(trainer)
    trainer.fit(loaders["train"], loaders["val"])
    assert len(during - before) >= 2  # the train loader's workers were there
    assert not still_running(during - before)
    assert len(list(loaders["val"])) == len(loaders["val"])  # finetune predicts on val after fit
    del loaders


def preempted_fit(tmp_path, table, when: str) -> set[int]:
    """A fit preempted mid-epoch or during validation; returns the workers it ran. On return, this
    frame and the `Preempted` traceback that `stop` keeps form a reference cycle holding the
    trainer and loaders (as in a test that asserts on `stop.value` afterwards)."""
    trainer, loaders = trainer_for(tmp_path, table, max_epochs=3, workers=2, checkpoint_every_n_steps=100)
    during = record_workers(trainer)
    if when == "train":
        StopAt(trainer, 2)  # mid-epoch: the train iterator has batches in flight
    else:  # the next epoch's iterator was started before validation (Trainer._start_epoch_early)
        original = trainer.task.validation_step
        trainer.task.validation_step = lambda batch: (setattr(trainer.preemption, "received", "SIGTERM"),
                                                      original(batch))[1]
    with pytest.raises(Preempted) as stop:
        trainer.fit(loaders["train"], loaders["val"])
    assert stop.value.checkpoint is not None
    return during


@pytest.mark.parametrize("when", ["train", "validation"])
def test_preempted_fit_leaves_no_workers_and_gc_does_not_stall(table, tmp_path, when):
    before = live_children()
    gc.collect()
    gc.disable()  # the cycle is collected below, where it is timed, not at a random allocation
    try:
        workers = preempted_fit(tmp_path, table, when) - before
        assert len(workers) >= 2
        assert not still_running(workers)
        start = time.perf_counter()
        gc.collect()
        assert time.perf_counter() - start < 2.0
    finally:
        gc.enable()
