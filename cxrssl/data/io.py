"""Decode one image file (PNG 8/16-bit, RGB/RGBA, JPEG, DICOM) into a 2-D float32 array in [0, 1].

Dimensions are read from the file header and refused above ``data.max_pixels`` (default 50 MP,
about twice the largest real chest radiograph) before anything is decoded: a 249 KB PNG may declare
16000² pixels and a 70 KB deflated DICOM 6000². ``read_image_uint8`` (what the cache and the
datasets use) converts to uint8 without a float copy of the full-size image.

Every source funnels through ``read_image`` so that what the model sees does not depend on how a
publisher chose to store pixels. Corrupt, truncated or missing files raise ``ImageReadError``
naming the file, never a silent grey image.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cxrssl.errors import UserError

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
#: Bit depths a 16-bit container may really hold (12-bit CR/DR is common); the smallest that fits
#: the image's maximum sets the scale, so a 12-bit PNG does not come out 16× too dark.
_UINT16_DEPTHS = (10, 12, 14, 16)


#: Default for ``data.max_pixels``: width × height × frames a file may declare.
DEFAULT_MAX_PIXELS = 50_000_000
_LIMITS = {"max_pixels": DEFAULT_MAX_PIXELS}
_DICOM_CHUNK_ROWS = 256


class ImageReadError(UserError, OSError):
    """An image file could not be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:  # one argument: re-raised by a DataLoader worker with the whole message
            self.path, self.reason = "", str(path)
            super().__init__(str(path))
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ImageTooLargeError(ImageReadError):
    """The header declares more pixels than ``data.max_pixels``; nothing was decoded."""


def configure_limits(data_cfg) -> int:
    """Apply ``data.max_pixels`` (process-wide, read by every decoder thread); returns it."""
    value = data_cfg.get("max_pixels") if hasattr(data_cfg, "get") else None
    limit = DEFAULT_MAX_PIXELS if value is None else int(value)
    if limit < 1:
        raise ImageReadError("data.max_pixels", f"must be a positive number of pixels, got {value}")
    _LIMITS["max_pixels"] = limit
    return limit


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read ``path`` as a 2-D float32 array in [0, 1] (grayscale; colour and alpha dropped)."""
    path, dicom = _checked(path, max_pixels)
    return _read_dicom(path) if dicom else _scale_to_unit(path, _decode_raster(path))


def _checked(path: str | os.PathLike, max_pixels: int | None) -> tuple[Path, bool]:
    """(path, is DICOM) after the existence and header-size checks."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist (check data.root and the CSV path column)")
    dicom = path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path)
    check_dimensions(path, max_pixels, dicom)
    return path, dicom


def image_dimensions(path: str | os.PathLike, dicom: bool | None = None) -> tuple[int, int, int]:
    """(width, height, frames) from the header only (PIL for rasters, pydicom without pixel data)."""
    path = Path(path)
    if dicom is None:
        dicom = path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path)
    if dicom:
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows), int(ds.get("NumberOfFrames") or 1)
        except Exception as error:
            raise ImageReadError(path, f"invalid DICOM header ({type(error).__name__}: {str(error)[:200]})") from error
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":  # width, height: bytes 16-24
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), 1
    from PIL import Image

    try:
        with Image.open(path) as image:  # parses the header; pixels are decoded only on load()
            return int(image.size[0]), int(image.size[1]), int(getattr(image, "n_frames", 1) or 1)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(path, f"header declares more than {Image.MAX_IMAGE_PIXELS:,} pixels, above "
                                       "data.max_pixels; not decoded") from error
    except Exception:  # a format PIL does not know: OpenCV may still; decode-time checks apply
        return 0, 0, 1


