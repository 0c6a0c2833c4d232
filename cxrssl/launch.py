"""`python -m cxrssl.launch [torchrun arguments]`: torchrun, except that a preempted run exits 143.

Why: torchrun's elastic agent turns any non-zero rank exit into `ChildFailedError` and exits 1,
and a SIGTERM to the agent itself (a SLURM preemption signals every process of the step) ends in
`SignalException`, also exit 1. A requeue script keyed on 143 (README, Reliability) could not tell
a preemption from a crash, and torchrun has no option for it: `torch.distributed.run.main` is
wrapped in `@record`, which re-raises whatever the agent raised. So this runs the same
`torch.distributed.run.main` and maps what it raises:

* every failed rank exited 143 (`EXIT_PREEMPTED`: all ranks stop together after rank 0 wrote
  recovery.pt) → 143;
* the agent got SIGTERM / SIGUSR1 / submitit's signal (it forwards it to the ranks, which write the
  recovery checkpoint) → 143; another signal n (SIGINT, SIGHUP) → 128 + n, as a shell reports it;
* anything else → torchrun's own report and exit status.

SIGUSR1 and submitit's signal are added to the signals the agent forwards to the ranks (torchrun's
`--signals-to-handle`, here its environment default `PET_SIGNALS_TO_HANDLE`; an explicit
`--signals-to-handle` still wins): with torchrun's default set they kill the agent (status 138)
and leave the ranks running without a word.
The agent waits `--shutdown-timeout` seconds (torchrun's default 30) for the ranks' recovery write
before it kills them.
"""
from __future__ import annotations

import os
import signal
import sys

from cxrssl.engine.signals import EXIT_PREEMPTED, PREEMPT_SIGNALS

_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # torchrun's default set


def exit_status(error: BaseException) -> int | None:
    """The exit status for what `torch.distributed.run.main` raised; None: torchrun's own (1)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(error, ChildFailedError):
        codes = {failure.exitcode for failure in error.failures.values()}
        return EXIT_PREEMPTED if codes == {EXIT_PREEMPTED} else None
    if isinstance(error, SignalException):
        return EXIT_PREEMPTED if error.sigval in PREEMPT_SIGNALS else 128 + int(error.sigval)
    return None


def main(argv: list[str] | None = None) -> int:
    names = [*_AGENT_SIGNALS, *(signal.Signals(s).name for s in PREEMPT_SIGNALS)]
    os.environ.setdefault("PET_SIGNALS_TO_HANDLE", ",".join(dict.fromkeys(names)))
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except Exception as error:  # noqa: BLE001 — re-raised unless it is a preemption or a signal
        status = exit_status(error)
        if status is None:
            raise
        print(f"cxrssl.launch: {type(error).__name__}: {error}\ncxrssl.launch: exit {status}"
              + (" (preempted: rerun the same command with resume=true)" if status == EXIT_PREEMPTED else ""),
              file=sys.stderr, flush=True)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
