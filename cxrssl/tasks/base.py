"""The Task interface: a model plus the loss and metrics that train it.

The engine knows nothing else. Every task keeps its encoder at `self.encoder`, so any task's
checkpoint yields encoder weights under the `encoder.` prefix that finetune can load.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from cxrssl.engine.optim import param_groups


class Task(nn.Module, ABC):
    name: str = "task"
    monitor: str = "loss"       # key of compute_metrics() that picks best.pt
    monitor_mode: str = "min"   # "min" | "max"

    encoder: nn.Module

    @abstractmethod
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss with grad, {name: detached 0-dim tensor}); no `.item()` — the loop syncs rarely."""

    @abstractmethod
    def update_metrics(self, outputs: dict[str, torch.Tensor], batch: dict) -> None: ...

    @abstractmethod
    def compute_metrics(self) -> dict[str, float]: ...

    @abstractmethod
    def reset_metrics(self) -> None: ...

    # ------------------------------------------------------------ engine interface (notes/INTERFACE.md)
    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """`batch` is already on the device; called inside autocast. Returns {"loss": scalar with
        grad, <name>: detached 0-dim tensors to log}. Multi-view / teacher-student tasks override."""
        outputs = self(batch["image"])
        loss, logs = self.loss(outputs, batch)
        return {**logs, "loss": loss}

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Same contract under no_grad; updates the metrics. "outputs" feeds `epoch_artifacts`."""
        outputs = self(batch["image"])
        loss, logs = self.loss(outputs, batch)
        self.update_metrics(outputs, batch)
        return {**logs, "loss": loss.detach(), "outputs": outputs}

    def on_after_optimizer_step(self, global_step: int, max_steps: int) -> None:
        """After each optimizer step (EMA/momentum teachers, temperature schedules). Default: nothing."""

    def batch_size(self, batch: dict) -> int:
        """Images in `batch` (for per-image loss averages and images/s)."""
        return len(batch["image"])

    def on_validation_epoch_end(self) -> dict[str, float]:
        """Extra epoch-level validation numbers (e.g. collapse statistics); merged into val logs."""
        return {}

    def epoch_artifacts(self, batch: dict, outputs: dict[str, torch.Tensor], out_dir: Path,
                        epoch: int) -> list[Path]:
        """Files worth looking at after a validation epoch (e.g. reconstruction grids)."""
        return []

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Parameter groups for the optimizer; finetune overrides this for a lower backbone LR."""
        return param_groups(self.named_parameters(), weight_decay)

    def hparams(self) -> dict:
        """Plain values saved in the checkpoint's meta to rebuild the task for inference."""
        return {}


def masked_target(batch: dict, key: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels as float on `device` and the mask of rows that have one (NaN = unknown)."""
    target = torch.as_tensor(batch[key], dtype=torch.float32, device=device)
    return target, ~torch.isnan(target)


def masked_mean(per_item: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `per_item` over `valid` rows without a host sync (no boolean indexing, no
    `if valid.any()`): 0 with the graph kept when no row is valid. Compute `per_item` on targets
    with NaN replaced (`torch.nan_to_num`) so masked rows carry no NaN into the gradient."""
    weight = valid.to(per_item.dtype)
    return (per_item * weight).sum() / weight.sum().clamp_min(1.0)


def empty_loss(prediction: torch.Tensor) -> torch.Tensor:
    """A zero loss that keeps the graph (a batch whose labels are all missing)."""
    return prediction.sum() * 0.0
