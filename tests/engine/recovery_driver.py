"""Subprocess body of the kill/preemption tests: a small training run that can be killed anywhere.

    python -m tests.engine.recovery_driver RUN_DIR [--resume]

Writes a recovery checkpoint every optimizer step, prints `step N` after each (and sleeps a little
so a kill can land between steps), saves the final weights to RUN_DIR/final.pt and exits 0;
on SIGTERM/SIGUSR1 it exits with the preemption status (143) like `cxrssl` does.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from cxrssl.engine.checkpoint import newest_resumable
from cxrssl.engine.loop import Preempted, Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.seed import seed_everything
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tracking import NullTracker
from tests.helpers import toy_loaders

MAX_EPOCHS = 3


def main(run_dir: Path, resume: bool) -> int:
    seed_everything(0)
    task = AgeTask(create_encoder("test_resnet"), train_mean_age=55.0, dropout=0.2)
    opt = build_optimizer({"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}, task.optimizer_groups(0.01))
    loaders = toy_loaders(n=96, batch_size=16)  # 6 batches per epoch, 18 steps
    schedule = LRSchedule(opt, {"name": "cosine", "warmup_epochs": 1}, len(loaders["train"]), MAX_EPOCHS)
    cfg = {"max_epochs": MAX_EPOCHS, "seed": 0, "progress": False, "log_every_n_steps": 3,
           "checkpoint_every_n_steps": 1, "grad_clip_norm": 1.0}
    trainer = Trainer(task, opt, schedule, resolve_precision("cpu", "off"), cfg, run_dir, NullTracker(),
                      "cfg: 1", {"command": "test"})

    def announce(global_step, max_steps):
        print(f"step {global_step}", flush=True)
        time.sleep(0.05)
    task.on_after_optimizer_step = announce
    resume_from = newest_resumable(run_dir / "checkpoints") if resume else None
    try:
        trainer.fit(loaders["train"], loaders["val"], resume_from=resume_from)
    except Preempted as stop:
        print(f"preempted: {stop}", flush=True)
        return stop.exit_code
    torch.save(task.state_dict(), run_dir / "final.pt")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), "--resume" in sys.argv[2:]))
