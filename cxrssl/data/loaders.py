"""Metadata table → split tables → DataLoaders, reproducibly.

``prepare_table`` is what every command calls first (source + patient-level splits); the label
fraction is applied later by fine-tuning (``splits.label_subset``). ``build_dataloaders`` seeds the
shuffling generator and every worker's augmentation so a run is repeatable for a given seed.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from cxrssl.data import workers as _workers  # noqa: F401 — registers the exit-time worker shutdown
from cxrssl.data.dataset import CXRDataset
from cxrssl.data.resumable import ResumableSampler
from cxrssl.data.io import ImageReadError
from cxrssl.data.schema import MetadataError
from cxrssl.data.sources import load_table
from cxrssl.data.splits import assign_splits, check_no_leakage, split_table_artifact
from cxrssl.common import cfg_get as _get


def prepare_table(data_cfg: Any) -> pd.DataFrame:
    """``load_table`` + patient-level ``assign_splits`` (official splits kept) + leakage check."""
    table = load_table(data_cfg)
    attrs = dict(table.attrs)
    table = assign_splits(table, float(_get(data_cfg, "val_fraction", 0.1)),
                          float(_get(data_cfg, "test_fraction", 0.1)),
                          int(_get(data_cfg, "split_seed", 0)))
    check_no_leakage(table)
    table.attrs.update(attrs)
    return table


def write_data_reports(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``splits.csv`` (image, patient, split) and ``skipped_rows.csv`` (every row left out by
    ``data.on_error=skip``, with file, CSV row, path and reason); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"splits": out_dir / "splits.csv", "skipped": out_dir / "skipped_rows.csv"}
    split_table_artifact(table).to_csv(paths["splits"], index=False)
    skipped = pd.DataFrame(table.attrs.get("skipped", []), columns=["file", "row", "path", "reason"])
    skipped.to_csv(paths["skipped"], index=False)
    return paths


def data_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts for ``summary.json``: images per split, skipped rows, implausible ages, ..."""
    counts = dict(table.attrs.get("counts", {}))
    counts["rows_skipped"] = len(table.attrs.get("skipped", []))
    for split, size in table["split"].value_counts().items():
        counts[f"images_{split}"] = int(size)
    counts["patients"] = int(table["patient_id"].nunique())
    return counts


def _drop_undecodable(table: pd.DataFrame, failures: list[dict], on_error: str) -> pd.DataFrame:
    """Apply ``data.on_error`` to images the cache build could not decode. In skip mode the rows
    are appended to the caller's ``table.attrs["skipped"]`` (the report ``write_data_reports``
    writes) and left out of the loaders."""
    if not failures:
        return table
    if on_error != "skip":
        lines = [f"  {f['path']} (image_id {f['image_id']}, CSV row {f['row']}): {f['reason']}"
                 for f in failures[:10]]
        raise ImageReadError(failures[0]["path"], f"{len(failures)} image(s) cannot be decoded:\n"
                             + "\n".join(lines) + "\nFix or remove them, or set data.on_error=skip")
    origin = table.attrs.get("source", "table")
    table.attrs["skipped"] = list(table.attrs.get("skipped", [])) + [
        {"file": origin, "row": f["row"], "path": f["path"], "reason": f["reason"]} for f in failures]
    bad = {f["image_id"] for f in failures}
    return table[~table["image_id"].astype(str).isin(bad)]


def _seed_worker(worker_id: int) -> None:
    """Each worker: distinct, reproducible seeds for numpy and random (the augmentation is re-seeded
    per sample by CXRDataset); preemption signals are left to the main process."""
    import signal

    for signum in (getattr(signal, name, None) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2")):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "set_seed"):
        info.dataset.set_seed(seed)


def _pin_memory(data_cfg: Any) -> bool:
    value = _get(data_cfg, "pin_memory", "auto")
    if isinstance(value, str) and value.lower() == "auto":
        return torch.cuda.is_available()
    return bool(value)


def build_dataloaders(data_cfg: Any, table: pd.DataFrame, seed: int,
                      splits: Sequence[str] = ("train", "val", "test"),
                      train_sampler: Sampler | Callable[[pd.DataFrame], Sampler | None] | None = None,
                      with_masks: bool = False,
                      strong_augment_positives: bool = False,
                      train_splits: Collection[str] = ("train",)) -> dict[str, DataLoader]:
    """One DataLoader per requested split that has rows. A split in `train_splits` is loaded FOR
    TRAINING: augmented (uint8 unaugmented with data.gpu_augment), shuffled (unless a sampler is
    given), and it drops an incomplete last batch when it has more than one batch. Every other split
    is loaded as for inference: every row once, in table order, unaugmented. Inference on the
    training images (evaluate/explain/predict data.split=train) passes ``train_splits=()`` — the
    split's NAME says where the rows came from, not what the loader is for. `train_sampler` may be a
    function of the final training rows (after undecodable images were skipped), so that sampler
    indices always match the dataset."""
    batch_size = int(_get(data_cfg, "batch_size", 32))
    num_workers = int(_get(data_cfg, "num_workers", 0))
    cache = None
    if bool(_get(_get(data_cfg, "cache", {}), "enabled", False)):
        from cxrssl.data.cache import cache_root, open_cache
        from cxrssl.data.writable import check_writable

        check_writable(cache_root(data_cfg), "the image cache folder",
                       "set data.cache.dir (or $CXRSSL_CACHE) to a writable folder, or data.cache.enabled=false")
        cache = open_cache(table[table["split"].isin(list(splits))], data_cfg)
        table = _drop_undecodable(table, cache.failures, str(_get(data_cfg, "on_error", "raise")))
    loaders: dict[str, DataLoader] = {}
    for index, split in enumerate(splits):
        rows = table[table["split"] == split]
        if rows.empty:
            continue
        train = split in train_splits
        dataset = CXRDataset(rows, data_cfg, train=train, with_masks=with_masks, cache=cache,
                             seed=seed + index, strong_augment_positives=train and strong_augment_positives)
        generator = torch.Generator().manual_seed(seed + index)
        sampler = None
        if train and train_sampler is not None:
            sampler = train_sampler if isinstance(train_sampler, Sampler) else train_sampler(dataset.table)
        epoch_size = len(sampler) if sampler is not None else len(dataset)
        if train:  # order = f(seed, epoch); mid-epoch recovery starts it at a batch offset
            sampler = ResumableSampler(sampler, len(dataset), seed + index)
        loaders[split] = DataLoader(
            dataset, batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            drop_last=train and epoch_size > batch_size,
            num_workers=num_workers, pin_memory=_pin_memory(data_cfg),
            persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
            generator=generator)
    if any(len(loaders[split]) == 0 for split in train_splits if split in loaders):
        raise MetadataError("the training split yields no batch (too few images for data.batch_size="
                            f"{batch_size} after sampling); lower data.batch_size or use more data")
    if not loaders:
        raise MetadataError(f"no rows in any of the splits {list(splits)}; table splits: "
                            f"{table['split'].value_counts(dropna=False).to_dict()}")
    return loaders
