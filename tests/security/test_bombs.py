"""Decompression bombs: header dimensions are checked against data.max_pixels before decoding, and
DICOM goes to uint8 without a full-size float copy. Memory is measured in a fresh subprocess
(peak RSS after the read minus peak RSS before it)."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cxrssl.data import io
from tests.security.bombs import dicom_bomb, png_bomb

MEASURE = """
import json, resource, sys, time
from cxrssl.data import io
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    image = io.read_image_uint8(sys.argv[1], max_pixels=int(sys.argv[2]))
    out = {"shape": list(image.shape), "dtype": str(image.dtype)}
except io.ImageReadError as error:
    out = {"error": str(error)}
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
out["seconds"] = time.perf_counter() - start
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    return png_bomb(folder / "bomb.png"), dicom_bomb(folder / "bomb.dcm")


def _measure(path, max_pixels: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(max_pixels)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_png_bomb_is_refused_from_its_header(bombs):
    png, _ = bombs
    assert png.stat().st_size < 300_000
    result = _measure(png, io.DEFAULT_MAX_PIXELS)
    assert "16000x16000 = 256,000,000 pixels, above data.max_pixels=50,000,000" in result["error"]
    assert result["peak_mb"] < 30 and result["seconds"] < 5, result  # was 2.97 GB


def test_dicom_bomb_is_refused_above_the_limit_and_decoded_in_bounded_memory_below(bombs):
    _, dcm = bombs
    assert dcm.stat().st_size < 200_000
    refused = _measure(dcm, 10_000_000)
    assert "6000x6000 = 36,000,000 pixels, above data.max_pixels=10,000,000" in refused["error"]
    assert refused["peak_mb"] < 150, refused
    decoded = _measure(dcm, io.DEFAULT_MAX_PIXELS)  # 36 MP is a legal size: decoded, to uint8
    assert decoded["shape"] == [6000, 6000] and decoded["dtype"] == "uint8"
    assert decoded["peak_mb"] < 300, decoded  # was 823 MB (float64 of the full image)


def test_limit_comes_from_the_data_config_and_reaches_the_cache_builder(tmp_path):
    import pandas as pd

    from cxrssl.data.cache import open_cache

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.full((40, 50), 7, np.uint8))
    table = pd.DataFrame({"image_id": ["a"], "path": [str(path)]})
    data_cfg = {"image_size": 16, "resize_mode": "stretch", "cache": {"dir": str(tmp_path / "c1"), "workers": 1,
                                                                       "progress": False}}
    try:
        assert io.configure_limits({"max_pixels": 1999}) == 1999
        cache = open_cache(table, data_cfg, source="t")
        assert "a" not in cache and "50x40 = 2,000 pixels, above data.max_pixels=1,999" in cache.failures[0]["reason"]
        io.configure_limits({"max_pixels": 2000})
        data_cfg["cache"]["dir"] = str(tmp_path / "c2")
        assert open_cache(table, data_cfg, source="t").get("a").shape == (16, 16)
    finally:
        io.configure_limits({})
    assert io._LIMITS["max_pixels"] == io.DEFAULT_MAX_PIXELS


def test_sixteen_bit_png_goes_to_uint8_like_the_float_path(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 4096).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "r.png"), ramp)
    expected = io.to_uint8(io.read_image(tmp_path / "r.png"))
    assert np.abs(io.read_image_uint8(tmp_path / "r.png").astype(int) - expected).max() <= 1
