"""Heads on top of an `Encoder`: pooled scalar outputs and a light reconstruction decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrssl.models.backbones import Encoder


class FeatureStandardizer(nn.BatchNorm1d):
    """Per-feature standardisation of pooled features (BatchNorm without affine, as in MAE/MoCo v3
    linear probing). Why: a frozen encoder's pooled features can vary by ~0.01 around means of ~0.5
    per channel; a linear head trained by gradient descent on them is so badly conditioned that it
    stays far from the logistic-regression optimum within any usual step budget, while
    `cxrssl probe` (StandardScaler + LogisticRegression) solves the standardised problem. In eval
    mode it is a fixed affine map (running statistics of the training features)."""

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=1e-6, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:  # a last batch of one image has no batch statistics
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class PooledHead(nn.Module):
    """Global average pool → [standardise] → dropout → linear. One output is squeezed to shape (B,).
    `standardize=True` (the linear fine-tuning strategy) adds a `FeatureStandardizer` as `norm`."""

    def __init__(self, in_channels: int, num_outputs: int = 1, dropout: float = 0.0, standardize: bool = False):
        super().__init__()
        self.norm = FeatureStandardizer(in_channels) if standardize else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_outputs)
        self.num_outputs = num_outputs

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.float().mean(dim=(2, 3)) if features.dtype == torch.float16 else features.mean(dim=(2, 3))
        if self.norm is not None:
            pooled = self.norm(pooled.float())
        out = self.fc(self.dropout(pooled))
        return out.squeeze(1) if self.num_outputs == 1 else out


class Classifier(nn.Module):
    """Encoder + pooled head: `forward(images) -> logits (B,)`. Evaluate and explain use this."""

    def __init__(self, encoder: Encoder, num_outputs: int = 1, dropout: float = 0.0, standardize: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = PooledHead(encoder.out_channels, num_outputs, dropout, standardize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


class Decoder(nn.Module):
    """Upsamples the deepest feature map back to the input size (no skip connections: the
    encoder itself must carry the image, which is what makes reconstruction a pretext task)."""

    def __init__(self, in_channels: int, reduction: int, width: int = 64):
        super().__init__()
        steps = max(int(reduction).bit_length() - 1, 1)  # reduction 32 → 5 doublings
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width * 2, 1)]
        channels = width * 2
        for i in range(steps):
            nxt = max(width // (2 ** max(i - 1, 0)), 16)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(channels, nxt, 3, padding=1), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            channels = nxt
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.net(features)
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(out)  # images live in [0, 1]
