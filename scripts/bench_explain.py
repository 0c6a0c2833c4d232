"""Benchmark cxrssl.explain: batched vs one-image-at-a-time Grad-CAM, and time per image per method.

    python scripts/bench_explain.py                       # resnet18 + test_resnet at 128 px, CPU
    python scripts/bench_explain.py --device cuda --n-images 64 --markdown

Random weights suffice: attribution cost does not depend on what the weights learnt.
"""
from __future__ import annotations

import argparse
import time

import torch

from cxrssl.explain import METHODS, compute_attributions, occlusion_geometry
from cxrssl.models import Classifier, create_encoder


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int = 1) -> float:
    """Best of `repeats` wall-clock runs (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_backbone(name: str, args) -> list[dict]:
    torch.manual_seed(0)
    model = Classifier(create_encoder(name)).eval().to(args.device)
    images = torch.rand(args.n_images, 1, args.size, args.size)
    common = dict(device=args.device, progress=False, internal_batch_size=args.internal_batch_size,
                  n_steps=args.n_steps, n_samples=args.n_samples)
    for size in (args.batch_size, 1):  # warm-up both shapes (cuDNN kernel choice, lazy imports)
        compute_attributions(model, images[:size], "gradcam", batch_size=size, **common)
    batched = _timed(lambda: compute_attributions(model, images, "gradcam", batch_size=args.batch_size, **common),
                     args.device, args.repeats)
    single = _timed(lambda: compute_attributions(model, images, "gradcam", batch_size=1, **common), args.device,
                    args.repeats)
    rows = [{"backbone": name, "what": f"gradcam batch {args.batch_size}", "images_per_s": len(images) / batched},
            {"backbone": name, "what": "gradcam batch 1", "images_per_s": len(images) / single},
            {"backbone": name, "what": "batched speed-up", "images_per_s": single / batched}]
    for method in args.methods:
        subset = images[: args.method_images]
        compute_attributions(model, subset[:1], method, batch_size=1, **common)  # warm-up
        seconds = _timed(lambda: compute_attributions(model, subset, method, batch_size=args.batch_size, **common),
                         args.device)
        rows.append({"backbone": name, "what": f"{method} s/image", "images_per_s": seconds / len(subset)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "test_resnet"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--method-images", type=int, default=4, help="images timed per method (occlusion is slow)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="Grad-CAM timings: best of this many runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table for docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    window, stride = occlusion_geometry(args.size)
    print(f"device={args.device} size={args.size} threads={torch.get_num_threads()} occlusion window={window} "
          f"stride={stride} IG steps={args.n_steps} SHAP samples={args.n_samples}")
    results = {name: bench_backbone(name, args) for name in args.backbones}
    labels = [row["what"] for row in next(iter(results.values()))]
    names = list(results)
    unit = {"gradcam batch": "img/s", "batched speed-up": "×", "s/image": "s"}
    if args.markdown:
        print("| measure | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for i, label in enumerate(labels):
        values = [results[n][i]["images_per_s"] for n in names]
        suffix = next(v for k, v in unit.items() if k in label)
        cells = [f"{v:.4f} {suffix}" if v < 0.1 else f"{v:.2f} {suffix}" for v in values]
        print(f"| {label} | " + " | ".join(cells) + " |" if args.markdown else f"{label:32s} " + "  ".join(
            f"{n}: {c:>14s}" for n, c in zip(names, cells)))


if __name__ == "__main__":
    main()
