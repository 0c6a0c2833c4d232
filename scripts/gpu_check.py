#!/usr/bin/env python
"""CUDA check of the engine's mixed precision: correctness and speed of fp32 / bf16 / fp16+GradScaler
(and channels_last), side by side in one run, on the model shapes users train.

    python scripts/gpu_check.py [--models resnet18 densenet121] [--size 224] [--batch 64]

Prints one table; exits non-zero if a precision gives non-finite losses or logits that disagree
with fp32 beyond tolerance. The end-to-end CLI part is `scripts/gpu_check.sh`.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from cxrssl.engine.precision import resolve_precision
from cxrssl.models import Classifier, create_encoder


def step_speed(model, precision, images, target, channels_last: bool, steps: int = 20) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = precision.grad_scaler()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    losses = []
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with precision.autocast():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    torch.cuda.synchronize()
    return steps * images.shape[0] / (time.perf_counter() - start), max(abs(x) for x in losses)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the GPU paths only")
        return 2
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | bf16 supported: "
          f"{torch.cuda.is_bf16_supported()}")
    torch.backends.cudnn.benchmark = True
    failures = []
    print(f"{'model':<12} {'precision':<18} {'train img/s':>11} {'vs fp32':>8} {'max |Δlogit| vs fp32':>21} {'finite':>7}")
    for name in args.models:
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(args.batch, 1, args.size, args.size, generator=gen).cuda()
        target = (torch.rand(args.batch, generator=gen) > 0.5).float().cuda()
        torch.manual_seed(0)
        reference = Classifier(create_encoder(name)).cuda().eval()
        with torch.no_grad():
            ref_logits = reference(images).float()
        base = None
        for label, amp, cl in (("fp32", "off", False), ("bf16", "bf16", False), ("bf16+channels_last", "bf16", True),
                               ("fp16+GradScaler", "fp16", False)):
            precision = resolve_precision("cuda", amp)
            model = Classifier(create_encoder(name)).cuda()
            model.load_state_dict(reference.state_dict())
            model.eval()
            with torch.no_grad(), precision.autocast():
                diff = (model(images).float() - ref_logits).abs().max().item()
            model.train()
            speed, loss_max = step_speed(model, precision, images, target, cl)
            finite = bool(torch.isfinite(torch.tensor(loss_max)))
            base = base or speed
            tol = 0.0 if amp == "off" else 0.25 * max(1.0, ref_logits.abs().max().item())
            if not finite or diff > tol:
                failures.append(f"{name} {label}: finite={finite} diff={diff:.3g} (tol {tol:.3g})")
            print(f"{name:<12} {label:<18} {speed:>11.0f} {speed / base:>7.2f}× {diff:>21.4g} {str(finite):>7}",
                  flush=True)
    print(f"auto precision on this device: {resolve_precision('cuda', 'auto').name}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all precisions finite and within tolerance of fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
