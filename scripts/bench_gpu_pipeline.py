#!/usr/bin/env python
"""GPU: does `cxrssl pretrain` feed the card at the model's own rate? Side by side, one run.

    python scripts/bench_gpu_pipeline.py [--models resnet18:256:cl densenet121:128:l150]
        [--size 224] [--epoch-images 40000] [--workers 15] [--epochs 3] [--amp bf16]
        [--profile 30] [--extra data.gpu_augment=true ...] [--no-gpu-augment-rows]
    python scripts/bench_gpu_pipeline.py --loader-only [--models resnet18:256] ...

Data: the synthetic phantom (`--patients` labelled + as many unlabelled, drawn at `--native-size`)
is turned into a `data=csv` set of `--epoch-images` training images by hard links (every link is
its own file for the image cache: distinct cache rows, one memory map, as a real NIH/CheXpert set
of that size), so epochs are as long as a real data set's (NIH: 112k images = 438 steps of 256)
without drawing 50k phantoms on the device.

For each `name:batch[:cl][:lN]` (cl = channels_last, lN = trainer.limit_batches N):
1. model alone: the pretrain task built from the same config (`build_pretext_task`), its
   `training_step` + AdamW on in-memory CUDA tensors (no data pipeline, no loop), 20 timed steps
   after 5 warm-up steps, cuDNN autotuning on;
2. `cxrssl pretrain` in this process (cuDNN's flag reset first: the command must set it itself),
   once with `data.gpu_augment=true` and (unless --no-cpu-augment-rows) once with the CPU
   augmentation: per-epoch images/s, data-wait share and first-batch wait from `last.pt`'s history;
3. `--profile N`: one more short gpu_augment run with `trainer.profile_steps=N` — the GPU busy
   share of those steps and what the host did while the card idled (cxrssl/engine/profiling.py).
Prints a markdown table (epochs after the first) with pipeline / model-alone ratios (target ≥ 0.9)
for docs/benchmarks.md. Exits 2 without CUDA (except --loader-only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def replicated_data(args, out: Path) -> list[str]:
    """Draw the phantom once, hard-link it into an `--epoch-images` CSV set; return its overrides."""
    import pandas as pd

    from cxrssl.commands.inprocess import compose_config
    from cxrssl.data.loaders import prepare_table
    from cxrssl.data.pretrain_pool import pretrain_table

    folder = out / "replica"
    overrides = ["data=csv", f"data.root={folder}", "data.csv=metadata.csv", f"data.cache.workers={args.workers}",
                 "data.cache.progress=false"]
    if (folder / "metadata.csv").is_file():
        return overrides
    start = time.perf_counter()
    cfg = compose_config("pretrain", [f"data.synthetic.n_patients={args.patients}",
                                      f"data.synthetic.n_unlabelled_patients={args.patients}",
                                      f"data.synthetic.native_size={args.native_size}",
                                      f"data.synthetic.workers={args.workers + 1}"], run_dir=out / "draw")
    base = pretrain_table(cfg.data, prepare_table(cfg.data))
    copies = max(1, math.ceil(args.epoch_images / (0.8 * len(base))))  # csv: 80 % of patients train
    rows = []
    for k in range(copies):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
        for row in base.itertuples():
            name = f"c{k}/{Path(row.path).name}"
            if not (folder / name).exists():
                try:
                    os.link(row.path, folder / name)
                except OSError:  # another file system: a copy is as good for the benchmark
                    shutil.copyfile(row.path, folder / name)
            rows.append({"path": name, "image_id": f"{row.image_id}_c{k}", "patient_id": f"{row.patient_id}_c{k}",
                         "age": row.age, "sex": row.sex, "view": row.view, "cardiomegaly": row.cardiomegaly})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    print(f"data: {len(base)} phantom images × {copies} links = {len(rows)} images "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return overrides


def base_overrides(name: str, batch: int, limit: int | None, cl: bool, args, data: list[str]) -> list[str]:
    return [*data, f"backbone={name}", f"data.image_size={args.size}", f"data.batch_size={batch}",
            f"data.num_workers={args.workers}", f"trainer.max_epochs={args.epochs}", f"trainer.amp={args.amp}",
            f"trainer.device={args.device}", f"trainer.channels_last={str(cl).lower()}", "trainer.progress=false",
            "trainer.early_stopping.enabled=false", "mlflow.enabled=false",
            *([f"trainer.limit_batches={limit}"] if limit else []), *args.extra]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def model_alone(overrides: list[str], batch: int, size: int, amp: str, channels_last: bool, out: Path,
                device: str = "cuda", steps: int = 20) -> float:
    from cxrssl.commands.inprocess import compose_config
    from cxrssl.data.loaders import prepare_table
    from cxrssl.engine.precision import resolve_precision
    from cxrssl.tasks import build_pretext_task

    cfg = compose_config("pretrain", overrides, run_dir=out / "alone")
    table = prepare_table(cfg.data)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    precision = resolve_precision(device, amp)
    task = build_pretext_task(cfg.pretext, cfg.backbone, table[table["split"] == "train"]).to(device).train()
    images = torch.rand(batch, 1, size, size, device=device)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    batch_dict = {"image": images, "age": torch.rand(batch, device=device) * 70 + 20,
                  "sex": (torch.rand(batch, device=device) > 0.5).float(),
                  "cardiomegaly": (torch.rand(batch, device=device) > 0.7).float()}
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    scaler = precision.grad_scaler()
    for i in range(steps + 5):
        if i == 5:
            _sync(device)
            start = time.perf_counter()
        with precision.autocast():
            loss = task.training_step(batch_dict)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def pipeline(overrides: list[str], run_dir: Path) -> list[dict]:
    from cxrssl.commands.inprocess import run_command
    from cxrssl.engine.checkpoint import load_checkpoint

    torch.backends.cudnn.benchmark = False  # `cxrssl pretrain` must turn autotuning on itself
    run_command("pretrain", overrides, run_dir=run_dir)
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    return [{"epoch": h["epoch"], "img_s": h["train/images_per_s"], "wait": h.get("train/data_wait_frac"),
             "first": h.get("train/data_wait_first_s")} for h in history]


def profiled(overrides: list[str], steps: int, run_dir: Path) -> dict:
    from cxrssl.commands.inprocess import run_command

    skip = 10
    run_command("pretrain", [*overrides, "trainer.max_epochs=1", f"trainer.limit_batches={skip + steps + 1}",
                             f"trainer.profile_steps={steps}", f"trainer.profile_skip_steps={skip}"], run_dir=run_dir)
    return json.loads((run_dir / "profile" / "summary.json").read_text())


def summarise(epochs: list[dict]) -> tuple[float, float, float]:
    later = epochs[1:] or epochs
    mean = lambda key: statistics.mean(e[key] for e in later if e[key] is not None) if any(
        e[key] is not None for e in later) else float("nan")
    return mean("img_s"), mean("wait"), mean("first")


def loader_rates(overrides: list[str], gpu_augment: bool, epochs: int, out: Path) -> tuple[float, float]:
    """(loader alone, loader + to-device [+ GPU augmentation]) in images/s, epochs after the first."""
    from cxrssl.commands.inprocess import compose_config
    from cxrssl.commands.training import train_batch_transform
    from cxrssl.data.loaders import build_dataloaders, prepare_table
    from cxrssl.data.pretrain_pool import pretrain_table
    from cxrssl.engine.batch import DeviceCopier
    from cxrssl.engine.sampling import prepare_epoch

    cfg = compose_config("pretrain", [*overrides, f"data.gpu_augment={str(gpu_augment).lower()}"], run_dir=out / "loader")
    table = pretrain_table(cfg.data, prepare_table(cfg.data))
    loader = build_dataloaders(cfg.data, table, seed=0, splits=("train",))["train"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    copy, transform = DeviceCopier(device, channels_last=True), train_batch_transform(cfg)
    rates = {False: [], True: []}
    for epoch in range(max(epochs, 2)):
        for to_dev in (False, True):
            prepare_epoch(loader, epoch, 0)  # as the Trainer: the epoch's order and augmentation
            n, start = 0, time.perf_counter()
            for step, batch_ in enumerate(loader):
                if to_dev:
                    batch_ = copy(batch_)
                    if transform is not None:
                        batch_ = transform(batch_, epoch, step)
                n += len(batch_["image"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if epoch > 0:  # the first epoch pays worker start-up and page-cache warm-up
                rates[to_dev].append(n / (time.perf_counter() - start))
    return statistics.mean(rates[False]), statistics.mean(rates[True])


def parse_spec(spec: str) -> tuple[str, int, bool, int | None]:
    name, batch, *flags = spec.split(":")
    limit = next((int(f[1:]) for f in flags if f.startswith("l")), None)
    return name, int(batch), "cl" in flags, limit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18:256:cl", "densenet121:128:l150"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epoch-images", type=int, default=40000, help="training images per epoch (hard links)")
    parser.add_argument("--patients", type=int, default=300, help="labelled phantom patients drawn (+ as many unlabelled)")
    parser.add_argument("--native-size", type=int, default=128, help="phantom drawing size (upscaled to --size)")
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--amp", default="bf16")
    parser.add_argument("--profile", type=int, default=0, help="N > 0: a profiled run of N steps per model")
    parser.add_argument("--profile-only", action="store_true", help="only the profiled runs (no timing runs)")
    parser.add_argument("--no-cpu-augment-rows", action="store_true", help="only data.gpu_augment=true runs")
    parser.add_argument("--cpu-augment-limit", type=int, default=80, help="batches per epoch of the CPU-augmentation runs")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke test of this script
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every pretrain run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--loader-only", action="store_true", help="time the training DataLoader alone, both modes")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cxrssl_bench_gpu_"))
    os.environ.setdefault("CXRSSL_CACHE", str(out / "cache"))
    cuda = torch.cuda.is_available()
    if not cuda and not args.loader_only and args.device == "cuda":
        print("no CUDA device: this benchmark needs a GPU")
        return 2
    data = replicated_data(args, out)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'} | torch {torch.__version__} | {args.size} px | "
          f"{args.amp} | {args.workers} loader workers | ~{args.epoch_images} training images/epoch | "
          f"extra: {' '.join(args.extra) or '-'}", flush=True)
    if args.loader_only:
        print("\n| batch | data.gpu_augment | loader alone (img/s) | + to device, augmented (img/s) |\n|---|---|---|---|")
        for spec in args.models:
            name, batch, cl, limit = parse_spec(spec)
            for gpu in (False, True):
                alone, fed = loader_rates(base_overrides(name, batch, limit, cl, args, data), gpu, args.epochs, out)
                print(f"| {batch} | {str(gpu).lower()} | {alone:,.0f} | {fed:,.0f} |", flush=True)
        return 0
    rows = []
    for spec in args.models:
        name, batch, cl, limit = parse_spec(spec)
        common = base_overrides(name, batch, limit, cl, args, data)
        label = f"{name} (batch {batch}{', channels_last' if cl else ''})"
        modes = [] if args.profile_only else ["true"] + ([] if args.no_cpu_augment_rows else ["false"])
        alone = model_alone(common, batch, args.size, args.amp, cl, out, args.device) if modes else None
        for gpu in modes:
            cpu_limit = min(limit or args.cpu_augment_limit, args.cpu_augment_limit)
            overrides = common if gpu == "true" else base_overrides(name, batch, cpu_limit, cl, args, data)
            epochs = pipeline([*overrides, f"data.gpu_augment={gpu}"], out / f"{name}_{batch}_gpu{gpu}")
            speed, wait, first = summarise(epochs)
            rows.append((label, gpu, alone, speed, wait, first, epochs))
            print(f"{label} gpu_augment={gpu}: model alone {alone:.0f} img/s | pretrain "
                  + " ".join(f"e{e['epoch']}={e['img_s']:.0f}" for e in epochs)
                  + f" | ratio {speed / alone:.2f} | wait {wait:.1%} (first batch {first:.2f} s)", flush=True)
        if args.profile:
            from cxrssl.engine.profiling import format_summary

            summary = profiled([*common, "data.gpu_augment=true"], args.profile, out / f"{name}_{batch}_profile")
            print(f"{label} gpu_augment=true {format_summary(summary, top=6)}\n{json.dumps(summary)}", flush=True)
    print(f"\n(CPU-augmentation rows: {args.cpu_augment_limit} batches per epoch)")
    print("\n| model | data.gpu_augment | model alone (img/s) | `cxrssl pretrain`, epochs 2+ (img/s) | ratio "
          "| data-wait share | first-batch wait |\n|---|---|---|---|---|---|---|")
    for label, gpu, alone, speed, wait, first, _ in rows:
        print(f"| {label} | {gpu} | {alone:,.0f} | {speed:,.0f} | **{speed / alone:.2f}×** | {wait:.1%} | {first:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
