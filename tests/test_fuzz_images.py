"""Fuzzed image files (issue 8 item 9): random and truncated bytes given to the PNG/JPEG/DICOM readers.

Each input ends in exactly one of: a float32 2-D image in [0, 1], or an ``ImageReadError`` (a
UserError) whose message names the file. Never another exception, a hang (hypothesis deadline),
or a truncated file silently decoded as a (partly grey) image. Bounded examples: default suite.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrssl.data.io import ImageReadError, quick_check, read_image
from cxrssl.errors import UserError
from tests.data.test_dicom import write_dicom

FUZZ = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
SUFFIXES = (".png", ".jpg", ".dcm", ".jpeg", ".dicom")


def _valid(suffix: str) -> bytes:
    rng = np.random.default_rng(0)
    image = (rng.random((40, 32)) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        if suffix == ".dcm":
            write_dicom(path, image.astype(np.uint16) * 16, bits_stored=12)
        else:
            assert cv2.imwrite(str(path), image)
        return path.read_bytes()


VALID = {suffix: _valid(suffix) for suffix in (".png", ".jpg", ".dcm")}


def _outcome(path: Path) -> np.ndarray | None:
    """The decoded image, or None after checking the error is the typed one naming the file."""
    try:
        image = read_image(path)
    except ImageReadError as error:
        assert isinstance(error, UserError) and str(path) in str(error) and error.reason
        return None
    assert image.ndim == 2 and image.dtype == np.float32 and image.size > 0
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    return image


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"random{suffix}"
    path.write_bytes(data)
    _outcome(path)


@FUZZ
@given(data=st.binary(min_size=1, max_size=512), suffix=st.sampled_from((".png", ".jpg", ".dcm")))
def test_magic_header_then_garbage(tmp_path_factory, data, suffix):
    """A real header followed by garbage: the readers must not trust the header."""
    head = VALID[suffix][: {".png": 33, ".jpg": 20, ".dcm": 132}[suffix]]
    path = tmp_path_factory.mktemp("fuzz") / f"header{suffix}"
    path.write_bytes(head + data)
    _outcome(path)


@FUZZ
@given(suffix=st.sampled_from((".png", ".jpg", ".dcm")), cut=st.floats(0.0, 0.999))
def test_truncated_files_are_refused_not_silently_decoded(tmp_path_factory, suffix, cut):
    full = VALID[suffix]
    path = tmp_path_factory.mktemp("fuzz") / f"cut{suffix}"
    path.write_bytes(full[: int(len(full) * cut)])
    assert _outcome(path) is None, f"{suffix} cut at {int(len(full) * cut)}/{len(full)} bytes was decoded"
    if suffix != ".dcm" and int(len(full) * cut) >= 8:  # with its signature intact, PNG/JPEG truncation
        assert quick_check(path) is not None             # is seen without decoding


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".dcm"])
def test_intact_files_still_decode(tmp_path, suffix):
    path = tmp_path / f"ok{suffix}"
    path.write_bytes(VALID[suffix])
    image = _outcome(path)
    assert image is not None and image.shape == (40, 32)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       suffix=st.sampled_from((".png", ".jpg", ".dcm")))
def test_corrupted_bytes_inside_a_valid_file(tmp_path_factory, flips, suffix):
    data = bytearray(VALID[suffix])
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path_factory.mktemp("fuzz") / f"flip{suffix}"
    path.write_bytes(bytes(data))
    _outcome(path)
