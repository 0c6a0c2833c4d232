"""``CXRDataset``: metadata table rows → the sample dict of docs/design.md §2, whatever the source.

Images come either from the preprocessed uint8 cache (decoded and resized once) or are decoded and
preprocessed on the fly; both give the same pixels. The geometric augmentation is applied to the
image and its heart mask together, the mask with nearest-neighbour interpolation.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrssl.data.io import ImageReadError, read_image, read_image_uint8
from cxrssl.data.schema import sex_to_float, validate_table
from cxrssl.data.transforms import build_augment, build_preprocess, preprocess_settings


def _cache_enabled(data_cfg: Any) -> bool:
    cache_cfg = data_cfg.get("cache") if hasattr(data_cfg, "get") else None
    return bool(cache_cfg.get("enabled", False)) if cache_cfg is not None else False


class CXRDataset(Dataset):
    """One item per table row. ``cache``: an opened ``cxrssl.data.cache.ImageCache`` to read from;
    when None and ``data.cache.enabled``, the cache for ``table`` is opened (built if needed)."""

    def __init__(self, table: pd.DataFrame, data_cfg: Any, train: bool, with_masks: bool = False,
                 cache: Any | None = None, seed: int = 0):
        self.table = validate_table(table, "CXRDataset table").reset_index(drop=True)
        self.data_cfg, self.train, self.with_masks = data_cfg, train, with_masks
        self.image_size = preprocess_settings(data_cfg)["image_size"]
        if cache is None and _cache_enabled(data_cfg):
            from cxrssl.data.cache import open_cache

            cache = open_cache(self.table, data_cfg)
        self.cache = cache
        self.preprocess = build_preprocess(data_cfg)
        self.augment = build_augment(data_cfg, train, seed=seed)
        self._ages = self.table["age"].to_numpy(np.float32)
        self._labels = self.table["cardiomegaly"].to_numpy(np.float32)
        self._sexes = np.asarray([sex_to_float(s) for s in self.table["sex"]], dtype=np.float32)
        self._views = ["" if pd.isna(v) else str(v) for v in self.table["view"]]

    def __len__(self) -> int:
        return len(self.table)

    def set_seed(self, seed: int) -> None:
        """Re-seed the augmentation (called per DataLoader worker for reproducible epochs)."""
        self.augment.set_random_seed(seed)

    def _load(self, row: pd.Series, path: str, reader=read_image_uint8) -> np.ndarray:
        try:
            return reader(path)
        except ImageReadError as error:
            where = f" (CSV row {row['source_row']})" if "source_row" in row and pd.notna(
                row["source_row"]) else ""
            raise ImageReadError(path, f"{error.reason}; image_id {row['image_id']}{where}") from error

    def _image(self, index: int, row: pd.Series) -> np.ndarray:
        if self.cache is not None:
            return self.cache.get(row["image_id"])
        return self.preprocess(image=self._load(row, row["path"]))["image"]

    def _mask(self, row: pd.Series) -> np.ndarray | None:
        if pd.isna(row["mask_path"]):
            return None
        raw = (self._load(row, row["mask_path"], read_image) > 0).astype(np.uint8)
        blank = np.zeros_like(raw)
        return self.preprocess(image=blank, mask=raw)["mask"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.table.iloc[index]
        image = self._image(index, row)
        mask = self._mask(row) if self.with_masks else None
        if mask is not None:
            out = self.augment(image=image, mask=mask)
            mask_tensor = torch.as_tensor(out["mask"], dtype=torch.float32).reshape(
                1, self.image_size, self.image_size)
        else:
            out = self.augment(image=image)
            mask_tensor = torch.full((1, self.image_size, self.image_size), float("nan"))
        sample = {
            "image": out["image"].float().reshape(1, self.image_size, self.image_size),
            "age": torch.tensor(self._ages[index], dtype=torch.float32),
            "sex": torch.tensor(self._sexes[index], dtype=torch.float32),
            "cardiomegaly": torch.tensor(self._labels[index], dtype=torch.float32),
            "view": self._views[index],
            "patient_id": str(row["patient_id"]),
            "image_id": str(row["image_id"]),
        }
        if self.with_masks:
            sample["mask"] = mask_tensor
        return sample
