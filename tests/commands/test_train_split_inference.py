"""Inference on the TRAINING images is inference: `evaluate/explain data.split=train` and probes
must see every train row once, unaugmented, in table order — only loaders that train augment,
shuffle and drop the last incomplete batch (the split's name used to decide, so evaluating on the
train split scored augmented images and silently lost up to batch_size - 1 of them)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.commands.checkpoint_data import predict_split
from cxrssl.data.dataset import CXRDataset
from cxrssl.data.loaders import build_dataloaders
from cxrssl.data.views import with_views
from cxrssl.engine.precision import resolve_precision
from tests.data.conftest import make_csv_dataset

N_TRAIN, BATCH = 18, 4  # 18 % 4 != 0: a training loader drops 2 rows


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainsplit")
    rows = pd.read_csv(make_csv_dataset(root, n_patients=12, images_per_patient=2))
    rows["path"] = [str(root / p) for p in rows["path"]]
    for column in ("age", "cardiomegaly"):
        rows[column] = rows[column].astype(float)
    rows["mask_path"] = float("nan")
    rows["split"] = ["train"] * N_TRAIN + ["val"] * (len(rows) - N_TRAIN)
    return rows


def data_cfg(**extra):
    return OmegaConf.create({"image_size": 32, "batch_size": BATCH, "num_workers": 0, "cache": {"enabled": False},
                             "augment": {"p": 1.0, "rotate_limit": 15, "scale_limit": 0.1,
                                         "brightness_contrast": 0.2}, **extra})


class PixelScore(torch.nn.Module):
    """A fixed linear score of every pixel: any augmentation changes the prediction."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32 * 32, 1)
        torch.nn.init.normal_(self.fc.weight, std=0.03, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.fc(x.flatten(1)).squeeze(-1)


def unaugmented(rows, cfg) -> torch.Tensor:
    dataset = CXRDataset(rows, cfg, train=False)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def test_predict_split_on_train_scores_every_unaugmented_train_image(table):
    model, precision = PixelScore(), resolve_precision("cpu", "off")
    first, loader = predict_split(model, table, data_cfg(), "train", precision, seed=0)
    again, _ = predict_split(model, table, data_cfg(), "train", precision, seed=1)
    train = table[table["split"] == "train"]
    assert len(first) == N_TRAIN and len(loader.dataset) == N_TRAIN  # nothing dropped
    assert first["image_id"].tolist() == train["image_id"].astype(str).tolist()  # table order
    with torch.no_grad():
        expected = torch.sigmoid(model(unaugmented(train, data_cfg()))).numpy()
    assert first["probability"].to_numpy() == pytest.approx(expected, abs=1e-6)
    assert again["probability"].to_numpy() == pytest.approx(expected, abs=1e-6)  # seed-independent


def test_inference_loader_on_train_vs_training_loader(table):
    cfg = data_cfg()
    train = table[table["split"] == "train"]
    inference = build_dataloaders(cfg, table, seed=0, splits=("train",), train_splits=())["train"]
    batches = list(inference)
    assert not inference.drop_last and sum(len(b["image_id"]) for b in batches) == N_TRAIN
    assert torch.equal(torch.cat([b["image"] for b in batches]), unaugmented(train, cfg))
    # the training loader (the default, what fit uses) still augments, shuffles and drops the rest
    training = build_dataloaders(cfg, table, seed=0, splits=("train",))["train"]
    batches = list(training)
    ids = [i for b in batches for i in b["image_id"]]
    assert training.drop_last and len(ids) == N_TRAIN - N_TRAIN % BATCH
    assert ids != train["image_id"].astype(str).tolist()[:len(ids)]
    by_id = dict(zip(train["image_id"].astype(str), unaugmented(train, cfg)))
    images = torch.cat([b["image"] for b in batches])
    assert not any(torch.equal(images[k], by_id[i]) for k, i in enumerate(ids))


def test_gpu_augment_inference_on_train_gets_float_images(table):
    cfg = data_cfg(gpu_augment=True)
    inference = next(iter(build_dataloaders(cfg, table, seed=0, splits=("train",), train_splits=())["train"]))
    assert inference["image"].dtype == torch.float32  # preprocessed, ready for the model
    training = next(iter(build_dataloaders(cfg, table, seed=0, splits=("train",))["train"]))
    assert training["image"].dtype == torch.uint8  # the device augments it


def test_with_views_follows_the_loader_not_the_split_name(table):
    loaders = build_dataloaders(data_cfg(), table, seed=0, splits=("train", "val"), train_splits=("val",))
    wrapped = with_views(loaders, {"n_global": 2}, image_size=32, seed=0)
    assert wrapped["train"].dataset.fixed_epoch == 0 and not wrapped["train"].drop_last
    assert wrapped["val"].dataset.fixed_epoch is None
