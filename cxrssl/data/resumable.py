"""A training sampler whose order is a pure function of (seed, epoch), startable mid-epoch.

Mid-epoch recovery resumes at a batch cursor by starting the epoch's index list at
`cursor × batch_size` (`set_start`): the batches before it are never loaded — no replay and no
skipping through the DataLoader. The order never depends on a generator's history (torch's
DataLoader also draws its worker base seed from the loader's generator, which made a resumed run's
shuffle differ from an uninterrupted one's when both shared the generator).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    return int(seed) * 100003 + int(epoch)


class ResumableSampler(Sampler[int]):
    """`base` None = a fresh permutation of `length` items per epoch; else a sampler with
    `set_epoch` (the imbalance samplers) or a `generator` (re-seeded per epoch) is wrapped."""

    def __init__(self, base: Sampler | None, length: int, seed: int = 0):
        self.base, self.length, self.seed = base, int(length), int(seed)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of the next iteration only (then back to 0)."""
        self.start = int(start)

    def order(self) -> list[int]:
        """The full index order of the current epoch."""
        if self.base is None:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            return torch.randperm(self.length, generator=g).tolist()
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(self.epoch)
        elif getattr(self.base, "generator", None) is not None:
            self.base.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        return list(self.base)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        order = self.order()
        self.epoch += 1  # iterating again without set_epoch (plain use of the loader) reshuffles
        return iter(order[start:])

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.length
