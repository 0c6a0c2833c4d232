"""CPU: the engine's training epoch against a bare PyTorch loop, same model, data and batch.

    python scripts/bench_train.py [--backbone resnet18] [--size 128] [--batch 32] [--images 512] [--repeats 3]

Both train the same AgeTask on the same in-memory tensors (no decoding or augmentation: this measures
the loop, not the input pipeline), with the engine's default settings mirrored in the bare loop
(AdamW, grad-norm clipping at trainer.grad_clip_norm, fp32 on CPU). Runs alternate engine / bare
`--repeats` times so machine load hits both alike; the median images/s of each and their ratio are
printed (target: engine ≥ 0.95 × bare). Results go to docs/benchmarks.md with the machine named.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from cxrssl.engine.loop import Trainer
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.engine.precision import resolve_precision
from cxrssl.models import create_encoder
from cxrssl.tasks.age import AgeTask
from cxrssl.tracking import NullTracker

ROOT = Path(__file__).resolve().parents[1]


class Tensors(Dataset):
    def __init__(self, n: int, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, size, size, generator=g)
        self.age = torch.rand(n, generator=g) * 70 + 20

    def __len__(self):
        return len(self.age)

    def __getitem__(self, i):
        return {"image": self.images[i], "age": self.age[i]}


def make(backbone: str, lr: float):
    torch.manual_seed(0)
    task = AgeTask(create_encoder(backbone), train_mean_age=55.0)
    optimizer = build_optimizer({"name": "adamw", "lr": lr, "weight_decay": 0.05}, task.optimizer_groups(0.05))
    return task, optimizer


def bare_epoch(task, optimizer, loader, clip: float | None) -> float:
    """The ~15-line loop a user would write by hand."""
    task.train()
    seen, start = 0, time.perf_counter()
    for batch in loader:
        outputs = task(batch["image"])
        loss, _ = task.loss(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(task.parameters(), clip)
        optimizer.step()
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def engine_epoch(task, optimizer, loader, trainer_cfg: dict, run_dir: Path, epoch: int) -> float:
    schedule = LRSchedule(optimizer, {"name": "none"}, steps_per_epoch=len(loader), max_epochs=1)
    trainer = Trainer(task, optimizer, schedule, resolve_precision("cpu", trainer_cfg["amp"]), trainer_cfg, run_dir,
                      NullTracker(), "bench: 1", {"command": "bench"})
    if hasattr(trainer, "_max_steps"):
        trainer._max_steps = len(loader)
    start = time.perf_counter()
    logs = trainer.train_one_epoch(loader, epoch)
    elapsed = time.perf_counter() - start
    return len(loader.dataset) / elapsed if logs is not None else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default="/tmp/cxrssl_bench_train")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml"))
    trainer_cfg.update({"max_epochs": 1, "progress": False, "device": "cpu"})
    clip = trainer_cfg.get("grad_clip_norm")
    data = Tensors(args.images, args.size)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    task, optimizer = make(args.backbone, 1e-4)
    init = (copy.deepcopy(task.state_dict()), copy.deepcopy(optimizer.state_dict()))
    bare_epoch(task, optimizer, loader, clip)  # warm-up: allocator, oneDNN kernels
    bare, engine = [], []
    for r in range(args.repeats):
        for name, runs in (("engine", engine), ("bare", bare)):
            task.load_state_dict(init[0])
            optimizer.load_state_dict(init[1])
            speed = (engine_epoch(task, optimizer, loader, trainer_cfg, Path(args.out), r) if name == "engine"
                     else bare_epoch(task, optimizer, loader, clip))
            runs.append(speed)
            print(f"repeat {r + 1}: {name:6s} {speed:8.1f} img/s", flush=True)
    b, e = statistics.median(bare), statistics.median(engine)
    print(f"\n{platform.processor() or platform.machine()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
          f" | {args.backbone} {args.size}px batch {args.batch}, {len(loader) * args.batch} images/epoch, "
          f"grad clip {clip}, amp {trainer_cfg['amp']}")
    print(f"bare loop  {b:8.1f} img/s (median of {args.repeats})")
    print(f"engine     {e:8.1f} img/s (median of {args.repeats})")
    print(f"ratio      {e / b:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
