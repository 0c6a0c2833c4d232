"""BYOL (Grill et al., 2020): an online network predicts the projection a momentum target
network gives another view; no negatives. The predictor and the rising EMA momentum (cosine,
0.99 → 1) are what keep it from collapsing — the collapse monitor checks that they do.
"""
from __future__ import annotations

import torch

from cxrssl.tasks.ssl_common import SSLTask, make_teacher, pooled


class BYOLTask(SSLTask):
    name = "byol"
    ema_pairs = (("encoder", "teacher_encoder"), ("projection", "teacher_projection"))

    def __init__(self, encoder, hidden_dim: int = 1024, output_dim: int = 256, momentum: float = 0.99,
                 momentum_end: float = 1.0, monitor: dict | None = None):
        super().__init__(encoder, monitor)
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        self.projection = BYOLProjectionHead(encoder.out_channels, int(hidden_dim), int(output_dim))
        self.prediction = BYOLPredictionHead(int(output_dim), int(hidden_dim), int(output_dim))
        self.teacher_encoder = make_teacher(self.encoder)
        self.teacher_projection = make_teacher(self.projection)
        self.criterion = NegativeCosineSimilarity()
        self.momentum_start, self.momentum_end = float(momentum), float(momentum_end)
        self.momentum = self.momentum_start
        self._hp = {"hidden_dim": int(hidden_dim), "output_dim": int(output_dim),
                    "momentum": float(momentum), "momentum_end": float(momentum_end)}

    def online(self, x):
        return self.prediction(self.projection(self.embed(x))).float()

    def target(self, x):
        with torch.no_grad():
            return self.teacher_projection(pooled(self.teacher_encoder(x))).float()

    def ssl_loss(self, views):
        x0, x1 = views[0], views[1]
        loss = 0.5 * (self.criterion(self.online(x0), self.target(x1))
                      + self.criterion(self.online(x1), self.target(x0)))
        return loss, {"loss": loss.detach()}

    def hparams(self):
        return dict(self._hp)
