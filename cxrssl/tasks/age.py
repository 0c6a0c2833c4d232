"""Age regression pretext: predict years from the image (heart size, bone density change with age)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics

from cxrssl.models import Encoder
from cxrssl.models.heads import PooledHead
from cxrssl.tasks.base import Task, masked_mean, masked_target

_LOSSES = {"l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss}


class AgeTask(Task):
    """Regression on age / `age_scale`; reports MAE in years and the MAE of always predicting
    the training mean, so "it learned something" is a comparison, not a feeling."""

    name = "age"
    monitor = "mae"
    monitor_mode = "min"

    def __init__(self, encoder: Encoder, train_mean_age: float, loss: str = "l1",
                 age_scale: float = 100.0, dropout: float = 0.0):
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"pretext.loss={loss!r}: expected one of {sorted(_LOSSES)}")
        self.encoder = encoder
        self.head = PooledHead(encoder.out_channels, 1, dropout)
        self.loss_name, self.age_scale, self.train_mean_age = loss, float(age_scale), float(train_mean_age)
        with torch.no_grad():  # start exactly at the mean predictor: the head learns deviations
            self.head.fc.weight.zero_()
            self.head.fc.bias.fill_(self.train_mean_age / self.age_scale)
        self.mae = torchmetrics.MeanAbsoluteError()
        self.baseline_mae = torchmetrics.MeanAbsoluteError()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"age": self.head(self.encoder(images)).float() * self.age_scale}

    def loss(self, outputs, batch):
        target, valid = masked_target(batch, "age", outputs["age"].device)
        per_image = _LOSSES[self.loss_name](outputs["age"] / self.age_scale,
                                            torch.nan_to_num(target) / self.age_scale, reduction="none")
        loss = masked_mean(per_image, valid)  # no host sync: images without an age weigh 0
        return loss, {"loss": loss.detach()}

    def update_metrics(self, outputs, batch):
        target, valid = masked_target(batch, "age", outputs["age"].device)
        if valid.any():
            pred = outputs["age"][valid].detach()
            self.mae.update(pred, target[valid])
            self.baseline_mae.update(torch.full_like(pred, self.train_mean_age), target[valid])

    def compute_metrics(self):
        if self.mae.total == 0:
            return {}
        mae, base = float(self.mae.compute()), float(self.baseline_mae.compute())
        return {"mae": mae, "mae_mean_baseline": base, "mae_skill": 1.0 - mae / base if base > 0 else float("nan")}

    def reset_metrics(self):
        self.mae.reset()
        self.baseline_mae.reset()

    def hparams(self):
        return {"train_mean_age": self.train_mean_age, "age_scale": self.age_scale, "loss": self.loss_name}
