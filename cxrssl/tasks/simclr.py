"""SimCLR (Chen et al., 2020): two augmented views, a projection head, NT-Xent over the batch.

Negatives are the other images of the batch — gathered from every rank (lightly's
`gather_distributed`) so a DDP run contrasts against the global batch without changing the loss.
"""
from __future__ import annotations

import torch

from cxrssl.tasks.ssl_common import SSLTask


class SimCLRTask(SSLTask):
    name = "simclr"

    def __init__(self, encoder, temperature: float = 0.1, hidden_dim: int = 512, output_dim: int = 128,
                 gather_distributed: bool = True, monitor: dict | None = None):
        super().__init__(encoder, monitor)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.projection = SimCLRProjectionHead(encoder.out_channels, int(hidden_dim), int(output_dim))
        self.criterion = NTXentLoss(temperature=float(temperature), gather_distributed=bool(gather_distributed))
        self.temperature, self.hidden_dim, self.output_dim = float(temperature), int(hidden_dim), int(output_dim)

    def ssl_loss(self, views):
        x0, x1 = views[0], views[1]
        z = self.projection(self.embed(torch.cat([x0, x1]))).float()  # one pass: BN sees both views
        z0, z1 = z.chunk(2)
        loss = self.criterion(z0, z1)
        return loss, {"loss": loss.detach()}

    def hparams(self):
        return {"temperature": self.temperature, "hidden_dim": self.hidden_dim, "output_dim": self.output_dim}
