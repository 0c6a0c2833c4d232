"""Imbalance-aware samplers for the training split (`conf/imbalance/`).

Both redraw their choice each epoch from (seed, epoch) via `set_epoch`, which the loop calls, so
runs are reproducible and a resumed run sees the same batches.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _labels(labels: Sequence[float]) -> np.ndarray:
    arr = np.asarray(labels, dtype=float)
    if np.isnan(arr).any():
        raise ValueError("imbalance samplers need a label for every training row; drop NaN labels first")
    pos = int((arr == 1).sum())
    if pos == 0 or pos == len(arr):
        raise ValueError(f"imbalance sampling needs both classes in the training split; found {pos} positives "
                         f"among {len(arr)} rows")
    return arr


class OversampleSampler(Sampler[int]):
    """Draw with replacement so that positives make up `positive_fraction` of each epoch
    (torch's WeightedRandomSampler, re-seeded per epoch). Epoch length = the split's size."""

    def __init__(self, labels: Sequence[float], positive_fraction: float = 0.5, seed: int = 0,
                 num_samples: int | None = None):
        arr = _labels(labels)
        if not 0 < positive_fraction < 1:
            raise ValueError(f"imbalance.positive_fraction={positive_fraction}: must be in (0, 1)")
        pos = arr == 1
        self.weights = torch.as_tensor(np.where(pos, positive_fraction / pos.sum(),
                                                (1 - positive_fraction) / (~pos).sum()))
        self.num_samples = int(num_samples or len(arr))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        yield from torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist()

    def __len__(self) -> int:
        return self.num_samples


class UndersampleSampler(Sampler[int]):
    """All positives plus `ratio` × as many negatives, a fresh random subset every epoch."""

    def __init__(self, labels: Sequence[float], ratio: float = 1.0, seed: int = 0):
        arr = _labels(labels)
        self.positives = np.flatnonzero(arr == 1)
        self.negatives = np.flatnonzero(arr == 0)
        self.n_negatives = min(len(self.negatives), max(1, int(round(ratio * len(self.positives)))))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed * 100003 + self.epoch)
        chosen = np.concatenate([self.positives, rng.choice(self.negatives, self.n_negatives, replace=False)])
        yield from rng.permutation(chosen).tolist()

    def __len__(self) -> int:
        return len(self.positives) + self.n_negatives
