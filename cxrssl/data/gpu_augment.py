"""``data.gpu_augment=true``: the train-time augmentation on the device, on whole batches.

Why: on an H200 the DataLoader with albumentations in 15 workers delivered 8,007 img/s while
resnet18 alone trains at 11,924 img/s — the CPU workers, not the model, set the pace. With this
switch the training dataset returns the cached uint8 image unaugmented (a 1×H×W uint8 tensor: 4×
fewer bytes through pinned memory and the host→device copy), and the trainer calls
:class:`TrainBatchAugment` on each training batch right after it reached the device.

Semantics follow ``build_augment`` in ``transforms.py`` (the same ``data.augment`` settings, the
same draws per image, in the same order), implemented with torch's ``affine_grid``/``grid_sample``:

* Affine with probability ``p``: rotation uniform in ±``rotate_limit`` degrees about the image
  centre, x and y scale drawn independently in 1 ± ``scale_limit`` (albumentations'
  ``keep_ratio=False``), x/y shift in ±``translate_limit`` of the width/height, bilinear, zero
  fill outside the image.
* Brightness/contrast with probability ``p`` (independent draw): ``clip(x·α + β, 0, 1)`` with
  α = 1 ± ``brightness_contrast`` and β = ±``brightness_contrast`` — albumentations'
  ``RandomBrightnessContrast`` formula (``brightness_by_max=True``).
* Horizontal flip with probability 0.5 only when ``hflip`` (the heart belongs on the left).

Differences from the CPU path (docs/design.md "GPU augmentation"): the pixels stay float (the CPU
path rounds to uint8 after each step), the affine matrix is R·S instead of albumentations' S·R
(identical for the isotropic part; with anisotropic scale the axes of the stretch turn with the
rotation), shifts are not rounded to whole pixels, and the random numbers come from torch, not numpy — the same distributions, other
draws. Every image still gets its own parameters.

Exact resume: the draws come from a private CPU ``torch.Generator`` seeded from (seed, rank,
epoch, batch index) per batch — the global RNGs are untouched, and a run resumed mid-epoch
augments the remaining batches exactly as the uninterrupted run did. Parameters are drawn on the
CPU (tiny) and sent in one pinned, non-blocking copy, so CPU and CUDA runs draw the same
parameters and the step has no host synchronisation (no ``.item()``, no blocking copy: checked
on the op level in tests/data/test_gpu_augment.py, and with CUDA's sync debug mode on a GPU).

Plain torch: no optional dependency (until 2026-11-27 this used kornia's warp; see `affine_theta`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrssl.common import cfg_get as _get
from cxrssl.data.transforms import augment_settings
from cxrssl.errors import ConfigError

#: Columns of the per-image unit draws (uniform in [0, 1)): gates, then the parameters.
_AFFINE_GATE, _COLOR_GATE, _FLIP_GATE, _ANGLE, _SCALE_X, _SCALE_Y, _SHIFT_X, _SHIFT_Y, _ALPHA, _BETA = range(10)
N_DRAWS = 10


def gpu_augment_enabled(data_cfg: Any) -> bool:
    """``data.gpu_augment`` (default false); anything but a boolean is refused."""
    value = _get(data_cfg, "gpu_augment", False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"data.gpu_augment={value!r} is not allowed: must be true or false")
    return value


def batch_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """A well-mixed 63-bit seed for one batch (numpy's SeedSequence hash, as ``sample_seed``)."""
    words = [int(seed) % 2**63, int(rank) % 2**32, int(epoch) % 2**32, int(step) % 2**32]  # epoch -1: LR finder
    state = np.random.SeedSequence(words).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1]))


