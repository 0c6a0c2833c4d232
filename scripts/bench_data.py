"""Benchmark: decode-and-resize every epoch vs the preprocessed uint8 cache, side by side.

Generates ``--n`` 1024×1024 8-bit PNGs (NIH-sized films), then times one pass of ``CXRDataset``
(eval pipeline, one process, like one DataLoader worker) without and with ``data.cache``; also
times the cache build and its peak memory (the build runs in a child process whose max RSS is
read back, next to the size the decoded images would take in RAM).

    python scripts/bench_data.py --n 512 --image-size 224 --build-workers 2
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from omegaconf import OmegaConf


def make_pngs(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """Smooth film-like images with noise (compress like real radiographs, not like pure noise)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rows = []
    for i in range(n):
        cx, cy = 0.45 + 0.1 * rng.random(), 0.5 + 0.1 * rng.random()
        body = np.exp(-(((xx - cx) / 0.3) ** 2 + ((yy - cy) / 0.4) ** 2))
        image = 40 + 180 * body + rng.normal(0, 6, (size, size))
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), np.clip(image, 0, 255).astype(np.uint8))
        rows.append({"image_id": f"{i:05d}", "path": f"images/{i:05d}.png", "patient_id": f"P{i}",
                     "cardiomegaly": i % 2})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


def images_per_second(dataset, passes: int) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        for index in range(len(dataset)):
            dataset[index]
    return passes * len(dataset) / (time.perf_counter() - start)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _build(table_path: str, cfg_yaml: str, out) -> None:
    """Build in a fresh child; report time and the peak RSS *increase* of the writing process
    (VmHWM reset via /proc/self/clear_refs, so inherited memory is not counted)."""
    from cxrssl.data.cache import open_cache

    Path("/proc/self/clear_refs").write_text("5")
    start_rss = _status_mib("VmRSS")
    start = time.perf_counter()
    open_cache(pd.read_pickle(table_path), OmegaConf.create(cfg_yaml))
    out.put((time.perf_counter() - start, _status_mib("VmHWM") - start_rss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="number of generated PNGs")
    parser.add_argument("--native-size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--equalize", default="hist", choices=["none", "clahe", "hist"])
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2, help="epochs timed per method")
    parser.add_argument("--workdir", default=None, help="folder for images and cache (default: tmp)")
    args = parser.parse_args()

    from cxrssl.data.dataset import CXRDataset
    from cxrssl.data.sources.csv import load_csv_table

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cxrssl-bench-"))
    start = time.perf_counter()
    csv_path = make_pngs(work / "data", args.n, args.native_size)
    print(f"generated {args.n} {args.native_size}² PNGs in {time.perf_counter() - start:.1f}s "
          f"({sum(p.stat().st_size for p in (work / 'data/images').iterdir()) / 2**20:.0f} MiB)")
    table = load_csv_table(csv_path, work / "data")
    table.attrs["source"] = "bench"
    cfg = OmegaConf.create({"image_size": args.image_size, "resize_mode": "letterbox",
                            "equalize": args.equalize, "augment": {"enabled": False},
                            "cache": {"enabled": False, "dir": str(work / "cache"),
                                      "workers": args.build_workers, "progress": False}})
    decode_rate = images_per_second(CXRDataset(table, cfg, train=False), args.passes)

    table_path = work / "table.pkl"
    table.to_pickle(table_path)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_build, args=(str(table_path), OmegaConf.to_yaml(cfg), queue))
    child.start()
    build_s, build_peak = queue.get()
    child.join()

    cached_cfg = OmegaConf.merge(cfg, {"cache": {"enabled": True}})
    cache_rate = images_per_second(CXRDataset(table, cached_cfg, train=False), args.passes)
    decoded_mib = args.n * args.native_size**2 / 2**20
    print(f"\n{'method':<38}{'images/s':>10}")
    print(f"{'decode + resize every epoch':<38}{decode_rate:>10.1f}")
    print(f"{'preprocessed uint8 cache (memmap)':<38}{cache_rate:>10.1f}")
    print(f"speed-up: {cache_rate / decode_rate:.1f}x (target >= 10x)")
    print(f"cache build: {build_s:.1f}s for {args.n} images with {args.build_workers} worker(s) "
          f"({args.n / build_s:.1f} images/s); peak memory growth of the writing process "
          f"{build_peak:.0f} MiB (all {args.n} decoded images would take {decoded_mib:.0f} MiB, "
          f"the cache itself {args.n * args.image_size**2 / 2**20:.0f} MiB)")
    print(f"cache on disk: {sum(p.stat().st_size for p in (work / 'cache').rglob('*') if p.is_file()) / 2**20:.1f} MiB")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
