"""Preemption: SIGTERM (and SLURM's early-warning SIGUSR1) become a recovery checkpoint.

Also handled: submitit's requeue signal (`SUBMITIT_PREEMPT_SIGNAL`, default USR2), which submitit
would otherwise act on at once (requeue + exit, no checkpoint): the engine writes the recovery
checkpoint first and then hands the signal to submitit's own handler, which requeues the job.

The handler only sets a flag; the loop looks at it after each optimizer step (a Python bool, no
device sync), writes `checkpoints/recovery.pt` at that step boundary and raises `Preempted`.
`cxrssl` then ends the MLflow run as KILLED with a `resume_hint` tag and exits with
`EXIT_PREEMPTED` (143 = 128 + SIGTERM, what a shell reports for a job killed by SIGTERM), which
requeueing wrappers treat as "terminated, requeue me"; `resume=true` continues exactly.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

EXIT_PREEMPTED = 143
_SUBMITIT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
PREEMPT_SIGNALS = tuple(dict.fromkeys(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                                                  _SUBMITIT_SIGNAL) if s))


class Preempted(Exception):
    """Raised by the loop after the recovery checkpoint of a preemption signal is on disk."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, signal_name: str, checkpoint: Path | None, global_step: int, chained=None):
        self.signal_name, self.checkpoint, self.global_step = signal_name, checkpoint, global_step
        self.chained = chained  # the handler installed before ours (e.g. submitit's requeue), called last
        where = f"recovery checkpoint {checkpoint}" if checkpoint else "no checkpoint (not the main process)"
        super().__init__(f"received {signal_name}: stopped at step {global_step} after writing {where}; "
                         "continue with the same command plus resume=true")


class PreemptionFlag:
    """Installs flag-setting handlers for SIGTERM/SIGUSR1 (main thread only); `restore()` puts
    the previous handlers back. Used as a context manager around `Trainer.fit`."""

    def __init__(self, signals: tuple[int, ...] = PREEMPT_SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self.previous_handler = None  # of the received signal, if it was a Python callable
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            print(f"\n{signal.Signals(signum).name} received: writing a recovery checkpoint at the next step",
                  flush=True)
        self.received = signal.Signals(signum).name
        previous = self._previous.get(signum)
        self.previous_handler = (lambda: previous(signum, None)) if callable(previous) else None

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def ignore_in_worker() -> None:
    """DataLoader workers: SLURM signals every process of the job; the main process handles
    preemption and shuts its workers down, so a worker must not die of the same SIGTERM first."""
    for signum in PREEMPT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def end_preempted(stop: Preempted, tracker, command: str) -> SystemExit:
    """Mark the MLflow run KILLED with a resume hint, print where to continue, and return the
    `SystemExit(EXIT_PREEMPTED)` for the caller to raise (it passes through Hydra untouched)."""
    import sys

    hint = f"cxrssl {command} <same overrides> resume=true"
    tracker.set_tags({"preempted": stop.signal_name, "resume_hint": hint,
                      "recovery_checkpoint": str(stop.checkpoint or ""), "preempted_at_step": stop.global_step})
    tracker.end("KILLED", error=f"preempted by {stop.signal_name} at step {stop.global_step}; continue with {hint}")
    print(f"cxrssl {command}: preempted: {stop}", file=sys.stderr, flush=True)
    if stop.chained is not None:  # e.g. submitit: requeue the job now that the checkpoint is on disk
        stop.chained()
    return SystemExit(stop.exit_code)
