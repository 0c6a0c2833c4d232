"""Per-epoch data preparation for the loop: epoch-seeded order and augmentation, mid-epoch start.

`prepare_epoch` tells the sampler and the dataset which epoch it is (the augmentation of sample i
in epoch e is a function of (seed, e, i) — `CXRDataset.set_epoch`) and, when resuming mid-epoch,
where to start. `resumable_loader` gives loaders built elsewhere (tests, scripts) the same
`ResumableSampler` that `cxrssl.data.loaders` builds in.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, RandomSampler

from cxrssl.data.resumable import ResumableSampler


def n_batches(loader, limit) -> int:
    n = len(loader)
    return min(n, int(limit)) if limit else n


def resumable_loader(loader, seed: int):
    """`loader` itself if its sampler can start mid-epoch, else a copy of it that can."""
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, ResumableSampler) \
            or loader.batch_size is None:
        return loader
    base = loader.sampler
    if isinstance(base, RandomSampler) and not base.replacement and base.num_samples == len(loader.dataset):
        base = None  # plain shuffle: our own (seed, epoch) permutation
    workers = loader.num_workers
    return DataLoader(loader.dataset, batch_size=loader.batch_size,
                      sampler=ResumableSampler(base, len(loader.dataset), seed), num_workers=workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context if workers else None,
                      # its own generator: the worker base seed must not come from the global RNG
                      generator=loader.generator or torch.Generator().manual_seed(seed), prefetch_factor=loader.prefetch_factor if workers else None,
                      persistent_workers=loader.persistent_workers and workers > 0)


def prepare_epoch(loader, epoch: int, seed: int, first_batch: int = 0) -> None:
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed * 100003 + epoch)
    if first_batch:
        if not hasattr(sampler, "set_start"):
            raise RuntimeError(f"cannot resume mid-epoch: the training loader's sampler {type(sampler).__name__} "
                               "cannot start at a batch offset")
        sampler.set_start(first_batch * loader.batch_size)
