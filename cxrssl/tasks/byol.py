"""BYOL (Grill et al., 2020): an online network predicts the projection a momentum target
network gives another view; no negatives. The predictor and the rising EMA momentum (cosine,
0.99 → 1) are what keep it from collapsing — the collapse monitor checks that they do.
"""
from __future__ import annotations

import torch

from cxrssl.tasks.ssl_common import SSLTask, ema_update, make_teacher, momentum_at, pooled


class BYOLTask(SSLTask):
    name = "byol"

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

    def on_after_optimizer_step(self, global_step: int, max_steps: int) -> None:
        self.momentum = momentum_at(global_step, max_steps, self.momentum_start, self.momentum_end)
        ema_update(self.encoder, self.teacher_encoder, self.momentum)
        ema_update(self.projection, self.teacher_projection, self.momentum)

    def hparams(self):
        return dict(self._hp)
