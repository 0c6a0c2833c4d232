"""The cache builder's preprocessing settings: explicit, and all of them in the cache key (issue 8 item 8)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cxrssl.data.cache import _preprocess_stream, open_cache, store_dir
from cxrssl.data.io import read_image_uint8
from cxrssl.data.loaders import prepare_table
from cxrssl.data.transforms import build_preprocess, preprocess_settings
from tests.data.test_cache import data_cfg

BASE = {"image_size": 32, "equalize": "clahe", "resize_mode": "letterbox", "clahe_clip": 2.0}


@pytest.mark.parametrize("key,other", [("image_size", 48), ("equalize", "hist"), ("resize_mode", "crop"),
                                       ("clahe_clip", 4.0)])
def test_every_preprocessing_setting_changes_the_cache_key(tmp_path, key, other):
    cfg = OmegaConf.create({**BASE, "cache": {"dir": str(tmp_path)}})
    same = OmegaConf.create({**BASE, "cache": {"dir": str(tmp_path)}, "batch_size": 7, "num_workers": 3})
    changed = OmegaConf.create({**BASE, key: other, "cache": {"dir": str(tmp_path)}})
    assert store_dir(cfg, "csv") == store_dir(same, "csv")  # loader settings do not touch pixels
    assert store_dir(cfg, "csv") != store_dir(changed, "csv")
    assert set(preprocess_settings(cfg)) == {"image_size", "equalize", "resize_mode", "clahe_clip"}


def test_two_builds_with_different_settings_do_not_share_state(tmp_path, make_dataset):
    """Interleaved builds (as two threads or two caches in one process would run): each image gets
    its own build's settings. A module-level 'current settings' made the first build use the second's."""
    make_dataset(tmp_path / "ds", n_patients=3)
    paths = sorted(str(p) for p in (tmp_path / "ds" / "images").glob("*.png"))
    low = preprocess_settings({**BASE, "clahe_clip": 1.0})
    high = preprocess_settings({**BASE, "equalize": "hist", "resize_mode": "stretch"})
    first, second = _preprocess_stream(paths, low, 1), _preprocess_stream(paths, high, 1)
    for path in paths:
        a, b = next(first), next(second)
        image = read_image_uint8(path)
        np.testing.assert_array_equal(a[0], build_preprocess(low)(image=image)["image"])
        np.testing.assert_array_equal(b[0], build_preprocess(high)(image=image)["image"])
        assert not np.array_equal(a[0], b[0])


def test_clahe_clip_gets_its_own_store_and_pixels(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=4)
    one = data_cfg(tmp_path / "ds", tmp_path / "cache", equalize="clahe", clahe_clip=1.0, image_size=48)
    four = data_cfg(tmp_path / "ds", tmp_path / "cache", equalize="clahe", clahe_clip=40.0, image_size=48)
    table = prepare_table(one)
    cache_one, cache_four = open_cache(table, one), open_cache(table, four)
    assert cache_one.store != cache_four.store
    image_id = str(table["image_id"].iloc[0])
    assert not np.array_equal(cache_one.get(image_id), cache_four.get(image_id))
