"""Small on-disk datasets the data tests build themselves (nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def chest_like(rng: np.random.Generator, height: int = 48, width: int = 40) -> np.ndarray:
    """A uint8 image with a bright blob left of centre (an asymmetric 'heart')."""
    image = (rng.random((height, width)) * 60).astype(np.uint8)
    cy, cx = height // 2, width // 3
    image[cy - 6:cy + 6, cx - 5:cx + 5] = 220
    return image


def make_csv_dataset(root: Path, n_patients: int = 12, images_per_patient: int = 2,
                     seed: int = 0, with_masks: bool = False) -> Path:
    """Generic-CSV layout: root/images/<id>.png + root/metadata.csv; returns the CSV path."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(images_per_patient):
            image_id = f"p{p:03d}_{k}"
            image = chest_like(rng)
            write_png(root / "images" / f"{image_id}.png", image)
            row = {"image_id": image_id, "path": f"images/{image_id}.png", "patient_id": f"P{p:03d}",
                   "age": str(20 + 3 * p), "sex": "M" if p % 2 else "F",
                   "view": "PA" if k % 2 == 0 else "AP", "cardiomegaly": str(int(p % 4 == 0)),
                   "split": "", "ctr": f"{0.4 + 0.01 * p:.2f}"}
            if with_masks:
                write_png(root / "masks" / f"{image_id}.png", ((image > 200) * 255).astype(np.uint8))
                row["mask_path"] = f"masks/{image_id}.png"
            rows.append(row)
    csv_path = root / "metadata.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    return make_csv_dataset(tmp_path / "ds")


@pytest.fixture
def make_dataset():
    """Factory: ``make_dataset(root, n_patients=12, images_per_patient=2, seed=0, with_masks=False)``."""
    return make_csv_dataset
