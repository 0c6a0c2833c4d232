import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.data.dataset import CXRDataset
from cxrssl.data.io import ImageReadError
from cxrssl.data.sources.csv import load_csv_table

KEYS = {"image", "age", "sex", "cardiomegaly", "view", "patient_id", "image_id"}


def data_cfg(**over):
    base = {"image_size": 24, "resize_mode": "stretch", "equalize": "none",
            "augment": {"enabled": True, "rotate_limit": 20, "scale_limit": 0.15, "p": 1.0},
            "cache": {"enabled": False}}
    base.update(over)
    return OmegaConf.create(base)


def test_sample_dict_contract(csv_dataset: Path):
    table = load_csv_table(csv_dataset, csv_dataset.parent)
    table.loc[1, ["age", "sex", "view", "cardiomegaly"]] = [np.nan, np.nan, np.nan, np.nan]
    dataset = CXRDataset(table, data_cfg(), train=False)
    assert len(dataset) == len(table)
    first, second = dataset[0], dataset[1]
    assert set(first) == KEYS
    assert first["image"].shape == (1, 24, 24) and first["image"].dtype == torch.float32
    assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0
    assert first["age"].dtype == torch.float32 and first["age"].ndim == 0 and first["age"] == 20.0
    assert first["sex"] == 0.0 and first["cardiomegaly"] == 1.0 and first["view"] == "PA"
    assert first["patient_id"] == "P000" and first["image_id"] == "p000_0"
    assert math.isnan(second["age"]) and math.isnan(second["sex"])
    assert math.isnan(second["cardiomegaly"]) and second["view"] == ""
    assert dataset[3]["sex"] == 1.0


def test_masks_follow_the_image_geometry(tmp_path: Path, make_dataset):
    csv_path = make_dataset(tmp_path, n_patients=2, with_masks=True)
    table = load_csv_table(csv_path, tmp_path)
    table.loc[3, "mask_path"] = np.nan
    dataset = CXRDataset(table, data_cfg(augment={"rotate_limit": 30, "scale_limit": 0.2, "p": 1.0,
                                                  "brightness_contrast": 0}),
                         train=True, with_masks=True, seed=3)
    for index in range(3):
        sample = dataset[index]
        assert set(sample) == KEYS | {"mask"}
        mask, image = sample["mask"], sample["image"]
        assert mask.shape == (1, 24, 24) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() > 0
        # the bright 'heart' square moved with the mask: bright inside, dark outside
        assert image[mask == 1].mean() > 0.6 and image[mask == 0].mean() < 0.35
    assert torch.isnan(dataset[3]["mask"]).all()
    assert "mask" not in CXRDataset(table, data_cfg(), train=False)[0]


def test_read_error_names_image_and_csv_row(csv_dataset: Path):
    table = load_csv_table(csv_dataset, csv_dataset.parent)
    Path(table.loc[2, "path"]).write_bytes(b"broken")
    dataset = CXRDataset(table, data_cfg(), train=False)
    with pytest.raises(ImageReadError, match=r"p001_0.*CSV row 4"):
        dataset[2]
