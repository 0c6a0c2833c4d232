"""Several augmented views of one radiograph, for the joint-embedding pretexts (SimCLR, MoCo,
BYOL, DINO).

Why chest-X-ray specific: the views must differ in what the encoder should ignore (framing,
exposure, sharpness, detector noise) and agree in what it should keep (anatomy). So: random
resized crops with a scale range that keeps most of the thorax for the global views, small
rotations, brightness/contrast/gamma, blur and noise — and no horizontal flip by default
(the heart belongs on the left; dextrocardia is a finding) and no colour jitter (one channel).

Deterministic: the views of image ``index`` in epoch ``epoch`` depend only on
``(seed, epoch, index)``, whatever the worker count, so a resumed run sees the same views. The
epoch lives in a shared-memory tensor so persistent DataLoader workers see ``set_epoch``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

#: ``pretext.views.*`` keys and their defaults.
VIEW_DEFAULTS: dict[str, Any] = {
    "n_global": 2, "n_local": 0,
    "global_scale": [0.35, 1.0], "local_scale": [0.08, 0.35], "local_size": 0.5,  # local: share of image_size
    "ratio": [0.8, 1.25], "rotate_limit": 10.0, "brightness_contrast": 0.25, "gamma": [80, 120],
    "blur_p": 0.3, "blur_sigma": [0.1, 1.5], "noise_p": 0.3, "noise_std": [0.01, 0.04],
    "p": 0.8, "hflip": False,
}


def view_settings(views_cfg: Mapping | None) -> dict[str, Any]:
    """Defaults filled in; an unknown key is an error (a typo would silently change the views)."""
    views_cfg = dict(views_cfg or {})
    unknown = sorted(set(views_cfg) - set(VIEW_DEFAULTS))
    if unknown:
        raise ValueError(f"pretext.views: unknown key(s) {unknown}; allowed: {sorted(VIEW_DEFAULTS)}")
    out = {k: views_cfg.get(k, v) if views_cfg.get(k) is not None else v for k, v in VIEW_DEFAULTS.items()}
    if int(out["n_global"]) < 1 or int(out["n_global"]) + int(out["n_local"]) < 2:
        raise ValueError(f"pretext.views: n_global={out['n_global']}, n_local={out['n_local']}: need at "
                         "least one global view and two views in all")
    for key in ("global_scale", "local_scale"):
        lo, hi = (float(v) for v in out[key])
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"pretext.views.{key}={list(out[key])}: need 0 < min <= max <= 1")
    return out


def _pipeline(size: int, scale, s: dict[str, Any]):
    import albumentations as A

    p = float(s["p"])
    light = float(s["brightness_contrast"])
    steps = [
        A.RandomResizedCrop(size=(size, size), scale=tuple(float(v) for v in scale),
                            ratio=tuple(float(v) for v in s["ratio"]), interpolation=cv2.INTER_AREA, p=1.0),
        A.Rotate(limit=float(s["rotate_limit"]), border_mode=cv2.BORDER_CONSTANT, fill=0, p=p),
        A.RandomBrightnessContrast(brightness_limit=light, contrast_limit=light, p=p),
        A.RandomGamma(gamma_limit=tuple(float(v) for v in s["gamma"]), p=p),
        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=tuple(float(v) for v in s["blur_sigma"]),
                       p=float(s["blur_p"])),
        A.GaussNoise(std_range=tuple(float(v) for v in s["noise_std"]), p=float(s["noise_p"])),
    ]
    if s["hflip"]:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, seed=0)


class MultiViewTransform:
    """uint8 H×W image → list of float32 1×S×S tensors in [0, 1]: ``n_global`` views at
    ``image_size`` first, then ``n_local`` smaller ones (DINO's multi-crop)."""

    def __init__(self, views_cfg: Mapping | None, image_size: int, seed: int = 0):
        self.settings = s = view_settings(views_cfg)
        self.seed = int(seed)
        self.global_size = int(image_size)
        local = float(s["local_size"])
        self.local_size = int(round(local * image_size)) if local <= 1 else int(local)
        self.n_global, self.n_local = int(s["n_global"]), int(s["n_local"])
        self._global = _pipeline(self.global_size, s["global_scale"], s)
        self._local = _pipeline(self.local_size, s["local_scale"], s) if self.n_local else None

    def __call__(self, image: np.ndarray, index: int, epoch: int = 0) -> list[torch.Tensor]:
        states = np.random.SeedSequence([self.seed, int(epoch), int(index)]).generate_state(
            self.n_global + self.n_local)
        views = []
        for i, state in enumerate(states):
            pipe = self._global if i < self.n_global else self._local
            pipe.set_random_seed(int(state))
            out = pipe(image=image)["image"]
            views.append(torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32) / 255.0).unsqueeze(0))
        return views


class MultiViewDataset(Dataset):
    """Wraps a ``CXRDataset``: its sample (the plain ``image`` and labels, for monitoring) plus
    ``views``, a list the default collate turns into one batched tensor per view.

    ``fixed_epoch`` (validation) pins the views to epoch 0 so the validation loss is comparable
    across epochs."""

    def __init__(self, base: Dataset, transform: MultiViewTransform, fixed_epoch: int | None = None):
        self.base, self.transform, self.fixed_epoch = base, transform, fixed_epoch
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)
        if hasattr(self.base, "set_epoch"):  # the plain `image` follows the epoch too
            self.base.set_epoch(epoch)

    def set_seed(self, seed: int) -> None:  # worker seeding: only the base's single-view pipeline uses it
        if hasattr(self.base, "set_seed"):
            self.base.set_seed(seed)

    def __getattr__(self, name: str):  # table, image_size, ... of the wrapped dataset
        if name in ("base", "transform", "fixed_epoch", "_epoch"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        epoch = self.fixed_epoch if self.fixed_epoch is not None else int(self._epoch[0])
        sample["views"] = self.transform(self.base._image(index), index, epoch)
        return sample


def with_views(loaders: dict[str, DataLoader], views_cfg: Mapping | None, image_size: int,
               seed: int) -> dict[str, DataLoader]:
    """The same loaders (sampler, batch size, workers, generator) over ``MultiViewDataset``s.
    Training views change with the epoch (the loop calls ``dataset.set_epoch``); validation views
    are fixed. Which loaders train follows the wrapped dataset's ``train`` flag (set by
    ``build_dataloaders(train_splits=...)``), not the split's name."""
    out = {}
    for index, (split, loader) in enumerate(loaders.items()):
        train = bool(getattr(loader.dataset, "train", split == "train"))
        transform = MultiViewTransform(views_cfg, image_size, seed=seed * 1009 + index)
        dataset = MultiViewDataset(loader.dataset, transform, fixed_epoch=None if train else 0)
        workers = loader.num_workers
        out[split] = DataLoader(dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                                drop_last=loader.drop_last, num_workers=workers, collate_fn=loader.collate_fn,
                                pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                                multiprocessing_context=loader.multiprocessing_context if workers else None,
                                persistent_workers=loader.persistent_workers and workers > 0,
                                generator=loader.generator)
    return out
