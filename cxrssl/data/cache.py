"""The preprocessed image cache: decode + resize once, then read uint8 pixels from a memory map.

Decoding a 2-3k-pixel PNG/JPEG/DICOM and resizing it costs tens of milliseconds; a training epoch
over 100k images would starve the GPU. The cache stores the output of
``transforms.build_preprocess`` (resize + equalise, uint8 ``image_size``²) once.

Layout: ``<data.cache.dir>/<source>-<settings hash>/shard-<hash>/{images.npy, index.csv, COMPLETE}``.
The store is keyed by source and preprocessing settings (image size, resize mode, equalisation,
CLAHE clip, cache version); inside it every image is keyed by its fingerprint (absolute path, mtime, inode, ctime,
size), so a changed file is decoded again and a table that is a subset of what was cached (a label
fraction, the test split) reuses it. Only missing images are built, into a new shard, streamed in
bounded chunks (optionally by several processes), written to a temporary folder and renamed into
place under a lock file, so two processes never build the same images and readers only ever see
complete shards. Images that fail to decode are recorded (``ok=0`` with the reason), not retried
until the file changes.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrssl.data.io import ImageReadError
from cxrssl.data.transforms import preprocess_settings
from cxrssl.common import cfg_get as _get

CACHE_VERSION = 1
MARKER = "COMPLETE"
CHUNK_PER_WORKER = 64


def cache_root(data_cfg: Any) -> Path:
    """``data.cache.dir``, else ``$CXRSSL_CACHE/preprocessed`` (default ``~/.cache/cxrssl``)."""
    configured = _get(_get(data_cfg, "cache"), "dir")
    if configured:
        return Path(str(configured)).expanduser()
    return Path(os.environ.get("CXRSSL_CACHE") or "~/.cache/cxrssl").expanduser() / "preprocessed"


def store_dir(data_cfg: Any, source: str) -> Path:
    settings = {**preprocess_settings(data_cfg), "version": CACHE_VERSION, "source": source}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(data_cfg) / f"{source}-{digest}"


def fingerprints(paths: Sequence[str]) -> list[str]:
    """``path|mtime_ns|size|inode|ctime_ns`` per file: the per-image cache key (a changed file is
    rebuilt). Inode and ctime catch a file replaced by a same-size one whose mtime was restored
    (``cp -p``, ``touch -r``, rsync): ctime cannot be set back from user space."""
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
            out.append(f"{path}|{stat.st_mtime_ns}|{stat.st_size}|{stat.st_ino}|{stat.st_ctime_ns}")
        except OSError:
            out.append(f"{path}|missing|0")
    return out


class ImageCache:
    """Read-only view of a store for one table: ``get(image_id) -> uint8 image_size²``.

    Memory maps are opened lazily per process (and dropped when pickled), so DataLoader workers
    and parallel jobs each map the same files read-only."""

    def __init__(self, store: Path, locations: dict[str, tuple[str, int]],
                 failures: list[dict[str, Any]], image_size: int):
        self.store, self.image_size = store, image_size
        self.locations, self.failures = locations, failures
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.locations

    def get(self, image_id: str) -> np.ndarray:
        shard, row = self.locations[image_id]
        if shard not in self._arrays:
            self._arrays[shard] = np.load(self.store / shard / "images.npy", mmap_mode="r")
        return np.array(self._arrays[shard][row])


def _complete_shards(store: Path) -> list[Path]:
    return sorted(p for p in store.glob("shard-*") if (p / MARKER).is_file())


def _read_index(store: Path) -> dict[str, tuple[str, int, bool, str]]:
    """fingerprint → (shard, row, ok, reason) over every complete shard (newest wins)."""
    index: dict[str, tuple[str, int, bool, str]] = {}
    for shard in _complete_shards(store):
        frame = pd.read_csv(shard / "index.csv", dtype={"reason": str}, keep_default_na=False)
        for key, row, ok, reason in zip(frame["fingerprint"], frame["row"], frame["ok"],
                                        frame["reason"]):
            index[key] = (shard.name, int(row), bool(ok), reason)
    return index


@contextmanager
def _locked(store: Path) -> Iterator[None]:
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_cache(table: pd.DataFrame, data_cfg: Any, source: str | None = None) -> ImageCache:
    """Open the store for ``table`` (building the images it lacks first) and map its image ids."""
    source = str(source or table.attrs.get("source") or _get(data_cfg, "source", "data"))
    store = store_dir(data_cfg, source)
    paths = table["path"].astype(str).tolist()
    keys = fingerprints(paths)
    index = _read_index(store) if store.is_dir() else {}
    if any(key not in index for key in keys):
        with _locked(store):  # re-read: another process may have built them while we waited
            index = _read_index(store)
            missing = sorted({(k, p) for k, p in zip(keys, paths) if k not in index})
            if missing:
                _build_shard(store, missing, data_cfg)
                index = _read_index(store)
    locations: dict[str, tuple[str, int]] = {}
    failures: list[dict[str, Any]] = []
    rows = table.get("source_row", pd.Series([np.nan] * len(table), index=table.index))
    for image_id, path, key, source_row in zip(table["image_id"], paths, keys, rows):
        shard, row, ok, reason = index[key]
        if ok:
            locations[str(image_id)] = (shard, row)
        else:
            failures.append({"image_id": str(image_id), "path": path, "reason": reason,
                             "row": None if pd.isna(source_row) else int(source_row)})
    return ImageCache(store, locations, failures, preprocess_settings(data_cfg)["image_size"])


def _build_shard(store: Path, items: list[tuple[str, str]], data_cfg: Any) -> Path:
    """Decode ``items`` ((fingerprint, path)) into a new complete shard; returns its folder."""
    from tqdm.auto import tqdm

    for stale in store.glob(".tmp-*"):  # we hold the lock: leftovers are from crashed builds
        shutil.rmtree(stale, ignore_errors=True)
    settings = preprocess_settings(data_cfg)
    size = settings["image_size"]
    cache_cfg = _get(data_cfg, "cache")
    workers = max(1, int(_get(cache_cfg, "workers", min(4, os.cpu_count() or 1))))
    (store / "settings.json").write_text(json.dumps({**settings, "version": CACHE_VERSION}))
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=store))
    digest = hashlib.sha256("\n".join(k for k, _ in items).encode()).hexdigest()[:12]
    try:
        ok, reasons = np.ones(len(items), bool), [""] * len(items)
        bar = tqdm(total=len(items), desc=f"caching {size}px images", unit="img",
                   disable=not bool(_get(cache_cfg, "progress", True)))
        blank = np.zeros((size, size), np.uint8)
        with open(tmp / "images.npy", "wb") as handle:  # plain appends: no dirty mapped pages
            np.lib.format.write_array_header_1_0(handle, {
                "descr": "|u1", "fortran_order": False, "shape": (len(items), size, size)})
            stream = _preprocess_stream([p for _, p in items], settings, workers)
            for row, (image, reason) in enumerate(stream):
                if image is not None and image.shape != (size, size):
                    image, reason = None, f"preprocessed to {image.shape}, expected {(size, size)}"
                if image is None:
                    ok[row], reasons[row] = False, reason
                handle.write(np.ascontiguousarray(blank if image is None else image).tobytes())
                bar.update(1)
        bar.close()
        pd.DataFrame({"fingerprint": [k for k, _ in items], "row": np.arange(len(items)),
                      "ok": ok.astype(int), "reason": reasons}).to_csv(tmp / "index.csv", index=False)
        (tmp / MARKER).write_text(json.dumps({"images": len(items), "failed": int((~ok).sum())}))
        final = store / f"shard-{digest}-{uuid.uuid4().hex[:6]}"
        os.rename(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _preprocess_stream(paths: list[str], settings: dict[str, Any],
                       workers: int) -> Iterator[tuple[np.ndarray | None, str]]:
    """Yield (uint8 image or None, failure reason) in order; at most a few chunks in flight.

    The settings travel with the work (a :class:`_Preprocessor` per build), never through module
    state: two builds with different settings may run at once in one process (threads, tests)."""
    from cxrssl.data.parallel import ordered_map

    # Threads: OpenCV releases the GIL while decoding and resizing (see cxrssl.data.parallel).
    yield from ordered_map(_Preprocessor(settings), paths, workers,
                           in_flight=CHUNK_PER_WORKER * max(workers, 1))


class _Preprocessor:
    """``path -> (uint8 image | None, reason)`` with the given preprocessing settings; one
    albumentations pipeline per thread (Compose keeps call state)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = dict(settings)
        self._local = threading.local()

    def pipeline(self):
        if not hasattr(self._local, "pipeline"):
            from cxrssl.data.transforms import build_preprocess

            self._local.pipeline = build_preprocess(self.settings)
        return self._local.pipeline

    def __call__(self, path: str) -> tuple[np.ndarray | None, str]:
        from cxrssl.data.io import read_image_uint8

        try:
            return self.pipeline()(image=read_image_uint8(path))["image"], ""
        except ImageReadError as error:
            return None, error.reason
        except Exception as error:  # a file OpenCV/pydicom cannot handle must not kill the build
            return None, f"{type(error).__name__}: {error}"
