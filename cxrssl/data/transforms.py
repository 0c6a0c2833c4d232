"""Albumentations pipelines built from the data config.

Two stages: ``build_preprocess`` is deterministic (resize to ``data.image_size`` by
``data.resize_mode``, then ``data.equalize``) and works on uint8, so its output is exactly what the
preprocessed cache stores; ``build_augment`` is the random, train-only part plus the conversion
to a float32 1×H×W tensor in [0, 1]. No horizontal flip unless ``data.augment.hflip``: flipping
puts the heart on the wrong side. Albumentations is imported inside the functions (CLI start-up).
"""
from __future__ import annotations

from typing import Any

import cv2

# OpenCV's own thread pool does not survive fork(): a DataLoader worker forked after the parent
# used cv2 (cache build, a workers=0 loader) can hang forever in its first resize/warp (seen in
# tests/engine/test_exact_resume.py). Loader workers and the cache builder's threads are the
# parallelism, so cv2 runs single-threaded inside each.
cv2.setNumThreads(0)

from cxrssl.errors import ConfigError
from cxrssl.common import cfg_get as _get

RESIZE_MODES = ("letterbox", "crop", "stretch")
EQUALIZE_MODES = ("none", "clahe", "hist")
#: ``data.augment.*`` keys and their defaults (the original: small rotations and zooms).
AUGMENT_DEFAULTS: dict[str, Any] = {
    "enabled": True, "rotate_limit": 7.0, "scale_limit": 0.08, "translate_limit": 0.0,
    "brightness_contrast": 0.1, "p": 0.5, "hflip": False,
}

def preprocess_settings(data_cfg: Any) -> dict[str, Any]:
    """The settings that change preprocessed pixels (and therefore the cache key)."""
    size = int(_get(data_cfg, "image_size", 224))
    resize_mode = str(_get(data_cfg, "resize_mode", "letterbox"))
    equalize = str(_get(data_cfg, "equalize", "none"))
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"data.resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if equalize not in EQUALIZE_MODES:
        raise ConfigError(f"data.equalize must be one of {EQUALIZE_MODES}, got {equalize!r}")
    if size < 8:
        raise ConfigError(f"data.image_size must be at least 8, got {size}")
    clip = float(_get(data_cfg, "clahe_clip", 2.0))
    if not clip >= 1.0:  # albumentations refuses < 1 per image: every image would fail to cache
        raise ConfigError(f"data.clahe_clip must be a number >= 1 (CLAHE contrast limit), got {clip}")
    return {"image_size": size, "resize_mode": resize_mode, "equalize": equalize,
            "clahe_clip": clip}


def build_preprocess(data_cfg: Any):
    """uint8 H×W (any size) → uint8 ``image_size``² (masks follow with nearest neighbour)."""
    import albumentations as A

    settings = preprocess_settings(data_cfg)
    size, mode = settings["image_size"], settings["resize_mode"]
    equalize = {
        "none": [],
        "clahe": [A.CLAHE(clip_limit=(settings["clahe_clip"],) * 2, tile_grid_size=(8, 8), p=1.0)],
        "hist": [A.Equalize(mode="cv", p=1.0)],
    }[settings["equalize"]]
    area = cv2.INTER_AREA  # the right filter for the large downscales X-rays need
    if mode == "letterbox":  # equalise before padding so the black bars do not skew the histogram
        steps = [A.LongestMaxSize(max_size=size, interpolation=area), *equalize,
                 A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT,
                               fill=0, fill_mask=0)]
    elif mode == "crop":
        steps = [A.SmallestMaxSize(max_size=size, interpolation=area),
                 A.CenterCrop(height=size, width=size), *equalize]
    else:
        steps = [A.Resize(height=size, width=size, interpolation=area), *equalize]
    return A.Compose(steps, seed=0)


def augment_settings(data_cfg: Any) -> dict[str, Any]:
    """``data.augment`` with defaults filled in; unknown keys are an error (a typo would
    otherwise silently switch an augmentation off)."""
    augment = _get(data_cfg, "augment", None) or {}
    unknown = sorted(set(augment.keys()) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"data.augment: unknown key(s) {unknown}; allowed: {sorted(AUGMENT_DEFAULTS)}")
    return {key: _get(augment, key, default) for key, default in AUGMENT_DEFAULTS.items()}


def build_augment(data_cfg: Any, train: bool, seed: int = 0, strength: float = 1.0):
    """uint8 ``image_size``² (+ mask) → float32 1×H×W tensor in [0, 1]; random only when training.
    ``strength`` scales every limit (the oversampling strategy's stronger augmentation of positives)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    steps = []
    settings = augment_settings(data_cfg)
    if train and settings["enabled"]:
        p = float(settings["p"])
        rotate, scale = strength * float(settings["rotate_limit"]), strength * float(settings["scale_limit"])
        shift = strength * float(settings["translate_limit"])
        light = strength * float(settings["brightness_contrast"])
        steps.append(A.Affine(rotate=(-rotate, rotate), scale=(1 - scale, 1 + scale),
                              translate_percent=(-shift, shift), border_mode=cv2.BORDER_CONSTANT,
                              fill=0, fill_mask=0, p=p))
        steps.append(A.RandomBrightnessContrast(brightness_limit=light, contrast_limit=light, p=p))
        if settings["hflip"]:
            steps.append(A.HorizontalFlip(p=0.5))
    steps += [A.ToFloat(max_value=255.0), ToTensorV2()]
    return A.Compose(steps, seed=seed)


def reseed(pipeline, seed: int) -> None:
    """Give `pipeline` (an albumentations Compose) and every transform in it ONE shared fresh
    numpy Generator and `random.Random` seeded with `seed`. Called per training sample with a seed
    derived from (seed, epoch, index), it makes augmentation a pure function of those — the same
    with 0 or N workers and across restarts. ~4× cheaper than `Compose.set_random_seed`, which builds
    a generator pair per transform (and gives them all the same stream)."""
    import random

    import numpy as np

    rng, py_random = np.random.Generator(np.random.PCG64(seed)), random.Random(seed)
    stack = [pipeline]
    while stack:
        transform = stack.pop()
        transform.random_generator, transform.py_random = rng, py_random
        stack.extend(getattr(transform, "transforms", None) or [])


def build_transforms(data_cfg: Any, train: bool, seed: int = 0):
    """Full pipeline (preprocess + augment) for images decoded to uint8 at native size."""
    import albumentations as A

    return A.Compose([*build_preprocess(data_cfg).transforms,
                      *build_augment(data_cfg, train, seed).transforms], seed=seed)
