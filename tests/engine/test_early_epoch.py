"""The next epoch's first batches are loaded while the model validates.

Observed from outside: every item any loader fetches appends a line (split, epoch, index) to one
file with O_APPEND writes, from the DataLoader worker processes and from the main process alike.
Epoch 1's first training items must appear before epoch 0's validation has finished. Validation
items sleep 20 ms each, so validation lasts well over a second: the workers have ample time.
That the samples themselves do not change is the exact-resume tests' job
(tests/engine/test_exact_resume.py compares a straight run, which starts epochs early, with
resumed ones, which start their first epoch the ordinary way).
"""
from __future__ import annotations

import os
import time

import torch
from torch.utils.data import DataLoader

from cxrssl.engine.loop import Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.seed import seed_everything
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tracking import NullTracker
from tests.helpers import ToyCXR


class Logged(ToyCXR):
    def __init__(self, n, split, log, delay=0.0, seed=0):
        super().__init__(n, 32, seed)
        self.split, self.log, self.delay = split, str(log), delay
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch):
        self._epoch.fill_(int(epoch))

    def __getitem__(self, i):
        time.sleep(self.delay)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{self.split} {int(self._epoch)} {i}\n".encode())
        finally:
            os.close(fd)
        return super().__getitem__(i)


def test_next_epoch_loads_while_validating(tmp_path):
    log = tmp_path / "fetches.log"
    seed_everything(0)
    train = DataLoader(Logged(32, "train", log), batch_size=8, shuffle=True, num_workers=2,
                       persistent_workers=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(Logged(64, "val", log, delay=0.02, seed=1), batch_size=8)
    task = AgeTask(create_encoder("test_resnet"), train_mean_age=55.0)
    opt = build_optimizer({"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}, task.optimizer_groups(0.0))
    schedule = LRSchedule(opt, {"name": "none"}, len(train), 2)
    trainer = Trainer(task, opt, schedule, resolve_precision("cpu", "auto"),
                      {"max_epochs": 2, "seed": 0, "progress": False, "log_every_n_steps": 1}, tmp_path,
                      NullTracker(), "cfg: 1", {"command": "test"})
    trainer.fit(train, val)
    lines = [tuple(line.split()) for line in log.read_text().splitlines()]
    last_val_of_epoch0 = max(k for k, (split, epoch, _) in enumerate(lines) if split == "val" and epoch == "0")
    first_train_of_epoch1 = min(k for k, (split, epoch, _) in enumerate(lines) if split == "train" and epoch == "1")
    assert first_train_of_epoch1 < last_val_of_epoch0
    # every training item of epoch 1 was fetched exactly once (the early iterator is the one used)
    epoch1 = sorted(int(i) for split, epoch, i in lines if split == "train" and epoch == "1")
    assert epoch1 == list(range(32))
