"""The hand-written training loop: `fit` → per epoch `train_one_epoch` then `validate`.

Mixed precision per `trainer.amp`, gradient accumulation and clipping, per-step LR schedule,
atomic checkpoints each epoch (`last.pt`, `best.pt` by the task's monitor), early stopping and
exact resume. Only the main process (rank 0) writes files or talks to the tracker.
"""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cxrssl.engine.checkpoint import load_checkpoint, save_checkpoint
from cxrssl.engine.optim import LRSchedule
from cxrssl.engine.precision import Precision
from cxrssl.engine.seed import rng_state, set_rng_state
from cxrssl.tasks.base import Task


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/Inf; the last good checkpoint is left untouched."""


@dataclass
class FitState:
    epoch: int = 0              # epochs completed
    global_step: int = 0        # optimizer steps taken
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 precision: Precision, cfg: Mapping, run_dir: Path, tracker, config_yaml: str,
                 meta: dict[str, Any], is_main: bool = True):
        self.task, self.optimizer, self.schedule, self.precision = task, optimizer, schedule, precision
        self.cfg, self.tracker, self.config_yaml, self.meta, self.is_main = cfg, tracker, config_yaml, meta, is_main
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.scaler = precision.grad_scaler()
        self.state = FitState()
        self.accumulate = max(int(cfg.get("accumulate_grad_batches", 1)), 1)
        self.limit = cfg.get("limit_batches")
        self.channels_last = bool(cfg.get("channels_last", False))
        self.task.to(precision.device)
        if self.channels_last:
            self.task.to(memory_format=torch.channels_last)
        self.model = torch.compile(self.task) if cfg.get("compile", False) else self.task

    # ---------------------------------------------------------------- fit
    def fit(self, train_loader, val_loader, resume_from: Path | None = None) -> dict[str, Any]:
        if resume_from is not None:
            self.restore(resume_from)
        max_epochs = int(self.cfg["max_epochs"])
        start = time.perf_counter()
        stopped_early = self._should_stop()  # a resumed run that had already stopped early
        for epoch in range(self.state.epoch, max_epochs if not stopped_early else 0):
            train_logs = self.train_one_epoch(train_loader, epoch)
            val_logs, artifacts = self.validate(val_loader, epoch)
            monitor_value = val_logs.get(self.task.monitor)
            self.schedule.step_epoch(monitor_value)
            improved = self._update_best(monitor_value, epoch)
            self.state.epoch = epoch + 1
            record = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in train_logs.items()},
                      **{f"val/{k}": v for k, v in val_logs.items()}}
            self.state.history.append(record)
            self._save(improved)
            self._report_epoch(record, improved, artifacts)
            if self._should_stop():
                stopped_early = True
                break
        elapsed = time.perf_counter() - start
        return self._result(elapsed, stopped_early)

    # ---------------------------------------------------------------- epochs
    def train_one_epoch(self, loader, epoch: int) -> dict[str, float]:
        self.task.train()
        _set_epoch(loader, epoch, int(self.cfg.get("seed", 0)))
        n_batches = _n_batches(loader, self.limit)
        log_every = max(int(self.cfg.get("log_every_n_steps", 10)), 1)
        total_loss, seen, data_wait = 0.0, 0, 0.0
        start = tick = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1} train", unit="batch", leave=False,
                   disable=not (self.is_main and self.cfg.get("progress", True)))
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            data_wait += time.perf_counter() - tick
            images = self._images(batch)
            with self.precision.autocast():
                outputs = self.model(images)
            loss, _ = self.task.loss(outputs, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {i}, step {self.state.global_step}: "
                    "lower optimizer.lr, enable trainer.grad_clip_norm, or try trainer.amp=off; "
                    f"the last good checkpoint is {self.ckpt_dir / 'last.pt'}")
            self.scaler.scale(loss / self.accumulate).backward()
            if (i + 1) % self.accumulate == 0 or i + 1 == n_batches:
                self._optimizer_step()
                if self.state.global_step % log_every == 0:
                    self.tracker.log_metrics({"train/loss": loss.item(), **{f"train/{k}": v for k, v in
                                              self.schedule.lrs().items()}}, step=self.state.global_step)
            total_loss += loss.item() * images.shape[0]
            seen += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
            bar.update()
            tick = time.perf_counter()
        bar.close()
        elapsed = time.perf_counter() - start
        return {"loss": total_loss / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9),
                "data_wait_frac": data_wait / max(elapsed, 1e-9), "lr": self.schedule.lrs()["lr"]}

    @torch.no_grad()
    def validate(self, loader, epoch: int) -> tuple[dict[str, float], list[Path]]:
        self.task.eval()
        self.task.reset_metrics()
        n_batches = _n_batches(loader, self.limit)
        total_loss, seen, artifacts = 0.0, 0, []
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1} val", unit="batch", leave=False,
                   disable=not (self.is_main and self.cfg.get("progress", True)))
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            images = self._images(batch)
            with self.precision.autocast():
                outputs = self.model(images)
            loss, _ = self.task.loss(outputs, batch)
            self.task.update_metrics(outputs, batch)
            total_loss += loss.item() * images.shape[0]
            seen += images.shape[0]
            if i == 0 and self.is_main:
                artifacts = self.task.epoch_artifacts(batch, outputs, self.run_dir / "artifacts", epoch + 1)
            bar.update()
        bar.close()
        metrics = {"loss": total_loss / max(seen, 1), **self.task.compute_metrics()}
        return metrics, artifacts

    # ---------------------------------------------------------------- steps
    def _images(self, batch) -> torch.Tensor:
        images = batch["image"].to(self.precision.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _optimizer_step(self) -> None:
        clip = self.cfg.get("grad_clip_norm")
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.task.parameters(), float(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step_batch()
        self.state.global_step += 1

    # ---------------------------------------------------------------- best / stop
    def _update_best(self, value: float | None, epoch: int) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        mode = self.task.monitor_mode
        min_delta = float(self.cfg.get("early_stopping", {}).get("min_delta", 0.0))
        best = self.state.best
        better = best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
        if better:
            self.state.best, self.state.best_epoch, self.state.bad_epochs = float(value), epoch + 1, 0
        else:
            self.state.bad_epochs += 1
        return better

    def _should_stop(self) -> bool:
        es = self.cfg.get("early_stopping") or {}
        return bool(es.get("enabled", False)) and self.state.bad_epochs >= int(es.get("patience", 5))

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {"model": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": s.epoch, "global_step": s.global_step, "best": s.best, "best_epoch": s.best_epoch,
                "bad_epochs": s.bad_epochs, "history": s.history, "rng": rng_state(),
                "config": self.config_yaml, "meta": {**self.meta, "monitor": self.task.monitor,
                                                     "monitor_mode": self.task.monitor_mode,
                                                     "task_hparams": self.task.hparams()}}

    def _save(self, improved: bool) -> None:
        if not self.is_main:
            return
        state = self.checkpoint_state()
        save_checkpoint(state, self.ckpt_dir / "last.pt")
        if improved or not (self.ckpt_dir / "best.pt").exists():
            save_checkpoint(state, self.ckpt_dir / "best.pt")

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.precision.device)
        self.task.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = FitState(epoch=ckpt["epoch"], global_step=ckpt["global_step"], best=ckpt["best"],
                              best_epoch=ckpt["best_epoch"], bad_epochs=ckpt["bad_epochs"],
                              history=list(ckpt["history"]))
        set_rng_state(ckpt["rng"])
        source_best = Path(path).parent / "best.pt"
        if self.is_main and source_best.is_file() and source_best.resolve() != (self.ckpt_dir / "best.pt").resolve():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)  # the best weights travel with the run
            shutil.copyfile(source_best, self.ckpt_dir / "best.pt")
        if self.is_main:
            print(f"resumed from {path} at epoch {self.state.epoch}, step {self.state.global_step}")

    # ---------------------------------------------------------------- reporting
    def _report_epoch(self, record: dict, improved: bool, artifacts: list[Path]) -> None:
        if not self.is_main:
            return
        epoch = record["epoch"]
        self.tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        for path in artifacts:
            self.tracker.log_artifact(path, "reconstructions")
        shown = " ".join(f"{k}={v:.4g}" for k, v in record.items()
                         if k.startswith("val/") or k in ("train/loss", "train/images_per_s"))
        print(f"epoch {epoch}/{self.cfg['max_epochs']} {shown}{'  *best*' if improved else ''}", flush=True)

    def _result(self, elapsed: float, stopped_early: bool) -> dict[str, Any]:
        s = self.state
        last = s.history[-1] if s.history else {}
        speeds = [h["train/images_per_s"] for h in s.history if "train/images_per_s" in h]
        return {"epochs_completed": s.epoch, "global_step": s.global_step, "stopped_early": stopped_early,
                "monitor": f"val/{self.task.monitor}", "monitor_mode": self.task.monitor_mode,
                "best_value": s.best, "best_epoch": s.best_epoch,
                "final": {k: v for k, v in last.items() if k != "epoch"},
                "first": {k: v for k, v in (s.history[0] if s.history else {}).items() if k != "epoch"},
                "train_time_s": elapsed, "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
                "precision": self.precision.name, "device": str(self.precision.device)}


def _n_batches(loader, limit) -> int:
    n = len(loader)
    return min(n, int(limit)) if limit else n


def _set_epoch(loader, epoch: int, seed: int) -> None:
    """Make the shuffle order a function of (seed, epoch) so a resumed run sees the same batches."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed * 100003 + epoch)
