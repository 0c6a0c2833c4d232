from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrssl.data.io import ImageReadError, read_image, read_image_uint8


@pytest.fixture
def gray() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random((30, 20)) * 255).astype(np.uint8)


def test_png_8bit_is_scaled_to_unit_float(tmp_path: Path, gray):
    cv2.imwrite(str(tmp_path / "a.png"), gray)
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == gray.shape
    np.testing.assert_allclose(image, gray / 255.0, atol=1e-6)
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "a.png"), gray)


@pytest.mark.parametrize("depth", [12, 16])
def test_png_16bit_scaled_by_its_bit_depth(tmp_path: Path, depth: int):
    peak = 2**depth - 1
    image16 = np.linspace(0, peak, 600).reshape(30, 20).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), image16)
    image = read_image(tmp_path / "b.png")
    assert image.max() == pytest.approx(1.0) and image.min() == 0.0
    np.testing.assert_allclose(image, image16 / peak, atol=1e-6)


@pytest.mark.parametrize("code", [cv2.COLOR_GRAY2BGR, cv2.COLOR_GRAY2BGRA])
def test_colour_png_becomes_grayscale(tmp_path: Path, gray, code):
    colour = cv2.cvtColor(gray, code)
    if colour.shape[2] == 4:
        colour[..., 3] = 7  # alpha must be ignored, not blended
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), gray / 255.0, atol=1 / 255 + 1e-6)


def test_jpeg_reads_close_to_source(tmp_path: Path, gray):
    smooth = cv2.GaussianBlur(gray, (5, 5), 0)
    cv2.imwrite(str(tmp_path / "d.jpg"), smooth, [cv2.IMWRITE_JPEG_QUALITY, 98])
    image = read_image(tmp_path / "d.jpg")
    assert image.shape == gray.shape
    assert np.abs(image - smooth / 255.0).mean() < 0.02


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_an_error_naming_it(tmp_path: Path, gray, suffix: str):
    cv2.imwrite(str(tmp_path / f"full{suffix}"), gray)
    data = (tmp_path / f"full{suffix}").read_bytes()
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(broken)
    assert info.value.path == str(broken)


def test_missing_empty_and_garbage_files(tmp_path: Path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 20)
    with pytest.raises(ImageReadError, match="not a decodable image"):
        read_image(tmp_path / "garbage.png")
