"""Optimizers and learning-rate schedules from `conf/optimizer` and `conf/scheduler`.

Schedules step per batch (warmup, cosine, one-cycle) or per epoch on the validation metric
(plateau); `LRSchedule` hides which, so the loop calls `step_batch()` and `step_epoch(metric)`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 lr_scale: float = 1.0) -> list[dict]:
    """Split into decay / no-decay groups (biases and norm weights are not decayed, as in timm)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: Mapping, groups: list[dict]) -> torch.optim.Optimizer:
    """`groups` carry an `lr_scale` (e.g. a lower LR for a fine-tuned backbone than its head)."""
    name, lr = cfg["name"], float(cfg["lr"])
    if not groups:
        raise ValueError("no trainable parameters: check finetune.strategy / frozen layers")
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        g.setdefault("weight_decay", float(cfg.get("weight_decay", 0.0)))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
    if name == "sgd":
        momentum = float(cfg.get("momentum", 0.0))
        return torch.optim.SGD(groups, lr=lr, momentum=momentum,
                               nesterov=bool(cfg.get("nesterov", False)) and momentum > 0)
    raise ValueError(f"optimizer.name={name!r}: expected adamw, adam or sgd")


class LRSchedule:
    """Linear warmup, then the configured schedule; one state_dict for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Mapping, steps_per_epoch: int,
                 max_epochs: int, mode: str = "min"):
        self.name = cfg["name"]
        self.optimizer = optimizer
        self.total_steps = max(steps_per_epoch * max_epochs, 1)
        self.warmup_steps = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
        self.steps = 0
        self.plateau = None
        if self.name == "onecycle":
            self.batch = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=self.total_steps,
                pct_start=float(cfg.get("pct_start", 0.3)), div_factor=float(cfg.get("div_factor", 25.0)),
                final_div_factor=float(cfg.get("final_div_factor", 1e4)),
                cycle_momentum=bool(cfg.get("cycle_momentum", True)) and _has_momentum(optimizer),
                base_momentum=float(cfg.get("base_momentum", 0.85)),
                max_momentum=float(cfg.get("max_momentum", 0.95)))
        elif self.name in ("cosine", "none", "plateau"):
            min_ratio = float(cfg.get("min_lr_ratio", 0.0))
            decay = self.name == "cosine"
            self.batch = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: self._factor(s, decay, min_ratio))
            if self.name == "plateau":
                self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode=mode, factor=float(cfg.get("factor", 0.1)),
                    patience=int(cfg.get("patience", 2)), min_lr=float(cfg.get("min_lr", 0.0)))
        else:
            raise ValueError(f"scheduler.name={self.name!r}: expected cosine, onecycle, plateau or none")

    def _factor(self, step: int, cosine: bool, min_ratio: float) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not cosine:
            return 1.0
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def step_batch(self) -> None:
        self.steps += 1
        # Plateau keeps the lambda only for warmup: afterwards it owns the LR.
        if self.plateau is None or self.steps <= self.warmup_steps:
            if self.name != "onecycle" or self.steps < self.total_steps:
                self.batch.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.plateau is not None and self.steps >= self.warmup_steps and metric is not None:
            self.plateau.step(metric)

    def lrs(self) -> dict[str, float]:
        out = {"lr": self.optimizer.param_groups[0]["lr"]}
        group = self.optimizer.param_groups[0]
        if "momentum" in group:
            out["momentum"] = group["momentum"]
        elif "betas" in group:
            out["momentum"] = group["betas"][0]
        return out

    def state_dict(self) -> dict:
        return {"steps": self.steps, "batch": self.batch.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.batch.load_state_dict(state["batch"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    group = optimizer.param_groups[0]
    return "betas" in group or group.get("momentum", 0) > 0
