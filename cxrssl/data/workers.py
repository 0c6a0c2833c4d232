"""DataLoader worker processes: stopped on purpose, never left to interpreter exit.

Our workers ignore SIGTERM/SIGUSR1/SIGUSR2 (`loaders._seed_worker`): a scheduler that signals the
whole process group must not kill them before the main process has written its recovery
checkpoint. The price: a worker still alive when the interpreter exits can never be stopped.
multiprocessing's own exit handler calls `terminate()` (SIGTERM, ignored) and then `join()` on
every daemonic child, which waits forever — `cxrssl pretrain lr_find=true`, or any command that
failed with persistent workers alive, printed its last line and then hung (found 2026-11-27).

`release_workers` stops a loader's workers now (the Trainer calls it when `fit` ends, however it
ends: a loader iterator caught in a reference cycle, e.g. through an exception's traceback, is
otherwise collected after its queues, and torch's shutdown message never reaches the workers —
20 s per 2-worker loader). `stop_all_workers` runs at exit, before multiprocessing's handler
(atexit runs handlers last-in first-out, and this module is imported after torch, which imported
multiprocessing), and stops every multi-process loader iterator still alive.
"""
from __future__ import annotations

import atexit
import gc


def release_workers(*loaders) -> None:
    """Stop the persistent worker processes of `loaders` now; the next `iter()` starts fresh ones."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


def stop_all_workers() -> None:
    """Every live multi-process DataLoader iterator: shut its workers down (a no-op for finished ones)."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for obj in gc.get_objects():  # type(), not isinstance(): no __class__ lookups on lazy module proxies
        if issubclass(type(obj), _MultiProcessingDataLoaderIter):
            try:
                obj._shutdown_workers()
            except Exception:  # noqa: BLE001 — at exit, one broken iterator must not keep the others alive
                pass


atexit.register(stop_all_workers)
