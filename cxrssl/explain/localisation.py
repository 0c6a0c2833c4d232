"""Does an attribution map point at the heart? Checks against a binary heart mask.

Each score comes with the mask's area share: a map that spreads evidence uniformly has
`energy_inside == area_share`, and a random point hits the mask with probability `area_share`, so
"better than chance" means a pointing hit rate / energy share clearly above that number.
"""
from __future__ import annotations

import numpy as np


def has_mask(mask: np.ndarray | None) -> bool:
    """Rows without a mask come as NaN-filled arrays (design.md §2)."""
    return mask is not None and np.isfinite(mask).all() and bool((np.asarray(mask) > 0.5).any())


def _binary(mask: np.ndarray, attr: np.ndarray) -> np.ndarray:
    mask = np.squeeze(np.asarray(mask))
    attr = np.squeeze(np.asarray(attr))
    if mask.shape != attr.shape:
        raise ValueError(f"mask shape {mask.shape} does not match attribution shape {attr.shape}")
    if not np.isfinite(mask).all():
        raise ValueError("mask has NaNs (this row has no heart mask); check `has_mask` first")
    return mask > 0.5


def mask_area_share(mask: np.ndarray) -> float:
    """Share of the image covered by the mask: the chance level for both scores below."""
    return float((np.asarray(mask) > 0.5).mean())


def peak_location(attr: np.ndarray) -> tuple[int, int] | None:
    """Row/column of the maximum; a plateau (upsampled Grad-CAM) gives its centroid; a flat map None."""
    attr = np.squeeze(np.asarray(attr, dtype=np.float64))
    top, bottom = attr.max(), attr.min()
    if not np.isfinite(top) or top == bottom:
        return None
    rows, cols = np.nonzero(attr >= top - 1e-6 * (top - bottom))
    return int(round(rows.mean())), int(round(cols.mean()))


def pointing_game(attr: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the attribution's peak lies in the mask (or within `tolerance` pixels of it).

    Zhang et al. 2016 use a 15 px tolerance at 224 px; a flat map never hits.
    """
    inside = _binary(mask, attr)
    peak = peak_location(attr)
    if peak is None:
        return False
    if tolerance > 0:
        import cv2

        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
        inside = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool)
    return bool(inside[peak])


def energy_inside(attr: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive attribution mass inside the mask (NaN when there is none)."""
    inside = _binary(mask, attr)
    positive = np.clip(np.squeeze(np.asarray(attr, dtype=np.float64)), 0, None)
    total = positive.sum()
    return float(positive[inside].sum() / total) if total > 0 else float("nan")


def localisation_scores(attr: np.ndarray, mask: np.ndarray | None, tolerance: int = 0) -> dict[str, float]:
    """{pointing_hit, energy_inside, mask_area}; NaNs when the image has no mask."""
    if not has_mask(mask):
        return {"pointing_hit": float("nan"), "energy_inside": float("nan"), "mask_area": float("nan")}
    return {"pointing_hit": float(pointing_game(attr, mask, tolerance)), "energy_inside": energy_inside(attr, mask),
            "mask_area": mask_area_share(mask)}