def affine_theta(angle: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor, shift_x: torch.Tensor,
                 shift_y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B×2×3 `F.affine_grid` matrices (output → input, normalised, align_corners=True) of the map
    dst = R(angle)·S(scale)·(src − c) + c + shift, in pixels, about the centre c = ((w−1)/2, (h−1)/2);
    R turns by `angle` degrees as albumentations does (counter-clockwise on screen, y down).

    Why not kornia's ``get_affine_matrix2d`` + ``warp_affine`` (same map, same sampling): they build,
    invert and normalise 3×3 homographies on the device, 230 ops per batch — three quarters of
    resnet18's forward and backward (310) — and on an H200 the resnet18 step was host-bound
    (docs/benchmarks.md, scripts/bench_host_ops.py). Here the inverse is written out in a dozen
    elementwise ops on tiny per-image tensors, on the CPU; the device sees 18 ops per batch.
    With D = diag((w−1)/2, (h−1)/2), A = S⁻¹·Rᵀ: src_n = D⁻¹·A·D·dst_n − D⁻¹·A·shift."""
    rad = torch.deg2rad(angle)
    cos, sin = torch.cos(rad), torch.sin(rad)
    a00, a01, a10, a11 = cos / scale_x, -sin / scale_x, sin / scale_y, cos / scale_y  # A = S⁻¹ Rᵀ
    dx, dy = max(w - 1, 1) / 2, max(h - 1, 1) / 2
    return torch.stack([torch.stack([a00, a01 * (dy / dx), -(a00 * shift_x + a01 * shift_y) / dx], dim=1),
                        torch.stack([a10 * (dx / dy), a11, -(a10 * shift_x + a11 * shift_y) / dy], dim=1)], dim=1)


class BatchAugment(torch.nn.Module):
    """uint8 (or float in [0, 1]) B×1×H×W → float32 B×1×H×W in [0, 1], augmented per image.

    ``forward(images, generator=None, strength=None)``: `generator` is a CPU torch.Generator (the
    module's own when None); `strength` (B,) scales every limit per image, like ``build_augment``'s
    ``strength`` (the oversampling strategy's stronger augmentation of positives). With
    ``augment.enabled=false`` or ``p=0`` (and no hflip) the output is exactly ``images / 255``.
    """

    def __init__(self, settings: Mapping[str, Any], seed: int = 0):
        super().__init__()
        self.enabled = bool(settings["enabled"])
        self.p = float(settings["p"])
        self.rotate = float(settings["rotate_limit"])
        self.scale = float(settings["scale_limit"])
        self.shift = float(settings["translate_limit"])
        self.light = float(settings["brightness_contrast"])
        self.hflip = bool(settings["hflip"])
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"data.augment.p={self.p!r} is not allowed: must be a probability in [0, 1]")
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_data_config(cls, data_cfg: Any, seed: int = 0) -> "BatchAugment":
        return cls(augment_settings(data_cfg), seed)

    @property
    def is_identity(self) -> bool:
        return not self.enabled or (self.p == 0.0 and not self.hflip)

    def draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n × N_DRAWS uniform [0, 1) numbers on the CPU: one row per image, one column per choice."""
        return torch.rand((n, N_DRAWS), generator=generator or self.generator, dtype=torch.float64)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                strength: torch.Tensor | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"BatchAugment expects B×1×H×W images, got shape {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if self.is_identity:
            return x
        n, _, h, w = x.shape
        u = self.draws(n, generator).float()
        # Per-image parameters are tiny: compute them where `strength` lives (the CPU unless strong
        # positives read their labels on the device), then ONE copy of the packed rows. On CUDA the
        # copy is pinned and queued, so the host never waits and only the pixel ops launch kernels.
        s = torch.ones(n) if strength is None else strength.reshape(-1).to(torch.float32)
        params = self.parameter_rows(_to(u, s.device), s, h, w)
        params = _to(params, x.device)
        theta, affine, alpha, beta, color, flip = params.split([6, 1, 1, 1, 1, 1], dim=1)
        view = lambda t: t.reshape(n, 1, 1, 1)
        if self.p > 0 and not (self.rotate == 0 and self.scale == 0 and self.shift == 0):
            grid = F.affine_grid(theta.reshape(n, 2, 3), [n, 1, h, w], align_corners=True)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            x = torch.where(view(affine) > 0, warped, x)  # images not drawn keep their exact pixels
        if self.p > 0 and self.light != 0:
            x = torch.where(view(color) > 0, (x * view(alpha) + view(beta)).clamp_(0.0, 1.0), x)
        if self.hflip:
            x = torch.where(view(flip) > 0, x.flip(-1), x)
        return x

    def parameter_rows(self, u: torch.Tensor, s: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """n × 11 rows: affine_grid's θ (6), then the affine gate, α, β, the colour gate and the flip
        gate (gates as 1.0/0.0), from the unit draws `u` and the per-image strength `s`."""
        sym = lambda col, limit: (2 * u[:, col] - 1) * (limit * s)  # uniform in ±limit·strength
        theta = affine_theta(sym(_ANGLE, self.rotate), 1 + sym(_SCALE_X, self.scale), 1 + sym(_SCALE_Y, self.scale),
                             sym(_SHIFT_X, self.shift) * w, sym(_SHIFT_Y, self.shift) * h, h, w)
        gate = lambda col, p: (u[:, col] < p).float()[:, None]
        return torch.cat([theta.reshape(-1, 6), gate(_AFFINE_GATE, self.p), 1 + sym(_ALPHA, self.light)[:, None],
                          sym(_BETA, self.light)[:, None], gate(_COLOR_GATE, self.p), gate(_FLIP_GATE, 0.5)], dim=1)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; from the CPU to CUDA through pinned memory, queued (non_blocking)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class TrainBatchAugment:
    """The trainer's ``batch_transform``: ``batch["image"]`` (uint8 on the device) → augmented float.

    Called as ``transform(batch, epoch, batch_index)``; the draws are a function of (seed, rank,
    epoch, batch index) only. ``strong_positives``: images whose ``label_key`` is 1 get strength 2
    (the oversampling strategy's ``strong_augment``, as ``CXRDataset.positive_augment`` on the CPU).
    ``channels_last``: the trainer's memory format (``to_device`` skipped the then-uint8 image).
    """

    def __init__(self, data_cfg: Any, seed: int, rank: int = 0, strong_positives: bool = False,
                 channels_last: bool = False, label_key: str = "cardiomegaly"):
        self.augment = BatchAugment.from_data_config(data_cfg, seed)
        self.seed, self.rank = int(seed), int(rank)
        self.strong_positives, self.channels_last, self.label_key = strong_positives, channels_last, label_key

    def __call__(self, batch: dict, epoch: int, step: int) -> dict:
        images = batch["image"]
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, epoch, step))
        strength = None
        if self.strong_positives and self.label_key in batch:
            strength = 1.0 + (batch[self.label_key].reshape(-1) == 1).float()  # stays on the device: no sync
        out = self.augment(images, generator=generator, strength=strength)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return {**batch, "image": out}
