"""Sex classification pretext (thorax size and breast shadows differ by sex)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics

from cxrssl.models import Encoder
from cxrssl.models.heads import PooledHead
from cxrssl.tasks.base import Task, masked_mean, masked_target


class SexTask(Task):
    """Binary classification, 1 = male; AUROC picks the best checkpoint."""

    name = "sex"
    monitor = "auroc"
    monitor_mode = "max"

    def __init__(self, encoder: Encoder, label_smoothing: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.head = PooledHead(encoder.out_channels, 1, dropout)
        self.label_smoothing = float(label_smoothing)
        self.auroc = torchmetrics.classification.BinaryAUROC()
        self.accuracy = torchmetrics.classification.BinaryAccuracy()

    def forward(self, images):
        return {"logit": self.head(self.encoder(images)).float()}

    def loss(self, outputs, batch):
        target, valid = masked_target(batch, "sex", outputs["logit"].device)
        smooth = torch.nan_to_num(target) * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        per_image = F.binary_cross_entropy_with_logits(outputs["logit"], smooth, reduction="none")
        loss = masked_mean(per_image, valid)  # no host sync: images without a sex weigh 0
        return loss, {"loss": loss.detach()}

    def update_metrics(self, outputs, batch):
        target, valid = masked_target(batch, "sex", outputs["logit"].device)
        if valid.any():
            prob = torch.sigmoid(outputs["logit"][valid].detach())
            self.auroc.update(prob, target[valid].long())
            self.accuracy.update(prob, target[valid].long())

    def compute_metrics(self):
        if not self.accuracy.update_called:
            return {}
        return {"auroc": float(self.auroc.compute()), "accuracy": float(self.accuracy.compute())}

    def reset_metrics(self):
        self.auroc.reset()
        self.accuracy.reset()

    def hparams(self):
        return {"label_smoothing": self.label_smoothing}
