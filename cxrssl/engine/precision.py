"""Device and mixed-precision choices, made once from `trainer.device` / `trainer.amp`.

Measured on 2-core CPUs without AMX: fp32 beats bf16 autocast, so `auto` means bf16 on CUDA
(fp16 + GradScaler where bf16 is unsupported) and off on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrssl.errors import ConfigError, DeviceUnavailable


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # None = fp32, autocast off
    use_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"trainer.device={device} but CUDA is not available here; "
                           "use trainer.device=auto or trainer.device=cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"trainer.device={device!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(device)


def resolve_precision(device: str, amp: str) -> Precision:
    dev = resolve_device(device)
    amp = str(amp).lower()
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"trainer.amp={amp!r}: expected auto, bf16, fp16 or off")
    if amp == "off" or (amp == "auto" and dev.type != "cuda"):
        return Precision(dev, None, False)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16":
        # fp16 on CPU has no GradScaler support worth using; CUDA gets a scaler.
        return Precision(dev, torch.float16, dev.type == "cuda")
    return Precision(dev, torch.bfloat16, False)
