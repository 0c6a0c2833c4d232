from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import WeightedRandomSampler

from cxrssl.data.loaders import build_dataloaders, data_summary, prepare_table, write_data_reports
from cxrssl.data.schema import MetadataError


def data_cfg(root: Path, **over):
    base = {"source": "csv", "root": str(root), "csv": "metadata.csv", "columns": None,
            "image_size": 16, "batch_size": 4, "num_workers": 0, "val_fraction": 0.2,
            "test_fraction": 0.2, "split_seed": 0, "label_fraction": 1.0, "equalize": "none",
            "resize_mode": "letterbox", "augment": {"enabled": True}, "cache": {"enabled": False},
            "on_error": "raise", "pin_memory": "auto"}
    base.update(over)
    return OmegaConf.create(base)


def test_prepare_table_and_reports(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=20)
    table = prepare_table(data_cfg(tmp_path / "ds"))
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    summary = data_summary(table)
    assert summary["images_train"] + summary["images_val"] + summary["images_test"] == 40
    assert summary["rows_skipped"] == 0 and summary["patients"] == 20
    paths = write_data_reports(table, tmp_path / "out")
    assert paths["splits"].read_text().startswith("image_id,patient_id,split")
    assert paths["skipped"].read_text().strip() == "file,row,path,reason"


def _order(loader):
    return [i for batch in loader for i in batch["image_id"]]


def test_loaders_batches_shuffle_and_determinism(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=20)
    cfg = data_cfg(tmp_path / "ds")
    table = prepare_table(cfg)
    loaders = build_dataloaders(cfg, table, seed=5)
    assert set(loaders) == {"train", "val", "test"}
    train = loaders["train"]
    assert train.drop_last and not loaders["val"].drop_last
    first, second = _order(train), _order(train)
    batch = next(iter(train))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["age"].shape == (4,)
    assert isinstance(batch["view"], list) and len(batch["image_id"]) == 4
    assert first != second  # reshuffled each epoch
    again = build_dataloaders(cfg, table, seed=5)["train"]
    assert _order(again) == first
    images_a = next(iter(build_dataloaders(cfg, table, seed=5)["train"]))["image"]
    images_b = next(iter(build_dataloaders(cfg, table, seed=5)["train"]))["image"]
    assert torch.equal(images_a, images_b)  # augmentation seeded too
    val_ids = set(table.loc[table["split"] == "val", "image_id"])
    assert _order(loaders["val"]) == _order(loaders["val"]) and set(_order(loaders["val"])) == val_ids


def test_workers_are_seeded(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=10)
    cfg = data_cfg(tmp_path / "ds", num_workers=2, val_fraction=0.0, test_fraction=0.0)
    table = prepare_table(cfg)
    runs = [torch.cat([b["image"] for b in build_dataloaders(cfg, table, seed=1, splits=("train",))
                       ["train"]]) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    loader = build_dataloaders(cfg, table, seed=1, splits=("train",))["train"]
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()


def test_sampler_and_missing_splits(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=10)
    cfg = data_cfg(tmp_path / "ds")
    table = prepare_table(cfg)
    n_train = int((table["split"] == "train").sum())
    sampler = WeightedRandomSampler([1.0] * n_train, num_samples=8, generator=torch.Generator().manual_seed(0))
    loaders = build_dataloaders(cfg, table, seed=0, splits=("train",), train_sampler=sampler)
    assert set(loaders) == {"train"} and len(_order(loaders["train"])) == 8
    with pytest.raises(MetadataError, match="no rows"):
        build_dataloaders(cfg, table.assign(split="train"), seed=0, splits=("test",))
