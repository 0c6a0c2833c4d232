"""data.gpu_augment: the batch augmentation (cxrssl/data/gpu_augment.py) on real tensors, on the CPU.

What must hold: every image of a batch gets its own parameters; augment off (or p=0) is exactly
uint8/255; output float32 in [0, 1] with the input's shape; rotations stay within their limit;
the same (seed, rank, epoch, step) gives the same batch (exact resume) and another step another;
strength 2 (strong_augment positives) widens the parameters; with fixed parameters the result
matches albumentations' Affine (the CPU path) up to uint8 rounding.
"""
from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.data.gpu_augment import N_DRAWS, BatchAugment, TrainBatchAugment, gpu_augment_enabled
from cxrssl.data.transforms import AUGMENT_DEFAULTS
from cxrssl.errors import ConfigError


def settings(**over):
    return {**AUGMENT_DEFAULTS, **over}


def square_batch(n: int = 16, size: int = 48, half: int = 8) -> torch.Tensor:
    """n identical uint8 images: a centred bright square on black."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    c = size // 2
    images[:, :, c - half:c + half, c - half:c + half] = 200
    return images


def test_identity_when_disabled_or_p_zero_is_exactly_uint8_over_255():
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    for s in (settings(enabled=False, rotate_limit=30), settings(p=0.0, rotate_limit=30, brightness_contrast=0.5)):
        out = BatchAugment(s)(images)
        assert out.dtype == torch.float32 and out.shape == images.shape
        assert torch.equal(out, images.float() / 255.0)


def test_output_range_dtype_shape_and_every_image_changed_at_p1():
    images = square_batch()
    out = BatchAugment(settings(p=1.0, rotate_limit=20, scale_limit=0.1, brightness_contrast=0.3))(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    plain = images.float() / 255.0
    assert all(not torch.allclose(out[i], plain[i]) for i in range(len(out)))


def test_each_image_of_a_batch_gets_its_own_parameters():
    """Identical inputs must come out different: the draws are per image, not per batch."""
    out = BatchAugment(settings(p=1.0, rotate_limit=20, brightness_contrast=0.3), seed=1)(square_batch())
    flat = out.flatten(1)
    distinct = {tuple(torch.round(row * 1e4).tolist()) for row in flat}
    assert len(distinct) == len(out)
    # geometry differs too (not only brightness): the bright area's outline differs between images
    shapes = {tuple((o[0] > 0.3).flatten().tolist()) for o in out}
    assert len(shapes) > len(out) // 2


def test_gate_p_half_leaves_about_half_the_images_untouched():
    images = square_batch(n=400, size=16, half=4)
    out = BatchAugment(settings(p=0.5, rotate_limit=30, scale_limit=0, brightness_contrast=0), seed=3)(images)
    untouched = (out == images.float() / 255.0).flatten(1).all(1).float().mean().item()
    assert 0.4 < untouched < 0.6


def test_rotation_stays_within_its_limit():
    """A centred square turned by at most 10°: its corners move at most r·2·sin(5°) px, so nothing
    bright appears outside the circumscribed disc, and the inscribed disc stays bright."""
    size, half = 48, 8
    out = BatchAugment(settings(p=1.0, rotate_limit=10, scale_limit=0, brightness_contrast=0), seed=0)(
        square_batch(64, size, half))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    radius = torch.sqrt((yy - c) ** 2 + (xx - c) ** 2)
    assert (out[:, 0][:, radius > half * math.sqrt(2) + 1] < 0.05).all()
    assert (out[:, 0][:, radius < half - 1] > 0.7).all()
    # and beyond: a 10° limit never reaches the area a 45° turn would fill
    corner_arm = (radius > half + 1.5) & (radius < half * math.sqrt(2) - 0.5) & \
        ((yy - c).abs() < 1.5)  # on the horizontal axis, outside the square: only big turns light it
    assert (out[:, 0][:, corner_arm] < 0.05).all()
    turned = (out[:, 0][:, (radius > half) & (radius < half * math.sqrt(2))] > 0.3).sum(1)
    assert (turned > 0).float().mean() > 0.5  # most images were actually turned


def test_same_key_same_batch_other_key_other_batch():
    cfg = OmegaConf.create({"augment": {"p": 1.0, "rotate_limit": 15}})
    batch = {"image": square_batch(4), "cardiomegaly": torch.tensor([0.0, 1.0, 0.0, 1.0])}
    a = TrainBatchAugment(cfg, seed=7)(batch, 2, 5)["image"]
    b = TrainBatchAugment(cfg, seed=7)(batch, 2, 5)["image"]  # a fresh object: as after a restart
    assert torch.equal(a, b)
    for other in (TrainBatchAugment(cfg, seed=7)(batch, 2, 6), TrainBatchAugment(cfg, seed=7)(batch, 3, 5),
                  TrainBatchAugment(cfg, seed=8)(batch, 2, 5), TrainBatchAugment(cfg, seed=7, rank=1)(batch, 2, 5)):
        assert not torch.equal(a, other["image"])
    state = torch.random.get_rng_state()
    TrainBatchAugment(cfg, seed=7)(batch, 0, 0)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert batch["image"].dtype == torch.uint8 and a.dtype == torch.float32


def test_strength_two_widens_the_draws_of_positives_only():
    aug = BatchAugment(settings(p=1.0, rotate_limit=0, scale_limit=0, brightness_contrast=0.2))
    flat = torch.full((200, 1, 4, 4), 0.5)
    strength = torch.tensor([1.0, 2.0]).repeat(100)
    out = aug(flat, generator=torch.Generator().manual_seed(0), strength=strength)[:, 0, 0, 0]
    spread_weak, spread_strong = (out[0::2] - 0.5).abs().max(), (out[1::2] - 0.5).abs().max()
    assert spread_weak <= 0.5 * 0.2 + 0.2 + 1e-6 < spread_strong  # |x·α + β − x| ≤ 0.5·l + l at strength 1
    cfg = OmegaConf.create({"augment": {"p": 1.0, "rotate_limit": 0, "scale_limit": 0, "brightness_contrast": 0.2}})
    batch = {"image": (flat * 255).to(torch.uint8), "cardiomegaly": torch.tensor([0.0, 1.0]).repeat(100)}
    strong = TrainBatchAugment(cfg, seed=0, strong_positives=True)(batch, 0, 0)["image"][:, 0, 0, 0]
    plain = TrainBatchAugment(cfg, seed=0)(batch, 0, 0)["image"][:, 0, 0, 0]
    assert torch.equal(strong[0::2], plain[0::2]) and not torch.equal(strong[1::2], plain[1::2])


def test_channels_last_when_the_trainer_asks():
    cfg = OmegaConf.create({"augment": {"p": 1.0}})
    out = TrainBatchAugment(cfg, seed=0, channels_last=True)({"image": square_batch(2)}, 0, 0)["image"]
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("angle", [12.0, -12.0])
def test_fixed_parameters_match_albumentations_affine(angle, monkeypatch):
    """The GPU path's affine equals the CPU path's (same sign, same centre) up to uint8 rounding."""
    image = np.zeros((48, 48), np.uint8)
    image[8:30, 14:40] = 200
    image[34:44, 4:12] = 90
    aug = BatchAugment(settings(p=1.0, rotate_limit=abs(angle), scale_limit=0.1, brightness_contrast=0))
    u = torch.full((1, N_DRAWS), 0.5, dtype=torch.float64)
    u[0, 0], u[0, 3], u[0, 4] = 0.0, 1.0 if angle > 0 else 0.0, 1.0  # gate on, ±limit, x scale 1.1
    monkeypatch.setattr(aug, "draws", lambda n, generator=None: u.repeat(n, 1))
    out = aug(torch.from_numpy(image)[None, None])[0, 0].numpy()
    ref = A.Affine(rotate=(angle, angle), scale={"x": (1.1, 1.1), "y": (1.0, 1.0)},
                   border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)(image=image)["image"] / 255.0
    assert np.abs(out - ref).mean() < 0.01 and np.quantile(np.abs(out - ref), 0.97) < 0.05


def test_gpu_augment_flag_must_be_boolean():
    assert gpu_augment_enabled(OmegaConf.create({})) is False
    assert gpu_augment_enabled(OmegaConf.create({"gpu_augment": True})) is True
    with pytest.raises(ConfigError, match="data.gpu_augment"):
        gpu_augment_enabled(OmegaConf.create({"gpu_augment": "yes"}))


def test_checkpoints_do_not_carry_the_training_only_switch():
    """evaluate/explain/predict run on the checkpoint's data config: gpu_augment must not come along
    (`evaluate data.split=train` would otherwise feed the model uint8 images)."""
    from cxrssl.models.embedded_config import safe_data_config

    data = safe_data_config({"gpu_augment": True, "image_size": 64, "pin_memory": "auto"})
    assert data == {"image_size": 64, "pin_memory": "auto"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_result():
    """Same (seed, epoch, step) on CUDA and CPU: same parameters (drawn on the CPU), same pixels up to
    float rounding; output stays on the device, in channels_last when asked."""
    cfg = OmegaConf.create({"augment": {"p": 0.7, "rotate_limit": 15, "scale_limit": 0.1, "translate_limit": 0.05,
                                        "brightness_contrast": 0.2, "hflip": True}})
    images = torch.randint(0, 256, (32, 1, 64, 64), dtype=torch.uint8)
    labels = (torch.arange(32) % 2).float()
    aug = TrainBatchAugment(cfg, seed=3, strong_positives=True, channels_last=True)
    cpu = aug({"image": images, "cardiomegaly": labels}, 1, 2)["image"]
    on_device = {"image": images.cuda(), "cardiomegaly": labels.cuda()}
    aug(on_device, 0, 0)  # CUDA's lazy initialisation may synchronise once
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation in the step raises
    try:
        gpu = aug(on_device, 1, 2)["image"]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert gpu.is_cuda and gpu.dtype == torch.float32 and gpu.is_contiguous(memory_format=torch.channels_last)
    assert (gpu.cpu() - cpu).abs().max() < 1e-3


def test_no_op_that_would_make_the_host_wait_for_the_gpu():
    """On the CPU we can still see the ops: none reads a value back (item, nonzero, a checked inverse)
    and none builds a tensor from Python data (a blocking host→device copy on CUDA)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    cfg = OmegaConf.create({"augment": {"p": 0.7, "rotate_limit": 15, "scale_limit": 0.1, "translate_limit": 0.05,
                                        "brightness_contrast": 0.2, "hflip": True}})
    batch = {"image": square_batch(8, 32, 6), "cardiomegaly": (torch.arange(8) % 2).float()}
    aug = TrainBatchAugment(cfg, seed=0, strong_positives=True, channels_last=True)
    with Ops() as ops:
        aug(batch, 0, 1)
    assert "grid_sampler_2d" in ops.names  # the warp really ran inside the mode
    syncing = {"_local_scalar_dense", "nonzero", "linalg_inv", "linalg_inv_ex", "_linalg_check_errors", "lift_fresh",
               "masked_select", "unique", "_unique2", "equal", "is_nonzero"}
    assert not ops.names & syncing


