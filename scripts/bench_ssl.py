"""Training throughput of each self-supervised method next to the plain supervised step.

One process, one model size, the same synthetic batch for every method, so the numbers are side
by side: images/s counts source images (a SimCLR step on 32 images processes 64 views). Data
loading is excluded on purpose — the view transforms are timed separately (`views` row).

    python scripts/bench_ssl.py                         # CPU: tiny backbone (vit_tiny/8 for MAE), 64 px
    python scripts/bench_ssl.py --device cuda --size 224 --cnn resnet18 --vit vit_small --batch 64 --amp bf16
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "simclr", "moco", "byol", "dino", "mae")


def build(method: str, args) -> torch.nn.Module:
    from cxrssl.tasks import build_pretext_task

    backbone = args.vit if method == "mae" else args.cnn
    cfg = OmegaConf.create({"data": {"image_size": args.size},
                            "pretext": OmegaConf.load(ROOT / "conf" / "pretext" / f"{'sex' if method == 'supervised' else method}.yaml"),
                            "backbone": OmegaConf.load(ROOT / "conf" / "backbone" / f"{backbone}.yaml")})
    if backbone.startswith("vit") and args.size <= 96:
        cfg.backbone.timm_kwargs.patch_size = 8
    table = pd.DataFrame({"sex": ["M", "F"], "age": [50.0, 60.0]})
    return build_pretext_task(cfg.pretext, cfg.backbone, table), cfg.backbone.name


def batch(method: str, args, device) -> dict:
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    out = {"image": torch.rand(b, 1, s, s, generator=g), "sex": (torch.rand(b, generator=g) > 0.5).float(),
           "age": torch.rand(b, generator=g) * 60 + 20, "cardiomegaly": torch.full((b,), float("nan"))}
    if method in ("simclr", "moco", "byol", "dino"):
        out["views"] = [torch.rand(b, 1, s, s, generator=g) for _ in range(2)]
        if method == "dino":
            out["views"] += [torch.rand(b, 1, s // 2, s // 2, generator=g) for _ in range(args.dino_local)]
    return {k: (v.to(device) if torch.is_tensor(v) else [t.to(device) for t in v]) for k, v in out.items()}


def time_method(method: str, args, device) -> dict:
    task, backbone = build(method, args)
    task.to(device).train()
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    data = batch(method, args, device)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step(i):
        with autocast:
            loss = task.training_step(data)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        task.on_after_optimizer_step(i + 1, args.steps + args.warmup)

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    n_views = len(data.get("views", [None]))
    return {"method": method, "backbone": backbone, "views/image": n_views,
            "images/s": args.batch * args.steps / elapsed, "s/step": elapsed / args.steps}


def time_views(args) -> dict:
    from cxrssl.data.views import MultiViewTransform

    img = (np.random.default_rng(0).random((args.size, args.size)) * 255).astype(np.uint8)
    t = MultiViewTransform({"n_global": 2}, args.size, seed=0)
    start = time.perf_counter()
    n = 200
    for i in range(n):
        t(img, i, 0)
    return {"method": "views (2 global, CPU, 1 thread)", "backbone": "-", "views/image": 2,
            "images/s": n / (time.perf_counter() - start), "s/step": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cnn", default="tiny", help="conf/backbone/<name> for the CNN methods")
    parser.add_argument("--vit", default="vit_tiny", help="conf/backbone/<name> for MAE")
    parser.add_argument("--dino-local", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (GPU; CPU has no AMX)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for method in args.methods.split(","):
        rows.append(time_method(method, args, device))
        print(f"{method}: {rows[-1]['images/s']:.3g} images/s", flush=True)  # partial results survive a kill
    rows.append(time_views(args))
    table = pd.DataFrame(rows)
    base = table.loc[table["method"] == "supervised", "images/s"]
    if len(base):
        table["vs supervised"] = table["images/s"] / float(base.iloc[0])
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.node()} | {cpu} | {os.cpu_count()} cores | torch {torch.__version__} "
          f"{torch.get_num_threads()} threads | device {device} | load average {load:.1f} | "
          f"{args.size}px batch {args.batch} steps {args.steps} | amp {args.amp}")
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    print("\n".join("| " + " | ".join(row) + " |" for row in cells))


if __name__ == "__main__":
    main()
