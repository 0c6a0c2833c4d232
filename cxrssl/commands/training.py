"""What pretrain and finetune share: tracking → data → optimizer → Trainer.fit → summary.

Commands stay thin: they build a Task and call `fit_task`; everything about running it (resume,
MLflow, checkpoints, summary.json) happens once, here.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrssl.engine.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint, newest_resumable
from cxrssl.engine import distributed
from cxrssl.engine.loop import Trainer
from cxrssl.engine.signals import Preempted, end_preempted
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import Precision
from cxrssl.tasks.base import Task


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from and the MLflow run it belonged to (continued if present).
    Also checks, first, that the run's checkpoint folder is writable."""
    check_outputs(run_dir)  # first thing every training command does: fail before loading data
    if not distributed.env_from_torchrun().is_main:  # torchrun: rank 0 picks the checkpoint, all load it
        return distributed.broadcast_object(None)
    return distributed.broadcast_object(_resume_point(cfg, run_dir))


def _resume_point(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, str | None]:
    from cxrssl.sweeps import sweep_info_from_hydra

    resume = cfg.get("resume")
    if sweep_info_from_hydra() is not None and str(resume).lower() == "true":
        # In a sweep each job resumes only itself; a job that never wrote a checkpoint starts fresh.
        resume = newest_resumable(run_dir / "checkpoints")
    path = find_resume_checkpoint(resume, run_dir)
    if path is None:
        return None, None
    meta = load_checkpoint(path).get("meta", {})
    wanted = {"command": str(cfg.command), "backbone": str(cfg.backbone.name),
              "pretext": str(cfg.pretext.name) if "pretext" in cfg else None}
    clash = {k: (w, meta.get(k)) for k, w in wanted.items() if w is not None and meta.get(k) != w}
    if clash:
        raise CheckpointError(f"resume={cfg.get('resume')}: {path} belongs to another run ("
                              + ", ".join(f"{k}: this run {w!r}, checkpoint {f!r}" for k, (w, f) in clash.items())
                              + "); pass resume=<path> of the run to continue")
    return path, meta.get("mlflow_run_id")


