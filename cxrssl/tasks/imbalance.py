"""The original work's imbalance strategies, as one object per `conf/imbalance/<name>.yaml`.

A strategy decides two things only: the training sampler and the classification loss.
`none` | `weighted` (pos_weight = negatives/positives unless given) | `oversample` |
`undersample` | `oversample_weighted` | `focal`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from cxrssl.data.samplers import OversampleSampler, UndersampleSampler

STRATEGIES = ("none", "weighted", "oversample", "undersample", "oversample_weighted", "focal")


@dataclass
class Imbalance:
    name: str
    pos_weight: float | None = None      # BCE weight of positives (None = unweighted)
    focal_gamma: float | None = None
    focal_alpha: float = -1.0            # torchvision convention: < 0 = no alpha weighting
    sampler: Sampler | None = None
    strong_augment_positives: bool = False

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.focal_gamma is not None:
            from torchvision.ops import sigmoid_focal_loss

            return sigmoid_focal_loss(logits, target, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                      reduction="mean")
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)

    def describe(self) -> dict:
        return {"imbalance": self.name, "pos_weight": self.pos_weight, "focal_gamma": self.focal_gamma,
                "sampler": type(self.sampler).__name__ if self.sampler is not None else "shuffle"}


def build_imbalance(cfg: Mapping, train_labels: Sequence[float], seed: int) -> Imbalance:
    """`train_labels` (0/1, in the training dataset's row order) give prevalence and sampler."""
    name = cfg["name"]
    if name not in STRATEGIES:
        raise ValueError(f"imbalance.name={name!r}: expected one of {STRATEGIES}")
    labels = np.asarray(train_labels, dtype=float)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    strategy = Imbalance(name)
    if name in ("weighted", "oversample_weighted"):
        given = cfg.get("pos_weight")
        if given is None and n_pos == 0:
            raise ValueError("imbalance=weighted needs positives in the training split to derive pos_weight")
        strategy.pos_weight = float(given) if given is not None else n_neg / n_pos
    if name in ("oversample", "oversample_weighted"):
        strategy.sampler = OversampleSampler(labels, float(cfg.get("positive_fraction", 0.5)), seed)
        strategy.strong_augment_positives = bool(cfg.get("strong_augment", False))
    if name == "undersample":
        strategy.sampler = UndersampleSampler(labels, float(cfg.get("ratio", 1.0)), seed)
    if name == "focal":
        strategy.focal_gamma = float(cfg.get("gamma", 2.0))
        strategy.focal_alpha = float(cfg.get("alpha", -1.0))
    return strategy
