#!/usr/bin/env python
"""How many device ops does one training step launch, and which part of the step launches them?

    python scripts/bench_host_ops.py [--models resnet18 densenet121] [--batch 8] [--size 32]

Why: on an H200 the resnet18 step (batch 256, 224 px, bf16) does ~21 ms of GPU work, and the
Python thread that issues it pays ~10-30 µs per op on the host (dispatcher, autograd, kernel
launch). A step becomes host-bound once its op count × that cost exceeds the GPU time — what the
profiled `cxrssl pretrain` showed (docs/benchmarks.md). This script counts, without a GPU, the ops
each part of a `cxrssl pretrain` step dispatches on the device: the model and its data live on
PyTorch's `meta` device (shapes only, no data, no arithmetic), and a dispatch mode counts every op
that touches a meta tensor — the ops that would each launch (at least) one kernel on CUDA. Ops on
CPU scalars (the optimizer's step counters, the augmentation's per-image parameters) are host
work but launch nothing and are not counted. Foreach kernels are forced as on CUDA.

Parts: the task's forward + backward; grad-norm clipping (trainer.grad_clip_norm); AdamW on the
decay/no-decay groups (foreach, torch's CUDA default); data.gpu_augment's batch augmentation (and
kornia's warp, the implementation before 2026-11-27, when kornia is installed); the loop's own
bookkeeping (host→device copy of the batch, the on-device loss sums). The count does not depend on
the batch or image size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AUGMENT = {"augment": {"p": 0.7, "rotate_limit": 7, "scale_limit": 0.08, "translate_limit": 0.05,
                       "brightness_contrast": 0.1, "hflip": False}}


class DeviceOps(TorchDispatchMode):
    """Counts dispatched ops that touch a tensor standing in for device memory: a `meta` tensor, or
    (`cpu_arrays`) a CPU tensor of at least one dimension — foreach kernels have no meta version, so
    clipping and the optimizer run on a CPU replica where 0-dim tensors are the step counters that
    stay on the host on CUDA too."""

    def __init__(self, cpu_arrays: bool = False):
        super().__init__()
        self.n, self.cpu_arrays = 0, cpu_arrays

    def _device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and (t.device.type == "meta" or (self.cpu_arrays and t.dim() > 0))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if any(self._device(t) for t in tree_leaves((args, kwargs, result))):  # a copy onto the device too
            self.n += 1
        return result


def count(fn, cpu_arrays: bool = False) -> int:
    with DeviceOps(cpu_arrays) as ops:
        fn()
    return ops.n


def kornia_augment(images: torch.Tensor) -> None:
    """The warp as it was (kornia's get_affine_matrix2d + warp_affine on device-side parameters)."""
    import kornia

    n, _, h, w = images.shape
    u = torch.rand(n, 10).to(images.device)
    sym = lambda col, limit: (2 * u[:, col] - 1) * limit
    center = torch.stack([torch.full((n,), (w - 1) / 2, device=images.device),
                          torch.full((n,), (h - 1) / 2, device=images.device)], 1)
    matrix = kornia.geometry.transform.get_affine_matrix2d(
        torch.stack([sym(6, 0.05) * w, sym(7, 0.05) * h], 1), center,
        torch.stack([1 + sym(4, 0.08), 1 + sym(5, 0.08)], 1), -sym(3, 7.0))[:, :2]
    x = images.float() / 255
    warped = kornia.geometry.transform.warp_affine(x, matrix, (h, w), mode="bilinear", padding_mode="zeros",
                                                   align_corners=True)
    x = torch.where((u[:, 0] < 0.7).view(-1, 1, 1, 1), warped, x)
    alpha, beta = (1 + sym(8, 0.1)).view(-1, 1, 1, 1), sym(9, 0.1).view(-1, 1, 1, 1)
    torch.where((u[:, 1] < 0.7).view(-1, 1, 1, 1), (x * alpha + beta).clamp(0, 1), x)


def parts(name: str, batch: int, size: int) -> dict[str, int | None]:
    from omegaconf import OmegaConf

    from cxrssl.data.gpu_augment import TrainBatchAugment
    from cxrssl.engine.batch import StepSums, to_device
    from cxrssl.models import create_encoder
    from cxrssl.tasks.age import AgeTask

    task = AgeTask(create_encoder(name), train_mean_age=55.0).to("meta")
    host_batch = {"image": torch.zeros(batch, 1, size, size, dtype=torch.uint8), "age": torch.rand(batch) * 60 + 20,
                  "sex": torch.ones(batch), "cardiomegaly": torch.zeros(batch)}
    meta = torch.device("meta")
    augment = TrainBatchAugment(OmegaConf.create(AUGMENT), seed=0, channels_last=True)
    on_device = {"batch": to_device(host_batch, meta)}
    out: dict[str, int | None] = {"host→device copy of the batch": count(lambda: on_device.update(
        batch=to_device(host_batch, meta)))}
    out["data.gpu_augment (torch affine_grid/grid_sample)"] = count(lambda: on_device.update(
        batch=augment(on_device["batch"], 0, 1)))
    try:
        out["  for reference: kornia warp (until 2026-11-27)"] = count(lambda: kornia_augment(to_device(host_batch, meta)["image"]))
    except ImportError:
        out["  for reference: kornia warp (until 2026-11-27)"] = None
    logs: dict = {}
    out["forward + backward"] = count(lambda: logs.update(task.training_step(on_device["batch"])) or logs["loss"].backward())
    sums = StepSums(meta)
    out["loss sums on the device"] = count(lambda: sums.add({**logs, "loss": logs["loss"].detach()}, batch))
    replica = AgeTask(create_encoder(name), train_mean_age=55.0)  # CPU: foreach kernels have no meta version
    for p in replica.parameters():
        p.grad = torch.zeros_like(p)
    out["grad-norm clipping"] = count(lambda: torch.nn.utils.clip_grad_norm_(replica.parameters(), 1.0, foreach=True),
                                      cpu_arrays=True)
    optimizer = torch.optim.AdamW(replica.optimizer_groups(0.05), lr=1e-3, foreach=True)
    optimizer.step()  # state created: count a steady-state step
    out["AdamW (foreach, 2 groups)"] = count(lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)),
                                             cpu_arrays=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    results = {name: parts(name, args.batch, args.size) for name in args.models}
    rows = list(next(iter(results.values())))
    print(f"device ops per training step (torch {torch.__version__}, counted on the meta device)\n")
    print("| part of the step | " + " | ".join(args.models) + " |\n|---|" + "---|" * len(args.models))
    for row in rows:
        print(f"| {row} | " + " | ".join("n/a" if results[m][row] is None else f"{results[m][row]:,}"
                                          for m in args.models) + " |")
    totals = {m: sum(v for k, v in results[m].items() if v is not None and not k.startswith("  ")) for m in args.models}
    model = {m: results[m]["forward + backward"] + results[m]["AdamW (foreach, 2 groups)"] for m in args.models}
    print("| **`cxrssl pretrain` step, data.gpu_augment=true** | " + " | ".join(f"**{totals[m]:,}**" for m in args.models) + " |")
    print("| model alone (forward + backward + AdamW) | " + " | ".join(f"{model[m]:,}" for m in args.models) + " |")
    print("| pipeline ops / model-alone ops | " + " | ".join(f"{totals[m] / model[m]:.2f}" for m in args.models) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
