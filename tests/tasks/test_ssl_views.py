"""Multi-view transforms: deterministic from (seed, epoch, index), right sizes, no flip by default."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cxrssl.data.views import MultiViewTransform, with_views


def heart_left_image(size: int = 64) -> np.ndarray:
    """Bright blob on the image's right half (the patient's left), dark elsewhere."""
    img = np.full((size, size), 30, np.uint8)
    img[size // 4: 3 * size // 4, size // 2 + 4: size - 6] = 220
    return img


def test_views_are_deterministic_per_seed_epoch_index_and_sized():
    t = MultiViewTransform({"n_global": 2, "n_local": 3, "local_size": 0.5}, image_size=64, seed=3)
    image = heart_left_image()
    a = t(image, index=5, epoch=1)
    assert [tuple(v.shape) for v in a] == [(1, 64, 64)] * 2 + [(1, 32, 32)] * 3
    assert all(v.dtype == torch.float32 and 0 <= float(v.min()) and float(v.max()) <= 1 for v in a)
    b = t(image, index=5, epoch=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])                      # two different global views
    assert not torch.equal(a[0], t(image, 5, epoch=2)[0])   # new views next epoch
    assert not torch.equal(a[0], t(image, 6, epoch=1)[0])   # and per image
    other = MultiViewTransform({"n_global": 2, "n_local": 3, "local_size": 0.5}, image_size=64, seed=4)
    assert not torch.equal(a[0], other(image, 5, epoch=1)[0])


def test_no_horizontal_flip_by_default():
    image = heart_left_image()
    for flip, expect_all_right in ((False, True), (True, False)):
        t = MultiViewTransform({"hflip": flip, "global_scale": [0.9, 1.0], "rotate_limit": 5}, 64, seed=0)
        right_heavy = []
        for index in range(30):
            for view in t(image, index):
                right_heavy.append(float(view[0, :, 32:].mean()) > float(view[0, :, :32].mean()))
        assert all(right_heavy) == expect_all_right


def test_bad_view_settings_name_the_key():
    with pytest.raises(ValueError, match="unknown key.*colour_jitter"):
        MultiViewTransform({"colour_jitter": 0.4}, 64)
    with pytest.raises(ValueError, match="global_scale"):
        MultiViewTransform({"global_scale": [0.0, 1.0]}, 64)
    with pytest.raises(ValueError, match="two views"):
        MultiViewTransform({"n_global": 1, "n_local": 0}, 64)


class _Base(Dataset):
    def __len__(self):
        return 6

    def _image(self, index):
        return heart_left_image() // (index + 1)

    def __getitem__(self, index):
        return {"image": torch.from_numpy(self._image(index)).float()[None] / 255, "sex": torch.tensor(1.0)}


def test_with_views_keeps_the_loader_and_changes_views_with_the_epoch():
    loaders = {"train": DataLoader(_Base(), batch_size=3, drop_last=True),
               "val": DataLoader(_Base(), batch_size=3)}
    wrapped = with_views(loaders, {"n_global": 2}, image_size=64, seed=0)
    train = wrapped["train"]
    assert train.batch_size == 3 and len(train) == 2
    train.dataset.set_epoch(0)
    first = next(iter(train))
    assert [tuple(v.shape) for v in first["views"]] == [(3, 1, 64, 64)] * 2 and first["image"].shape[0] == 3
    train.dataset.set_epoch(0)
    again = next(iter(train))
    assert torch.equal(first["views"][0], again["views"][0])  # same epoch: same views
    train.dataset.set_epoch(1)
    later = next(iter(train))
    assert not torch.equal(first["views"][0], later["views"][0])
    val = [next(iter(wrapped["val"]))["views"][0] for _ in range(2)]
    wrapped["val"].dataset.set_epoch(4)  # validation views stay fixed
    assert torch.equal(val[0], val[1]) and torch.equal(val[0], next(iter(wrapped["val"]))["views"][0])