def fit_task(cfg: DictConfig, task: Task, loaders: dict, precision: Precision,
             tracker, run_dir: Path, resume_from: Path | None, meta: dict[str, Any]) -> dict[str, Any]:
    """Train `task` on loaders['train'], validate on loaders['val'], write checkpoints and summary."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    distributed.sync_batchnorm(task, bool(trainer_cfg.get("sync_batchnorm", False)),  # before the optimizer:
                               precision.device.type)                                # new BN parameters
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True),
                                task.optimizer_groups(float(cfg.optimizer.get("weight_decay", 0.0))))
    dist_env = distributed.env_from_torchrun()
    batch_transform = train_batch_transform(cfg, dist_env.rank)  # data.gpu_augment: augment on the device
    lr_found = _lr_range_test(cfg, task, optimizer, loaders, precision, tracker, run_dir, resume_from,
                              batch_transform)
    if lr_found is not None and lr_found["mode"] == "report":
        return {"lr_find": lr_found}  # lr_find=true: report and stop, no training
    loaders = {**loaders, "train": distributed.shard_loader(loaders["train"], dist_env)}  # torchrun: this rank's share
    if getattr(task, "shard_validation", False):  # torchrun: 1/N of val per rank, metrics gathered (no padding)
        loaders["val"] = distributed.shard_eval_loader(loaders["val"], dist_env)
    limit = trainer_cfg.get("limit_batches")
    batches = min(len(loaders["train"]), int(limit)) if limit else len(loaders["train"])
    accumulate = max(int(trainer_cfg.get("accumulate_grad_batches", 1)), 1)
    schedule = LRSchedule(optimizer, OmegaConf.to_container(cfg.scheduler, resolve=True),
                          steps_per_epoch=math.ceil(batches / accumulate),
                          max_epochs=int(trainer_cfg["max_epochs"]), mode=task.monitor_mode)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    meta = {**meta, "mlflow_run_id": tracker.run_id, "image_size": int(cfg.data.image_size),
            "backbone": cfg.backbone.name}
    trainer = Trainer(task, optimizer, schedule, precision, trainer_cfg, run_dir, tracker, config_yaml, meta,
                      is_main=dist_env.is_main, batch_transform=batch_transform)
    warn_one_class_validation(task, loaders["val"], limit)
    print(f"training {task.name} on {len(loaders['train'].dataset)} images "
          f"(val {len(loaders['val'].dataset)}) | {cfg.backbone.name} @ {cfg.data.image_size}px | "
          f"{precision.device} {precision.name} | run dir {run_dir}", flush=True)
    try:
        result = trainer.fit(loaders["train"], loaders["val"], resume_from=resume_from)
    except Preempted as stop:  # SIGTERM/SIGUSR1: recovery.pt written; MLflow run KILLED; exit 143
        raise end_preempted(stop, tracker, str(cfg.command)) from None
    distributed.barrier()  # torchrun: rank 0 has written best.pt before any rank reads it
    return {**result, "lr_find": lr_found} if lr_found is not None else result


def train_batch_transform(cfg: DictConfig, rank: int = 0):
    """`data.gpu_augment=true`: the Trainer's batch_transform that augments the uint8 training batch on
    the device (cxrssl/data/gpu_augment.py), from the same data.augment settings; None otherwise.
    Positives get strength 2 when imbalance.strong_augment is on, as on the CPU path."""
    from cxrssl.data.gpu_augment import TrainBatchAugment, gpu_augment_enabled

    if not gpu_augment_enabled(cfg.data):
        return None
    return TrainBatchAugment(cfg.data, seed=int(cfg.trainer.seed), rank=rank,
                             strong_positives=bool(OmegaConf.select(cfg, "imbalance.strong_augment", default=False)),
                             channels_last=bool(cfg.trainer.get("channels_last", False)))


def _lr_range_test(cfg: DictConfig, task: Task, optimizer, loaders: dict, precision: Precision, tracker,
                   run_dir: Path, resume_from: Path | None, batch_transform=None) -> dict[str, Any] | None:
    """lr_find=true|apply (cxrssl/engine/lr_find.py): run the range test before the LR schedule is
    built; `apply` then sets optimizer.lr to the suggestion. A resumed run keeps its own LR."""
    from cxrssl.engine.lr_find import apply_lr, find_lr_for_run, lr_find_mode

    mode = lr_find_mode(cfg.get("lr_find"))
    if mode is None or (mode == "apply" and resume_from is not None):
        return None
    found = find_lr_for_run(OmegaConf.to_container(cfg.lr_finder, resolve=True), task, optimizer, loaders["train"],
                            precision, tracker, run_dir, cfg.trainer.get("grad_clip_norm"), batch_transform)
    found = distributed.broadcast_object(found)  # torchrun: every rank applies rank 0's suggestion
    if mode == "apply" and found["suggested_lr"] is None:  # a flat curve: its "suggestion" would be noise
        warnings.warn(f"lr_find=apply: {found['message']} — training at optimizer.lr={float(cfg.optimizer.lr):.3g}",
                      RuntimeWarning, stacklevel=2)
    elif mode == "apply":
        apply_lr(optimizer, found["suggested_lr"])
        tracker.log_params({"lr_find.applied_lr": found["suggested_lr"]})
    return {**found, "mode": mode}


def report_lr_find(cfg: DictConfig, tracker, run_dir: Path, found: dict[str, Any]) -> float | None:
    """lr_find=true ends here: summary.json with the curve's suggestions; returns the suggested LR
    (None when the curve was flat and nothing is suggested)."""
    from cxrssl.commands.report import finish_run

    command = str(cfg.command)
    lr = found["suggested_lr"]
    if lr is None:
        lines = [f"{command} LR range test: {found['message']}",
                 f"plot:        {found['plot']}   (steepest {found['steepest']:.3g}, min/10 {found['min_div_10']:.3g}: not used)"]
    else:
        lines = [f"{command} LR range test: suggested optimizer.lr={lr:.3g} ({found['suggestion']}; "
                 f"steepest {found['steepest']:.3g}, min/10 {found['min_div_10']:.3g})",
                 f"plot:        {found['plot']}",
                 f"next:        cxrssl {command} optimizer.lr={lr:.3g}   (or lr_find=apply)"]
    finish_run(cfg, tracker, run_dir, {"lr_find": found}, lines, [])  # curve and plot already logged under lr_find/
    return None if lr is None else float(lr)


def check_outputs(run_dir: Path) -> None:
    """The run's checkpoint folder must be writable before any work starts."""
    from cxrssl.data.writable import check_writable

    check_writable(Path(run_dir) / "checkpoints", "the run's checkpoint folder",
                   "choose a writable output folder with hydra.run.dir=<dir>")


def warn_one_class_validation(task: Task, val_loader, limit: int | None) -> None:
    """Before training: if the validation images the loop will see (all, or the first
    `trainer.limit_batches` batches) have one class of the task's label, the monitor (AUROC) is
    NaN every epoch; say so now rather than after the run."""
    table = getattr(getattr(val_loader, "dataset", None), "table", None)
    if table is None or task.name not in getattr(table, "columns", ()) or task.monitor not in ("auroc",):
        return
    seen = table[task.name] if not limit else table[task.name].iloc[: int(limit) * int(val_loader.batch_size or 1)]
    classes = sorted(seen.dropna().unique().tolist())
    if len(classes) < 2:
        scope = f"the first {len(seen)} validation images (trainer.limit_batches={limit})" if limit else "validation"
        print(f"warning: {scope} have only class {classes} of {task.name!r}: val/{task.monitor} will be NaN, "
              "every epoch counts as a bad epoch and best.pt stays at epoch 1; raise trainer.limit_batches or "
              "data.val_fraction", flush=True)


def checkpoint_artifacts(cfg: DictConfig, ckpt_dir: Path) -> list[tuple[str, Path]]:
    """`mlflow.log_checkpoints`: best (default: best.pt, weights only, once) | all (+ last.pt with
    optimizer state) | none. `mlflow.log_model=false` (older configs) means none."""
    mode = str(cfg.mlflow.get("log_checkpoints", "best")).lower()
    if mode not in ("best", "all", "none"):
        from cxrssl.errors import ConfigError

        raise ConfigError(f"mlflow.log_checkpoints={mode!r}: expected best, all or none")
    if not cfg.mlflow.get("log_model", True) or mode == "none":
        return []
    names = ["best.pt"] + (["last.pt"] if mode == "all" else [])
    return [("checkpoints", Path(ckpt_dir) / name) for name in names]
