"""What pretrain and finetune share: tracking → data → optimizer → Trainer.fit → summary.

Commands stay thin: they build a Task and call `fit_task`; everything about running it (resume,
MLflow, checkpoints, summary.json) happens once, here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrssl.engine.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint
from cxrssl.engine.loop import Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import Precision
from cxrssl.tasks.base import Task


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from and the MLflow run it belonged to (continued if present)."""
    from cxrssl.sweeps import sweep_info_from_hydra

    resume = cfg.get("resume")
    if sweep_info_from_hydra() is not None and str(resume).lower() == "true":
        # In a sweep each job resumes only itself; a job that never wrote a checkpoint starts fresh.
        own = run_dir / "checkpoints" / "last.pt"
        resume = own if own.is_file() else None
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
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True),
                                task.optimizer_groups(float(cfg.optimizer.get("weight_decay", 0.0))))
    lr_found = _lr_range_test(cfg, task, optimizer, loaders, precision, tracker, run_dir, resume_from)
    if lr_found is not None and lr_found["mode"] == "report":
        return {"lr_find": lr_found}  # lr_find=true: report and stop, no training
    limit = trainer_cfg.get("limit_batches")
    batches = min(len(loaders["train"]), int(limit)) if limit else len(loaders["train"])
    accumulate = max(int(trainer_cfg.get("accumulate_grad_batches", 1)), 1)
    schedule = LRSchedule(optimizer, OmegaConf.to_container(cfg.scheduler, resolve=True),
                          steps_per_epoch=math.ceil(batches / accumulate),
                          max_epochs=int(trainer_cfg["max_epochs"]), mode=task.monitor_mode)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    meta = {**meta, "mlflow_run_id": tracker.run_id, "image_size": int(cfg.data.image_size),
            "backbone": cfg.backbone.name}
    trainer = Trainer(task, optimizer, schedule, precision, trainer_cfg, run_dir, tracker, config_yaml, meta)
    print(f"training {task.name} on {len(loaders['train'].dataset)} images "
          f"(val {len(loaders['val'].dataset)}) | {cfg.backbone.name} @ {cfg.data.image_size}px | "
          f"{precision.device} {precision.name} | run dir {run_dir}", flush=True)
    result = trainer.fit(loaders["train"], loaders["val"], resume_from=resume_from)
    return {**result, "lr_find": lr_found} if lr_found is not None else result


def _lr_range_test(cfg: DictConfig, task: Task, optimizer, loaders: dict, precision: Precision, tracker,
                   run_dir: Path, resume_from: Path | None) -> dict[str, Any] | None:
    """lr_find=true|apply (cxrssl/engine/lr_find.py): run the range test before the LR schedule is
    built; `apply` then sets optimizer.lr to the suggestion. A resumed run keeps its own LR."""
    from cxrssl.engine.lr_find import apply_lr, find_lr_for_run, lr_find_mode

    mode = lr_find_mode(cfg.get("lr_find"))
    if mode is None or (mode == "apply" and resume_from is not None):
        return None
    found = find_lr_for_run(OmegaConf.to_container(cfg.lr_finder, resolve=True), task, optimizer, loaders["train"],
                            precision, tracker, run_dir, cfg.trainer.get("grad_clip_norm"))
    if mode == "apply":
        apply_lr(optimizer, found["suggested_lr"])
        tracker.log_params({"lr_find.applied_lr": found["suggested_lr"]})
    return {**found, "mode": mode}


def report_lr_find(cfg: DictConfig, tracker, run_dir: Path, found: dict[str, Any]) -> float:
    """lr_find=true ends here: summary.json with the curve's suggestions; returns the suggested LR."""
    from cxrssl.commands.report import finish_run

    command = str(cfg.command)
    finish_run(cfg, tracker, run_dir, {"lr_find": found},
               [f"{command} LR range test: suggested optimizer.lr={found['suggested_lr']:.3g} ({found['suggestion']}; "
                f"steepest {found['steepest']:.3g}, min/10 {found['min_div_10']:.3g})",
                f"plot:        {found['plot']}",
                f"next:        cxrssl {command} optimizer.lr={found['suggested_lr']:.3g}   (or lr_find=apply)"],
               [])  # the curve and plot are already logged under lr_find/
    return float(found["suggested_lr"])

