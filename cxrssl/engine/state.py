"""What a checkpoint holds, and which file holds what.

- `last.pt`: everything needed to continue (weights, optimizer, scheduler, scaler, RNG, history),
  written at each epoch end;
- `recovery.pt`: the same plus a batch cursor and the epoch's running loss sums, written every
  `trainer.checkpoint_every_n_steps` optimizer steps and on a preemption signal; removed once the
  epoch's `last.pt` is on disk (only the newest recovery point is kept);
- `best.pt`: weights + metadata only (no optimizer state: about a third of `last.pt` with Adam),
  which is all that finetune/evaluate/explain read.

Every file is written atomically (`checkpoint.save_checkpoint`), so whichever moment a kill hits,
the previous file of that name is still loadable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrssl.engine.checkpoint import save_checkpoint

#: Keys only resumable checkpoints carry; `best.pt` drops them.
TRAINING_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "batch_cursor", "epoch_sums")


@dataclass
class FitState:
    epoch: int = 0              # epochs completed
    global_step: int = 0        # optimizer steps taken
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    batch_cursor: int = 0       # batches of epoch `epoch` (0-based) already trained (mid-epoch recovery)

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.global_step, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history,
                "batch_cursor": self.batch_cursor}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> FitState:
        return cls(epoch=ckpt["epoch"], global_step=ckpt["global_step"], best=ckpt["best"],
                   best_epoch=ckpt["best_epoch"], bad_epochs=ckpt["bad_epochs"], history=list(ckpt["history"]),
                   batch_cursor=int(ckpt.get("batch_cursor", 0) or 0))


def weights_only(state: dict[str, Any]) -> dict[str, Any]:
    """`best.pt`'s content: the full state minus optimizer/scheduler/scaler/RNG/cursor."""
    return {k: v for k, v in state.items() if k not in TRAINING_ONLY_KEYS}


class CheckpointFiles:
    """The run's `checkpoints/` folder; only the main process writes."""

    def __init__(self, ckpt_dir: Path, is_main: bool = True):
        self.dir, self.is_main = Path(ckpt_dir), is_main
        self.last, self.best, self.recovery = (self.dir / n for n in ("last.pt", "best.pt", "recovery.pt"))

    def remove_stale_temporaries(self) -> list[Path]:
        """`*.tmp-<pid>` files of earlier processes (a kill mid-write); never a complete checkpoint."""
        if not self.is_main or not self.dir.is_dir():
            return []
        own = f".tmp-{os.getpid()}"
        stale = [p for p in self.dir.glob("*.pt.tmp-*") if not p.name.endswith(own)]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def save_epoch(self, state: dict[str, Any], improved: bool) -> None:
        if not self.is_main:
            return
        save_checkpoint(state, self.last)
        if improved or not self.best.exists():
            save_checkpoint(weights_only(state), self.best)
        self.recovery.unlink(missing_ok=True)  # superseded by last.pt

    def save_recovery(self, state: dict[str, Any]) -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(state, self.recovery)