def test_affine_equals_kornias_warp_of_the_same_map():
    """`affine_theta` writes out the inverse that kornia's get_affine_matrix2d + warp_affine compute
    (the implementation until 2026-11-27): same draws, same pixels, square and non-square images."""
    kornia = pytest.importorskip("kornia")
    s = settings(p=1.0, rotate_limit=25, scale_limit=0.2, translate_limit=0.1, brightness_contrast=0)
    for h, w in ((40, 40), (36, 60)):
        images = torch.randint(0, 256, (32, 1, h, w), dtype=torch.uint8)
        aug = BatchAugment(s)
        u = aug.draws(32, torch.Generator().manual_seed(4)).float()
        sym = lambda col, limit: (2 * u[:, col] - 1) * limit
        matrix = kornia.geometry.transform.get_affine_matrix2d(
            torch.stack([sym(6, 0.1) * w, sym(7, 0.1) * h], 1),
            torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).repeat(32, 1),
            torch.stack([1 + sym(4, 0.2), 1 + sym(5, 0.2)], 1), -sym(3, 25))[:, :2]
        reference = kornia.geometry.transform.warp_affine(images.float() / 255, matrix, (h, w), mode="bilinear",
                                                          padding_mode="zeros", align_corners=True)
        out = aug(images, generator=torch.Generator().manual_seed(4))
        assert (out - reference).abs().max() < 1e-4


def test_few_device_ops_per_batch():
    """Every op on the image's device is a kernel launch the host pays on each training step (on an
    H200 the resnet18 step is host-bound): the per-image parameters are computed on the CPU and sent
    in one copy, so only the pixel work runs on the device. Counted on the meta device (a stand-in
    for CUDA: same ops, no data): 21 ops, 6 of them views; kornia's path put ~240 there."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        device_ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_leaves((args, kwargs))):
                Count.device_ops += 1
            return func(*args, **(kwargs or {}))

    cfg = OmegaConf.create({"augment": {"p": 0.7, "rotate_limit": 15, "scale_limit": 0.1, "translate_limit": 0.05,
                                        "brightness_contrast": 0.2, "hflip": True}})
    aug = TrainBatchAugment(cfg, seed=0, channels_last=True)
    with Count():
        out = aug({"image": torch.empty(8, 1, 32, 32, dtype=torch.uint8, device="meta")}, 0, 1)["image"]
    assert out.device.type == "meta" and out.shape == (8, 1, 32, 32)
    assert 10 < Count.device_ops <= 30, Count.device_ops
