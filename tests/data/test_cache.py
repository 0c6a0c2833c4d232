import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.data.cache import open_cache, store_dir
from cxrssl.data.dataset import CXRDataset
from cxrssl.data.io import ImageReadError
from cxrssl.data.loaders import build_dataloaders, prepare_table


def data_cfg(root: Path, cache_dir: Path, **over):
    base = {"source": "csv", "root": str(root), "csv": "metadata.csv", "image_size": 16,
            "batch_size": 4, "num_workers": 0, "val_fraction": 0.2, "test_fraction": 0.2,
            "split_seed": 0, "equalize": "none", "resize_mode": "letterbox",
            "augment": {"enabled": False}, "on_error": "raise",
            "cache": {"enabled": True, "dir": str(cache_dir), "workers": 1, "progress": False}}
    base.update(over)
    return OmegaConf.create(base)


def shards(cfg) -> list[Path]:
    return sorted(store_dir(cfg, "csv").glob("shard-*"))


@pytest.fixture
def setup(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=8)
    cfg = data_cfg(tmp_path / "ds", tmp_path / "cache")
    return cfg, prepare_table(cfg)


def test_cached_pixels_equal_decoded_pixels(setup):
    cfg, table = setup
    cached = CXRDataset(table, cfg, train=False)
    assert cached.cache is not None and len(shards(cfg)) == 1
    plain = CXRDataset(table, OmegaConf.merge(cfg, {"cache": {"enabled": False}}), train=False)
    for index in range(len(table)):
        assert torch.equal(cached[index]["image"], plain[index]["image"])


def test_reused_for_subsets_rebuilt_for_changes(setup):
    cfg, table = setup
    open_cache(table, cfg)
    first = shards(cfg)
    open_cache(table.iloc[:5], cfg)  # a subset (label fraction, one split) reuses the store
    assert shards(cfg) == first
    changed = Path(table.loc[0, "path"])
    image = np.full((48, 40), 17, np.uint8)
    import cv2
    cv2.imwrite(str(changed), image)
    os.utime(changed, ns=(1, 1))  # a different mtime/size is a different image
    cache = open_cache(table, cfg)
    [new] = set(shards(cfg)) - set(first)
    assert len(new.joinpath("index.csv").read_text().strip().splitlines()) == 2  # header + 1 image
    assert (cache.get(table.loc[0, "image_id"])[8, 8] == 17)
    for key, value in (("image_size", 20), ("resize_mode", "crop"), ("equalize", "hist")):
        other = OmegaConf.merge(cfg, {key: value})
        assert store_dir(other, "csv") != store_dir(cfg, "csv")
        assert open_cache(table.iloc[:2], other).get(table.iloc[0]["image_id"]).shape[0] == \
            other.image_size


def test_undecodable_images_raise_or_are_skipped(setup):
    cfg, table = setup
    bad = Path(table.loc[3, "path"])
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10 + b"IEND\xaeB`\x82")  # passes the quick check
    with pytest.raises(ImageReadError, match=rf"{table.loc[3, 'image_id']}.*CSV row"):
        build_dataloaders(cfg, table, seed=0)
    skip = OmegaConf.merge(cfg, {"on_error": "skip"})
    loaders = build_dataloaders(skip, table, seed=0)
    seen = [i for loader in loaders.values() for b in loader for i in b["image_id"]]
    assert table.loc[3, "image_id"] not in seen and len(seen) >= len(table) - 1 - 4
    [report] = table.attrs["skipped"]
    assert report["path"] == str(bad) and "decodable" in report["reason"]


_CHILD = """
import pickle, sys
from omegaconf import OmegaConf
from cxrssl.data.cache import open_cache
table = pickle.load(open(sys.argv[1], "rb"))
cache = open_cache(table, OmegaConf.load(sys.argv[2]))
print(int(cache.get(table.iloc[0]["image_id"]).sum()))
"""


def test_concurrent_builders_build_once(setup, tmp_path):
    # Two real processes (started fresh, not forked from this threaded test process).
    cfg, table = setup
    (tmp_path / "table.pkl").write_bytes(pickle.dumps(table))
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "table.pkl"), str(tmp_path / "cfg.yaml")],
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [int(child.communicate(timeout=180)[0].strip().splitlines()[-1]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert len(shards(cfg)) == 1 and results[0] == results[1]
    assert not list(store_dir(cfg, "csv").glob(".tmp-*"))
    cache = pickle.loads(pickle.dumps(open_cache(table, cfg)))  # workers get it pickled (spawn)
    assert cache._arrays == {} and cache.get(table.iloc[0]["image_id"]).sum() == results[0]


def test_parallel_build_matches_serial(tmp_path: Path, make_dataset):
    make_dataset(tmp_path / "ds", n_patients=70, images_per_patient=2)
    serial = data_cfg(tmp_path / "ds", tmp_path / "c1")
    parallel = data_cfg(tmp_path / "ds", tmp_path / "c2", cache={
        "enabled": True, "dir": str(tmp_path / "c2"), "workers": 2, "progress": False})
    table = prepare_table(serial)
    a, b = open_cache(table, serial), open_cache(table, parallel)
    for image_id in table["image_id"][::7]:
        np.testing.assert_array_equal(a.get(image_id), b.get(image_id))


def test_dataset_on_a_failed_cached_image_names_the_row(setup):
    cfg, table = setup
    Path(table.loc[1, "path"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 80 + b"IEND\xaeB`\x82")
    dataset = CXRDataset(table, cfg, train=False)
    assert table.loc[1, "image_id"] not in dataset.cache and len(dataset.cache.failures) == 1
    dataset[0]
    with pytest.raises(ImageReadError, match=rf"{table.loc[1, 'image_id']}.*CSV row 3"):
        dataset[1]
