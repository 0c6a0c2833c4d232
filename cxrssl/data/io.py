"""Decode one image file (PNG 8/16-bit, RGB/RGBA, JPEG, DICOM) into a 2-D float32 array in [0, 1].

Every source funnels through ``read_image`` so that what the model sees does not depend on how a
publisher chose to store pixels. Corrupt, truncated or missing files raise ``ImageReadError``
naming the file, never a silent grey image.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
#: Bit depths a 16-bit container may really hold (12-bit CR/DR is common); the smallest that fits
#: the image's maximum sets the scale, so a 12-bit PNG does not come out 16× too dark.
_UINT16_DEPTHS = (10, 12, 14, 16)


class ImageReadError(OSError):
    """An image file could not be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as a 2-D float32 array in [0, 1] (grayscale; colour and alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist (check data.root and the CSV path column)")
    if path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path):
        return _read_dicom(path)
    return _read_raster(path)


def quick_check(path: str | os.PathLike) -> str | None:
    """Cheap integrity check without decoding (two small reads): the reason a file is unusable
    (missing, empty, truncated PNG/JPEG), or None. Lets sources reject bad rows up front."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "file is empty"
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(max(0, size - 64))
            tail = handle.read(64)
    except OSError as error:
        return f"file not readable ({error.strerror or error})"
    try:
        _check_complete(Path(path), np.frombuffer(head + tail, np.uint8), head=head, tail=tail)
    except ImageReadError as error:
        return error.reason
    return None


def read_image_uint8(path: str | os.PathLike) -> np.ndarray:
    """``read_image`` rounded to uint8: what equalisation and the cache work on."""
    return to_uint8(read_image(path))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _read_raster(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(path, "file is empty")
    _check_complete(path, data)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt, truncated or unsupported format)")
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(image.shape[2])
        image = image[..., 0] if code is None else cv2.cvtColor(image, code)
    return _scale_to_unit(path, image)


def _check_complete(path: Path, data: np.ndarray, head: bytes | None = None,
                    tail: bytes | None = None) -> None:
    """Decoders often return a half-grey image for a truncated file; refuse it instead."""
    head = data[:8].tobytes() if head is None else head
    tail = data[-64:].tobytes() if tail is None else tail
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise ImageReadError(path, "truncated PNG (no IEND chunk)")
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail.rstrip(b"\x00"):
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")


def _scale_to_unit(path: Path, image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        peak = int(image.max())
        depth = next(d for d in _UINT16_DEPTHS if peak <= 2**d - 1)
        return image.astype(np.float32) / float(2**depth - 1)
    if np.issubdtype(image.dtype, np.floating):
        return _minmax(image)
    raise ImageReadError(path, f"unsupported pixel type {image.dtype}")


def _minmax(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    lo, hi = float(np.min(image)), float(np.max(image))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("non-finite pixel values")
    return np.zeros_like(image) if hi <= lo else (image - lo) / (hi - lo)


def _has_dicom_preamble(path: Path) -> bool:
    if path.suffix.lower() in (".png", *_JPEG_SUFFIXES):
        return False
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_dicom(path: Path) -> np.ndarray:
    """Modality LUT (rescale slope/intercept), then VOI LUT or windowing, then MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for broken files
        raise ImageReadError(path, f"invalid DICOM ({type(error).__name__}: {error})") from error
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) > 1:
        raise ImageReadError(path, "colour DICOM is not a chest radiograph this tool supports")
    if pixels.ndim != 2:
        raise ImageReadError(path, f"expected one 2-D frame, got pixel array of shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    try:
        if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
            low, high = _voi_output_range(ds)
            values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
            image = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0).astype(np.float32)
        else:
            image = _minmax(values)
    except ValueError as error:
        raise ImageReadError(path, f"bad VOI/pixel data ({error})") from error
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        image = 1.0 - image
    return image


def _voi_output_range(ds) -> tuple[float, float]:
    """The range a VOI LUT or window maps into (DICOM PS3.3 C.11.2), so windowing is kept as the
    modality intended instead of being undone by a per-image min-max."""
    if "VOILUTSequence" in ds:
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(getattr(ds, "PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        low, high = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)
