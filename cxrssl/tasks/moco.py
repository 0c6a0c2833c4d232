"""MoCo v2 (He et al., 2020; Sowrirajan et al., MoCo-CXR, 2021): a query encoder trained by
InfoNCE against keys from a momentum encoder, with negatives from a memory bank (queue) of past
keys — many negatives without a large batch, which is what makes it fit CPU/one-GPU budgets.

`memory_bank_size: 0` uses in-batch negatives instead (MoCo v3's large-batch regime, here with
lightly's NT-Xent). The key encoder moves only by EMA after each optimizer step.
"""
from __future__ import annotations

from cxrssl.tasks.ssl_common import SSLTask, make_teacher, pooled


class MoCoTask(SSLTask):
    name = "moco"
    ema_pairs = (("encoder", "teacher_encoder"), ("projection", "teacher_projection"))

    def __init__(self, encoder, temperature: float = 0.2, hidden_dim: int = 512, output_dim: int = 128,
                 memory_bank_size: int = 4096, momentum: float = 0.99, momentum_end: float = 0.99,
                 symmetric: bool = True, gather_distributed: bool = True, monitor: dict | None = None):
        super().__init__(encoder, monitor)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead

        self.projection = MoCoProjectionHead(encoder.out_channels, int(hidden_dim), int(output_dim))
        self.teacher_encoder = make_teacher(self.encoder)
        self.teacher_projection = make_teacher(self.projection)
        bank = (int(memory_bank_size), int(output_dim)) if int(memory_bank_size) > 0 else 0
        self.criterion = NTXentLoss(temperature=float(temperature), memory_bank_size=bank,
                                    gather_distributed=bool(gather_distributed))
        self.momentum_start, self.momentum_end = float(momentum), float(momentum_end)
        self.momentum = self.momentum_start
        self.symmetric = bool(symmetric)
        self._hp = {"temperature": float(temperature), "memory_bank_size": int(memory_bank_size),
                    "momentum": float(momentum), "momentum_end": float(momentum_end), "symmetric": self.symmetric}

    def query(self, x):
        return self.projection(self.embed(x)).float()

    def key(self, x):
        import torch

        with torch.no_grad():
            return self.teacher_projection(pooled(self.teacher_encoder(x))).float()

    def ssl_loss(self, views):
        x0, x1 = views[0], views[1]
        loss = self.criterion(self.query(x0), self.key(x1))
        if self.symmetric:
            loss = 0.5 * (loss + self.criterion(self.query(x1), self.key(x0)))
        return loss, {"loss": loss.detach()}

    def hparams(self):
        return dict(self._hp)