def check_dimensions(path: str | os.PathLike, max_pixels: int | None = None, dicom: bool | None = None) -> None:
    """Refuse a file whose header declares more than ``max_pixels`` (default: data.max_pixels)."""
    limit = _LIMITS["max_pixels"] if max_pixels is None else int(max_pixels)
    width, height, frames = image_dimensions(path, dicom)
    if width * height * frames > limit:
        raise ImageTooLargeError(path, f"header declares {width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
                                 + f" = {width * height * frames:,} pixels, above data.max_pixels={limit:,}; "
                                 "not decoded (raise data.max_pixels if this is a genuine image)")


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


def read_image_uint8(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """``read_image`` rounded to uint8 (what equalisation and the cache work on), computed without
    a float copy of the full-size image: OpenCV scales 16-bit rasters straight to uint8 and DICOM
    is converted a block of rows at a time."""
    path, dicom = _checked(path, max_pixels)
    if dicom:
        return _read_dicom(path, uint8=True)
    image = _decode_raster(path)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        depth = next(d for d in _UINT16_DEPTHS if int(image.max()) <= 2**d - 1)
        return cv2.convertScaleAbs(image, alpha=255.0 / float(2**depth - 1))
    return to_uint8(_scale_to_unit(path, image))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _decode_raster(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(path, "file is empty")
    _check_complete(path, data)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > _LIMITS["max_pixels"]:
        raise ImageTooLargeError(path, f"{image.shape[1]}x{image.shape[0]} pixels, above data.max_pixels="
                                       f"{_LIMITS['max_pixels']:,}")
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(image.shape[2])
        image = image[..., 0] if code is None else cv2.cvtColor(image, code)
    return image


def _check_complete(path: Path, data: np.ndarray, head: bytes | None = None,
                    tail: bytes | None = None) -> None:
    """Decoders often return a half-grey image for a truncated file; refuse it instead."""
    head = data[:8].tobytes() if head is None else head
    tail = data[-64:].tobytes() if tail is None else tail
    # IEND and its 4-byte CRC must both be there (a cut inside the CRC still shows "IEND").
    if head.startswith(b"\x89PNG") and (tail.rfind(b"IEND") < 0 or len(tail) - tail.rfind(b"IEND") < 8):
        raise ImageReadError(path, "truncated PNG (no complete IEND chunk)")
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


def _read_dicom(path: Path, uint8: bool = False) -> np.ndarray:
    """Modality LUT (rescale slope/intercept), then VOI LUT or windowing, then MONOCHROME1 inverted.

    Done a block of rows at a time, so the float64 intermediates never hold the full-size image."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for broken files
        raise ImageReadError(path, f"invalid DICOM ({type(error).__name__}: {str(error)[:300]})") from error
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) > 1:
        raise ImageReadError(path, "colour DICOM is not a chest radiograph this tool supports")
    if pixels.ndim != 2:
        raise ImageReadError(path, f"expected one 2-D frame, got pixel array of shape {pixels.shape}")
    blocks = [slice(i, i + _DICOM_CHUNK_ROWS) for i in range(0, pixels.shape[0], _DICOM_CHUNK_ROWS)]

    def modality(block: slice) -> np.ndarray:
        return np.asarray(apply_modality_lut(pixels[block], ds), dtype=np.float64)

    windowed = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    try:
        if windowed:
            low, high = _voi_output_range(ds)
        else:  # per-image min-max, found in a first pass over the blocks
            ranges = [(float(v.min()), float(v.max())) for v in map(modality, blocks)]
            low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
            if not np.isfinite(low) or not np.isfinite(high):
                raise ValueError("non-finite pixel values")
        invert = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1"
        out = np.empty(pixels.shape, np.uint8 if uint8 else np.float32)
        for block in blocks:
            values = modality(block)
            if windowed:
                values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
                unit = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
            else:
                unit = np.zeros_like(values) if high <= low else (values - low) / (high - low)
            if invert:
                unit = 1.0 - unit
            out[block] = to_uint8(unit) if uint8 else unit
    except ValueError as error:
        raise ImageReadError(path, f"bad VOI/pixel data ({error})") from error
    return out


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
