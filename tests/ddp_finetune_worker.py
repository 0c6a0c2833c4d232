"""Rank-side checks of tests/test_distributed_finetune.py, run by tests/ddp_worker.py under
`torchrun --nproc_per_node=2` (gloo, CPU). Each `<mode>_check(env, *args)` returns what rank 0
writes to the JSON file; values are gathered from every rank so the test can compare them.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from cxrssl.data.resumable import ResumableSampler
from cxrssl.data.samplers import OversampleSampler, UndersampleSampler
from cxrssl.engine import distributed as D
from cxrssl.engine.loop import Preempted, Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.sampling import prepare_epoch, resumable_loader
from cxrssl.engine.seed import seed_everything
from cxrssl.engine.sync_bn import CPUSyncBatchNorm
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tasks.cardiomegaly import CardiomegalyTask
from cxrssl.tasks.imbalance import Imbalance
from cxrssl.tracking import NullTracker
from tests.helpers import ToyCXR

N_TRAIN, N_VAL = 40, 13  # 13: a validation set NOT divisible by 2 ranks


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


# ---------------------------------------------------------------- samplers
def samplers_check(env: D.DistEnv, *_) -> dict:
    """The imbalance samplers as finetune builds them (ResumableSampler around the strategy's
    sampler), sharded as fit_task does (shard_loader) and made resumable as Trainer.fit does."""
    labels = np.array([1.0] * 7 + [0.0] * 24)  # 31 rows, 7 positives
    makers = {"oversample": lambda: OversampleSampler(labels, 0.5, seed=3),
              "undersample": lambda: UndersampleSampler(labels, 1.0, seed=3)}
    out = {}
    for name, make in makers.items():
        loader = DataLoader(list(range(len(labels))), batch_size=4, sampler=ResumableSampler(make(), len(labels), 3),
                            drop_last=True)
        sharded = resumable_loader(D.shard_loader(loader, env), seed=3)
        reference = ResumableSampler(make(), len(labels), 3)  # one process: the whole epoch
        epochs = []
        for epoch in (0, 1):
            prepare_epoch(sharded, epoch, 3)
            mine = [int(i) for i in sharded.sampler]
            prepare_epoch(sharded, epoch, 3)
            batches = len([b for b in sharded])
            reference.set_epoch(epoch)
            epochs.append({"mine": mine, "batches": batches, "full": list(reference)})
        out[name] = D.gather_objects(epochs)
    return out


# ---------------------------------------------------------------- SyncBatchNorm
def syncbn_check(env: D.DistEnv, *_) -> dict:
    """One train-mode forward/backward of 2 ranks × 4 images vs one process on the 8 images."""
    data = ToyCXR(n=8, size=32, seed=0)
    rows = slice(env.rank * 4, env.rank * 4 + 4)

    def run(rows, sync: bool):
        seed_everything(0)
        task = AgeTask(create_encoder("test_resnet"), train_mean_age=55.0)
        D.sync_batchnorm(task, sync, "cpu")
        task.train()
        task.training_step({"image": data.images[rows], "age": data.age[rows]})["loss"].backward()
        converted = sum(isinstance(m, CPUSyncBatchNorm) for m in task.modules())
        return task, converted

    reference, _ = run(slice(0, 8), sync=False)  # plain BatchNorm, one process, global batch
    ref_bn = _flat(b for n, b in reference.named_buffers() if "running" in n)
    ref_grad = _flat(p.grad for p in reference.parameters())
    out = {"ref_grad_max": ref_grad.abs().max().item()}
    for sync in (False, True):
        task, converted = run(rows, sync)
        D.average_gradients(task.parameters())
        bn = _flat(b for n, b in task.named_buffers() if "running" in n)
        grad = _flat(p.grad for p in task.parameters())
        bns, grads = D.gather_objects(bn), D.gather_objects(grad)
        out["sync" if sync else "plain"] = {
            "converted": converted, "bn_diff": max((b - ref_bn).abs().max().item() for b in bns),
            "bn_ranks_equal": all(torch.equal(b, bns[0]) for b in bns),
            "grad_diff": max((g - ref_grad).abs().max().item() for g in grads)}
    return out


def quick_check(env: D.DistEnv, *_) -> dict:
    return {"samplers": samplers_check(env), "syncbn": syncbn_check(env)}


# ---------------------------------------------------------------- finetune Trainer
class CardioToy(ToyCXR):
    """ToyCXR with a cardiomegaly label (age > 55: the square is large)."""

    def __getitem__(self, i):
        return {**super().__getitem__(i), "cardiomegaly": (self.age[i] > 55).float()}


def cardio_trainer(env: D.DistEnv, run_dir: Path, max_epochs: int, **cfg):
    """A finetune-shaped Trainer wired like fit_task: sharded train loader, sharded (unpadded) val."""
    seed_everything(0)
    train = DataLoader(CardioToy(N_TRAIN, 32, 0), batch_size=4, sampler=ResumableSampler(None, N_TRAIN, 0),
                       drop_last=True)
    val = DataLoader(CardioToy(N_VAL, 32, 1), batch_size=4)
    train, val = D.shard_loader(train, env), D.shard_eval_loader(val, env)
    task = CardiomegalyTask(create_encoder("test_resnet"), Imbalance("none"), strategy="full", backbone_lr_scale=1.0)
    D.broadcast_module(task)
    opt = build_optimizer({"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}, task.optimizer_groups(0.0))
    schedule = LRSchedule(opt, {"name": "cosine", "warmup_epochs": 0}, len(train), max_epochs)
    trainer_cfg = {"max_epochs": max_epochs, "seed": 0, "progress": False, "log_every_n_steps": 2,
                   "grad_clip_norm": 1.0, "checkpoint_every_n_steps": 0, **cfg}
    trainer = Trainer(task, opt, schedule, resolve_precision("cpu", "off"), trainer_cfg, run_dir, NullTracker(),
                      "cfg: 1", {"command": "test"}, is_main=env.is_main)
    return trainer, train, val


def _decisions(trainer: Trainer) -> dict:
    s = trainer.state
    return {"history": [{k: v for k, v in h.items() if "images_per_s" not in k and "data_wait" not in k}
                        for h in s.history],
            "best": s.best, "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs, "epoch": s.epoch,
            "global_step": s.global_step}


def fit_check(env: D.DistEnv, run_dir: str) -> dict:
    trainer, train, val = cardio_trainer(env, Path(run_dir), 4, early_stopping={"enabled": True, "patience": 1})
    result = trainer.fit(train, val)
    params = _flat(trainer.task.state_dict().values())
    out = {"decisions": D.gather_objects({**_decisions(trainer), "stopped_early": result["stopped_early"]}),
           "params_equal": all(torch.equal(p, params) for p in D.gather_objects(params)),
           "val_shard_sizes": D.gather_objects(len(val.sampler)), "train_batches": D.gather_objects(len(train))}
    if env.is_main:  # the reference: the final model on the WHOLE validation set, in this process
        task = trainer.task.eval()
        full = CardioToy(N_VAL, 32, 1)
        with torch.no_grad():
            logits = task(full.images)["logit"].reshape(-1)
        labels = (full.age > 55).float()
        out["reference"] = {"auroc": float(roc_auc_score(labels.numpy(), torch.sigmoid(logits).numpy())),
                            "loss": float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)),
                            "prevalence": float(labels.mean())}
    return out


def resume_check(env: D.DistEnv, run_dir: str) -> dict:
    """Straight 2 epochs vs the same run preempted at step 3 by SIGUSR2 sent to rank 1's process
    ONLY (the engine's real handler), resumed from rank 0's recovery.pt on both ranks."""
    root = Path(run_dir)
    straight, train, val = cardio_trainer(env, root / "a", 2)
    straight.fit(train, val)
    interrupted, train, val = cardio_trainer(env, root / "b", 2)
    original = interrupted.task.on_after_optimizer_step

    def hook(step, max_steps):
        original(step, max_steps)
        if step == 3 and env.rank == 1:  # submitit's requeue signal, to this rank's process only
            os.kill(os.getpid(), signal.SIGUSR2)
    interrupted.task.on_after_optimizer_step = hook
    stopped = None
    try:
        interrupted.fit(train, val)
    except Preempted as stop:
        stopped = {"step": stop.global_step, "checkpoint": str(stop.checkpoint), "signal": stop.signal_name}
    D.barrier()  # rank 0 has written recovery.pt before any rank reads it
    recovery = root / "b" / "checkpoints" / "recovery.pt"
    written = D.gather_objects(sorted(p.name for p in recovery.parent.iterdir()))  # before the resumed run
    resumed, train, val = cardio_trainer(env, root / "b", 2)
    resumed.fit(train, val, resume_from=recovery)
    a, c = _flat(straight.task.state_dict().values()), _flat(resumed.task.state_dict().values())
    return {"stopped": D.gather_objects(stopped), "files_after_stop": written,
            "max_abs_diff": D.gather_objects((a - c).abs().max().item()),
            "params_equal_across_ranks": all(torch.equal(p, c) for p in D.gather_objects(c)),
            "straight": _decisions(straight), "resumed": _decisions(resumed)}


def fail_check(env: D.DistEnv, *_) -> dict:
    """Rank 1 fails while rank 0 waits in a collective: torchrun must stop rank 0 too."""
    if env.rank == 1:
        raise RuntimeError("planted failure on rank 1")
    D.barrier()  # never returns: rank 1 is gone
    return {"unreachable": True}
