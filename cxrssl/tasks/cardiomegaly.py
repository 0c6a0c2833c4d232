"""Cardiomegaly detection on top of any pretrained encoder (the downstream task).

Fine-tuning strategies (`finetune.strategy`): `linear` (frozen encoder, BN statistics frozen too,
head on standardised pooled features: the problem `cxrssl probe probe=linear` solves),
`partial` (the original's: train only the last `trainable_blocks` encoder stages), `full` (all,
with the encoder at `backbone_lr_scale` × the head's LR). `recon_weight` > 0 adds the original's
dual loss: reconstruction of the input from the same features, next to classification.
"""
from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from cxrssl.engine.optim import param_groups
from cxrssl.models import Encoder
from cxrssl.models.heads import Decoder, PooledHead
from cxrssl.tasks.base import Task, empty_loss, masked_target
from cxrssl.tasks.imbalance import Imbalance

STRATEGIES = ("linear", "partial", "full")


class CardiomegalyTask(Task):
    name = "cardiomegaly"
    monitor = "auroc"
    monitor_mode = "max"
    shard_validation = True  # torchrun: each rank validates 1/N of the rows; compute_metrics gathers them

    def __init__(self, encoder: Encoder, imbalance: Imbalance, strategy: str = "full",
                 trainable_blocks: int = 1, backbone_lr_scale: float = 0.1, recon_weight: float = 0.0,
                 dropout: float = 0.0, decoder_width: int = 64):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"finetune.strategy={strategy!r}: expected one of {STRATEGIES}")
        self.encoder = encoder
        # linear: standardised features (BatchNorm without affine), as scikit-learn's probe sees them
        self.head = PooledHead(encoder.out_channels, 1, dropout, standardize=strategy == "linear")
        self.decoder = Decoder(encoder.out_channels, encoder.reduction, decoder_width) if recon_weight > 0 else None
        self.imbalance, self.strategy = imbalance, strategy
        self.recon_weight, self.backbone_lr_scale = float(recon_weight), float(backbone_lr_scale)
        self.trainable_blocks = int(trainable_blocks)
        self._frozen_norms: list[nn.Module] = []
        self._freeze()
        self.auroc = torchmetrics.classification.BinaryAUROC()
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    # ------------------------------------------------------------ freezing
    def _freeze(self) -> None:
        stages = self.encoder.stage_parameters()
        if self.strategy == "full":
            return
        n_train = 0 if self.strategy == "linear" else self.trainable_blocks
        if self.strategy == "partial" and not 1 <= n_train <= len(stages):
            raise ValueError(f"finetune.trainable_blocks={n_train}: must be 1..{len(stages)} for "
                             f"{self.encoder.name}")
        trainable = {id(p) for group in stages[len(stages) - n_train:] for _, p in group}
        for p in self.encoder.parameters():
            p.requires_grad_(id(p) in trainable)
        self._frozen_norms = [m for m in self.encoder.modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)
                              and not any(p.requires_grad for p in m.parameters(recurse=False))]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen_norms:  # frozen layers keep their pretrained BN statistics
            module.eval()
        return self

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        head = [(n, p) for n, p in self.named_parameters() if not n.startswith("encoder.")]
        return (param_groups(head, weight_decay)
                + param_groups(self.encoder.named_parameters(), weight_decay, self.backbone_lr_scale))

    # ------------------------------------------------------------ forward / loss
    def forward(self, images):
        features = self.encoder(images)
        out = {"logit": self.head(features).float()}
        if self.decoder is not None:
            out["input"] = images
            out["recon"] = self.decoder(features, images.shape[-2:]).float()
        return out

    def loss(self, outputs, batch):
        target, valid = masked_target(batch, "cardiomegaly", outputs["logit"].device)
        logs = {}
        cls = self.imbalance.loss(outputs["logit"][valid], target[valid]) if valid.any() else empty_loss(outputs["logit"])
        loss = cls
        logs["cls_loss"] = cls.detach()
        if self.decoder is not None:
            recon = ((outputs["recon"] - outputs["input"].float()) ** 2).mean()
            loss = loss + self.recon_weight * recon
            logs["recon_loss"] = recon.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    # ------------------------------------------------------------ metrics
    def update_metrics(self, outputs, batch):
        target, valid = masked_target(batch, "cardiomegaly", outputs["logit"].device)
        if valid.any():
            prob = torch.sigmoid(outputs["logit"][valid].detach())
            self._probs.append(prob.cpu())
            self._labels.append(target[valid].cpu())

    def compute_metrics(self):
        from torchmetrics.functional.classification import binary_auroc

        from cxrssl.engine.distributed import gather_objects

        # torchrun shards validation by rank: every rank gathers all shards' predictions (a no-op
        # alone), so each computes the same full-set AUROC and takes the same best/stop decision.
        mine = (torch.cat(self._labels) if self._labels else torch.empty(0),
                torch.cat(self._probs) if self._probs else torch.empty(0))
        parts = gather_objects(mine)
        labels, probs = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        self._labels, self._probs = ([labels], [probs]) if len(labels) else ([], [])
        if not len(labels):
            return {}
        if labels.min() == labels.max():
            return {"auroc": float("nan"), "prevalence": float(labels.mean())}
        return {"auroc": float(binary_auroc(probs, labels.long())), "prevalence": float(labels.mean())}

    def reset_metrics(self):
        self.auroc.reset()
        self._probs, self._labels = [], []

    def collected(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, probabilities) of the last validation pass, for threshold selection."""
        return torch.cat(self._labels), torch.cat(self._probs)

    def hparams(self):
        return {"strategy": self.strategy, "trainable_blocks": self.trainable_blocks,
                "recon_weight": self.recon_weight, **self.imbalance.describe()}
