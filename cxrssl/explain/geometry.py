"""Where a localisation score's floor and ceiling lie, so a reader can judge the model's number.

* **Layer by resolution.** Grad-CAM's map has the resolution of the layer it reads: a stride-32
  stage gives a 2×2 grid at 64 px, and after bilinear upsampling its peak can only fall on four
  points, whatever the model learnt. `choose_layer` takes the deepest encoder stage whose grid is
  at least 7×7 at the run's image size; the pointing game is skipped below 4×4.
* **Ceiling.** `oracle_map` builds the best map a method limited to a `grid` can draw: the true mask
  averaged onto that grid and upsampled exactly as Grad-CAM's map is (bilinear). Its score is what a
  perfect model would get at that resolution.
* **Floor.** `prior_map` is the mean training heart mask: a fixed map that knows where hearts usually
  are and nothing about this image.
* **Second region.** `ctr_region` is the heart plus the two ends of the inner thoracic diameter
  (the lung mask's widest row): what a reader measures to call cardiomegaly (CTR > 0.5).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

#: Zhang et al. (2016): the pointing game allows 15 px of slack at 224 px.
POINTING_TOLERANCE_PX = 15
POINTING_REFERENCE_SIZE = 224
MIN_GRID = 7           # default-layer rule: deepest stage whose grid is at least this
MIN_POINTING_GRID = 4  # below this the pointing game measures geometry, not the model


def scaled_tolerance(image_size: int, tolerance: float = POINTING_TOLERANCE_PX,
                     reference_size: int | None = POINTING_REFERENCE_SIZE) -> int:
    """Pointing-game slack in pixels at `image_size` (15 px at 224 px → 9 px at 128, 4 px at 64)."""
    if reference_size is None:
        return int(round(tolerance))
    return int(round(float(tolerance) * image_size / reference_size))


def stage_grids(model: nn.Module, image_size: int) -> list[tuple[str, tuple[int, int]]]:
    """(module name, (h, w)) of every encoder stage, input → output, from one dummy forward pass."""
    encoder = getattr(model, "encoder", None)
    stages = list(getattr(encoder, "stages", []) or [])
    if not stages:
        return []
    names = {id(m): n for n, m in model.named_modules()}
    grids: dict[int, tuple[int, int]] = {}
    hooks = [s.register_forward_hook(lambda m, i, o: grids.__setitem__(id(m), tuple(_first(o).shape[-2:])))
             for s in stages]
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return [(names[id(s)], grids[id(s)]) for s in stages if id(s) in grids]


def _first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def choose_layer(model: nn.Module, image_size: int, min_grid: int = MIN_GRID) -> tuple[str, tuple[int, int]]:
    """The deepest stage with a grid ≥ `min_grid`² at `image_size` (else the finest one there is)."""
    grids = stage_grids(model, image_size)
    if not grids:
        raise ValueError(f"{type(model).__name__} has no encoder stages to choose a Grad-CAM layer from; "
                         "pass explain.layer=<module name>")
    for name, grid in reversed(grids):
        if min(grid) >= min_grid:
            return name, grid
    return max(grids, key=lambda item: min(item[1]))


def layer_grid(model: nn.Module, layer: str, image_size: int) -> tuple[int, int]:
    """Feature-grid (h, w) of a named module at `image_size`."""
    module = model.get_submodule(layer)
    seen: list[tuple[int, int]] = []
    hook = module.register_forward_hook(lambda m, i, o: seen.append(tuple(_first(o).shape[-2:])))
    try:
        param = next(model.parameters(), None)
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, image_size, image_size, device=param.device if param is not None else "cpu"))
    finally:
        hook.remove()
    if not seen:
        raise ValueError(f"explain.layer={layer!r} is not used in the forward pass")
    return seen[0]


def oracle_map(mask: np.ndarray, grid: Sequence[int] | None = None) -> np.ndarray:
    """The true mask as a map of resolution `grid` (area-averaged, then bilinear back up as captum's
    `LayerAttribution.interpolate`); `grid=None` is the mask itself (pixel-level methods)."""
    mask = np.squeeze(np.asarray(mask, dtype=np.float32))
    if grid is None or tuple(grid) == mask.shape:
        return mask.copy()
    t = torch.from_numpy(mask)[None, None]
    small = torch.nn.functional.adaptive_avg_pool2d(t, tuple(int(g) for g in grid))
    return torch.nn.functional.interpolate(small, size=mask.shape, mode="bilinear")[0, 0].numpy()


def prior_map(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray | None:
    """Mean of the (training) heart masks that exist: P(pixel is heart) before seeing an image."""
    usable = [np.squeeze(np.asarray(m, dtype=np.float32)) for m in masks if m is not None]
    usable = [m for m in usable if np.isfinite(m).all() and (m > 0.5).any()]
    if not usable:
        return None
    return np.mean([(m > 0.5).astype(np.float32) for m in usable], axis=0)


def ctr_region(heart: np.ndarray, lungs: np.ndarray | None, radius: int | None = None) -> np.ndarray | None:
    """Heart ∪ disks at both ends of the lungs' widest row (the inner thoracic diameter's borders).

    `radius` defaults to 5 % of the image height. None when either mask is missing.
    """
    from cxrssl.explain.localisation import has_mask

    if not has_mask(heart) or lungs is None or not has_mask(lungs):
        return None
    heart = np.squeeze(np.asarray(heart)) > 0.5
    on = np.squeeze(np.asarray(lungs)) > 0.5
    rows = np.flatnonzero(on.any(axis=1))
    spans = [(np.flatnonzero(on[r])[[0, -1]], r) for r in rows]
    (left, right), row = max(spans, key=lambda s: s[0][1] - s[0][0])
    radius = max(1, round(0.05 * heart.shape[0])) if radius is None else int(radius)
    yy, xx = np.mgrid[: heart.shape[0], : heart.shape[1]]
    ends = ((yy - row) ** 2 + (xx - left) ** 2 <= radius ** 2) | ((yy - row) ** 2 + (xx - right) ** 2 <= radius ** 2)
    return (heart | ends).astype(np.float32)


def wilson_interval(hits: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a hit rate (statsmodels); NaNs when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(int(hits), int(n), alpha=alpha, method="wilson")
    return float(low), float(high)
