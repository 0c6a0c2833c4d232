#!/usr/bin/env python
"""GPU: does `cxrssl pretrain` feed the card at the model's own rate? Side by side, one run.

    python scripts/bench_gpu_pipeline.py [--models resnet18:256:cl densenet121:128] [--size 224]
        [--patients 2000] [--workers 15] [--epochs 3] [--amp bf16] [--extra data.gpu_augment=true ...]
    python scripts/bench_gpu_pipeline.py --loader-only [--models resnet18:256] [--size 224] [--workers 15]

For each `name:batch[:cl]` (cl = channels_last):
1. model alone: the pretrain task's own `training_step` + AdamW on in-memory CUDA tensors (no data
   pipeline, no loop), 20 timed steps after 5 warm-up steps;
2. `cxrssl pretrain` in this process on the synthetic phantom at the same size, batch, precision and
   memory format; per-epoch images/s and data-wait share read from the run's `last.pt` history.
Prints a markdown table (epochs after the first, whose numbers include cuDNN autotuning and cache
warm-up) with pipeline / model-alone ratios (target ≥ 0.9) for docs/benchmarks.md. Exits 2 without CUDA.

`--loader-only`: no model. The training DataLoader alone, for both `data.gpu_augment=false`
(albumentations in the workers, float32 batches) and `true` (uint8 batches), and each followed by
the host→device copy (and, for `true`, the batch augmentation on the device) — the rate at which
the input pipeline could feed a model. Runs on the CPU too (then "device" is the CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_alone(name: str, batch: int, size: int, amp: str, channels_last: bool, steps: int = 20) -> float:
    from cxrssl.engine.precision import resolve_precision
    from cxrssl.models import create_encoder
    from cxrssl.tasks.age import AgeTask

    precision = resolve_precision("cuda", amp)
    torch.manual_seed(0)
    task = AgeTask(create_encoder(name), train_mean_age=55.0).cuda()
    images = torch.rand(batch, 1, size, size, device="cuda")
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    batch_dict = {"image": images, "age": torch.rand(batch, device="cuda") * 70 + 20}
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    scaler = precision.grad_scaler()
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with precision.autocast():
            loss = task.training_step(batch_dict)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def pipeline(name: str, batch: int, size: int, amp: str, channels_last: bool, args, out: Path) -> list[dict]:
    from cxrssl.commands.inprocess import run_command
    from cxrssl.engine.checkpoint import load_checkpoint

    run_dir = out / f"{name}_{batch}"
    overrides = [f"backbone={name}", f"data.image_size={size}", f"data.batch_size={batch}",
                 f"data.synthetic.n_patients={args.patients}", f"data.num_workers={args.workers}",
                 f"trainer.max_epochs={args.epochs}", f"trainer.amp={amp}", "trainer.device=cuda",
                 f"trainer.channels_last={str(channels_last).lower()}", "trainer.progress=false",
                 "trainer.early_stopping.enabled=false", f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db",
                 *args.extra]
    run_command("pretrain", overrides, run_dir=run_dir)
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    return [{"epoch": h["epoch"], "img_s": h["train/images_per_s"], "wait": h.get("train/data_wait_frac")}
            for h in history]


def loader_rates(batch: int, size: int, gpu_augment: bool, args, out: Path) -> tuple[float, float]:
    """(loader alone, loader + to-device [+ GPU augmentation]) in images/s, epochs after the first."""
    from cxrssl.commands.inprocess import compose_config
    from cxrssl.commands.training import train_batch_transform
    from cxrssl.data.loaders import build_dataloaders, prepare_table
    from cxrssl.data.pretrain_pool import pretrain_table
    from cxrssl.engine.batch import to_device
    from cxrssl.engine.sampling import prepare_epoch

    overrides = [f"data.image_size={size}", f"data.batch_size={batch}", f"data.synthetic.n_patients={args.patients}",
                 f"data.num_workers={args.workers}", f"data.gpu_augment={str(gpu_augment).lower()}", *args.extra]
    cfg = compose_config("pretrain", overrides, run_dir=out / "loader")
    table = pretrain_table(cfg.data, prepare_table(cfg.data))
    loader = build_dataloaders(cfg.data, table, seed=0, splits=("train",))["train"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = train_batch_transform(cfg)
    rates = {False: [], True: []}
    for epoch in range(max(args.epochs, 2)):
        for to_dev in (False, True):
            prepare_epoch(loader, epoch, 0)  # as the Trainer: the epoch's order and augmentation
            n, start = 0, time.perf_counter()
            for step, batch_ in enumerate(loader):
                if to_dev:
                    batch_ = to_device(batch_, device, channels_last=True)
                    if transform is not None:
                        batch_ = transform(batch_, epoch, step)
                n += len(batch_["image"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if epoch > 0:  # the first epoch pays worker start-up and page-cache warm-up
                rates[to_dev].append(n / (time.perf_counter() - start))
    return statistics.mean(rates[False]), statistics.mean(rates[True])


def main_loader_only(args, out: Path) -> int:
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'} | {args.size} px | "
          f"{args.workers} loader workers | synthetic {args.patients} patients | extra: {' '.join(args.extra) or '-'}")
    print("\n| batch | data.gpu_augment | loader alone (img/s) | + to device, augmented (img/s) |")
    print("|---|---|---|---|")
    for spec in args.models:
        batch = int(spec.split(":")[1])
        for gpu in (False, True):
            alone, fed = loader_rates(batch, args.size, gpu, args, out)
            print(f"| {batch} | {str(gpu).lower()} | {alone:,.0f} | {fed:,.0f} |", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18:256:cl", "densenet121:128"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--amp", default="bf16")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for the pretrain run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--loader-only", action="store_true", help="time the training DataLoader alone, both modes")
    args = parser.parse_args()
    if args.loader_only:
        return main_loader_only(args, Path(args.out or tempfile.mkdtemp(prefix="cxrssl_bench_loader_")))
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 2
    torch.backends.cudnn.benchmark = True
    out = Path(args.out or tempfile.mkdtemp(prefix="cxrssl_bench_gpu_"))
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | {args.size} px | {args.amp} | "
          f"{args.workers} loader workers | synthetic {args.patients} patients | extra: {' '.join(args.extra) or '-'}")
    rows = []
    for spec in args.models:
        name, batch, *flags = spec.split(":")
        batch, cl = int(batch), "cl" in flags
        alone = model_alone(name, batch, args.size, args.amp, cl)
        epochs = pipeline(name, batch, args.size, args.amp, cl, args, out)
        later = epochs[1:] or epochs
        speed = statistics.mean(e["img_s"] for e in later)
        wait = statistics.mean(e["wait"] for e in later if e["wait"] is not None) if any(
            e["wait"] is not None for e in later) else float("nan")
        rows.append((f"{name} (batch {batch}{', channels_last' if cl else ''})", alone, epochs, speed, wait))
        print(f"{rows[-1][0]}: model alone {alone:.0f} img/s | pretrain "
              + " ".join(f"e{e['epoch']}={e['img_s']:.0f}" for e in epochs) + f" | ratio {speed / alone:.2f}", flush=True)
    print("\n| model | model alone (img/s) | `cxrssl pretrain`, epochs 2+ (img/s) | ratio | data-wait share |")
    print("|---|---|---|---|---|")
    for label, alone, epochs, speed, wait in rows:
        print(f"| {label} | {alone:,.0f} | {speed:,.0f} | **{speed / alone:.2f}×** | {wait:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
