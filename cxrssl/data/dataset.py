"""``CXRDataset``: metadata table rows → the sample dict of docs/design.md §2, whatever the source.

Images come either from the preprocessed uint8 cache (decoded and resized once) or are decoded and
preprocessed on the fly; both give the same pixels. The geometric augmentation is applied to the
image and its heart mask together, the mask with nearest-neighbour interpolation.

With ``data.gpu_augment=true`` a TRAINING dataset returns the preprocessed uint8 image unaugmented,
as a uint8 1×H×W tensor: the augmentation then runs on the device on whole batches
(``cxrssl/data/gpu_augment.py``), and a quarter of the bytes cross pinned memory.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrssl.data.gpu_augment import gpu_augment_enabled
from cxrssl.data.io import ImageReadError, read_image, read_image_uint8
from cxrssl.data.schema import sex_to_float, validate_table
from cxrssl.data.transforms import build_augment, build_preprocess, preprocess_settings, reseed


def _cache_enabled(data_cfg: Any) -> bool:
    cache_cfg = data_cfg.get("cache") if hasattr(data_cfg, "get") else None
    return bool(cache_cfg.get("enabled", False)) if cache_cfg is not None else False


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one training sample of one epoch (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)]).generate_state(1)[0])


class CXRDataset(Dataset):
    """One item per table row. ``cache``: an opened ``cxrssl.data.cache.ImageCache`` to read from;
    when None and ``data.cache.enabled``, the cache for ``table`` is opened (built if needed)."""

    def __init__(self, table: pd.DataFrame, data_cfg: Any, train: bool, with_masks: bool = False,
                 cache: Any | None = None, seed: int = 0, strong_augment_positives: bool = False):
        self.table = validate_table(table, "CXRDataset table").reset_index(drop=True)
        self.data_cfg, self.train, self.with_masks = data_cfg, train, with_masks
        self.image_size = preprocess_settings(data_cfg)["image_size"]
        if cache is None and _cache_enabled(data_cfg):
            from cxrssl.data.cache import open_cache

            cache = open_cache(self.table, data_cfg)
        self.cache = cache
        self.preprocess = build_preprocess(data_cfg)
        self.seed = int(seed)
        # Train + data.gpu_augment: uint8, unaugmented; the trainer's batch_transform augments on the device.
        self.raw_uint8 = train and gpu_augment_enabled(data_cfg)
        if self.raw_uint8 and with_masks:
            raise ValueError("CXRDataset: data.gpu_augment=true augments images on the device but not masks; "
                             "a training dataset with masks needs data.gpu_augment=false")
        # The epoch lives in shared memory so persistent DataLoader workers see `set_epoch` too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.augment = build_augment(data_cfg, train, seed=seed)
        # Oversampling repeats positives; augmenting them twice as hard makes the repeats differ.
        self.positive_augment = (build_augment(data_cfg, train, seed=seed + 1, strength=2.0)
                                 if train and strong_augment_positives else None)
        self._ages = self.table["age"].to_numpy(np.float32)
        self._labels = self.table["cardiomegaly"].to_numpy(np.float32)
        self._sexes = np.asarray([sex_to_float(s) for s in self.table["sex"]], dtype=np.float32)
        self._views = ["" if pd.isna(v) else str(v) for v in self.table["view"]]
        self._ids = self.table["image_id"].astype(str).tolist()
        self._patients = self.table["patient_id"].astype(str).tolist()
        self._paths = self.table["path"].astype(str).tolist()
        self._mask_paths = [None if pd.isna(m) else str(m) for m in self.table["mask_path"]]
        rows = self.table["source_row"] if "source_row" in self.table else [None] * len(self.table)
        self._source_rows = [None if pd.isna(r) else int(r) for r in rows]

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """The training loop calls this before each epoch (workers read it from shared memory)."""
        self._epoch.fill_(int(epoch))

    def set_seed(self, seed: int) -> None:
        """Re-seed the augmentation's own generators. Training samples are re-seeded per item anyway
        (`sample_seed`), so this only matters for code that calls the transforms directly."""
        self.augment.set_random_seed(seed)
        if self.positive_augment is not None:
            self.positive_augment.set_random_seed(seed + 1)

    def _load(self, index: int, path: str, reader=read_image_uint8) -> np.ndarray:
        try:
            return reader(path)
        except ImageReadError as error:
            row = self._source_rows[index]
            where = "" if row is None else f" (CSV row {row})"
            raise ImageReadError(path, f"{error.reason}; image_id {self._ids[index]}{where}") from error

    def _image(self, index: int) -> np.ndarray:
        if self.cache is not None and self._ids[index] in self.cache:
            return self.cache.get(self._ids[index])  # else: not decodable; reading says why
        return self.preprocess(image=self._load(index, self._paths[index]))["image"]

    def _mask(self, index: int) -> np.ndarray | None:
        path = self._mask_paths[index]
        if path is None:
            return None
        raw = (self._load(index, path, read_image) > 0).astype(np.uint8)
        return self.preprocess(image=np.zeros_like(raw), mask=raw)["mask"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        size = self.image_size
        image = self._image(index)
        if self.raw_uint8:
            return {"image": torch.from_numpy(np.ascontiguousarray(image)).reshape(1, size, size),
                    **self._fields(index)}
        mask = self._mask(index) if self.with_masks else None
        augment = self.positive_augment if self.positive_augment is not None and self._labels[index] == 1 \
            else self.augment
        if self.train:  # augmentation = f(seed, epoch, index): same with 0 or N workers, across restarts
            reseed(augment, sample_seed(self.seed, int(self._epoch), index))
        out = augment(image=image) if mask is None else augment(image=image, mask=mask)
        sample = {"image": out["image"].float().reshape(1, size, size), **self._fields(index)}
        if self.with_masks:
            sample["mask"] = (torch.full((1, size, size), float("nan")) if mask is None else
                              torch.as_tensor(out["mask"], dtype=torch.float32).reshape(1, size, size))
        return sample

    def _fields(self, index: int) -> dict[str, Any]:
        """Everything of a sample but the image (and mask)."""
        return {
            "age": torch.tensor(self._ages[index]),
            "sex": torch.tensor(self._sexes[index]),
            "cardiomegaly": torch.tensor(self._labels[index]),
            "view": self._views[index],
            "patient_id": self._patients[index],
            "image_id": self._ids[index],
        }
