"""Per-image localisation rows with their ceiling and floor, and the per-group summary tables.

Every localisation number is written beside two others computed on the same image, region, grid
and tolerance: the **ceiling** (`geometry.oracle_map` of the true region at the method's grid) and
the **prior** (the mean training mask, a map that ignores the image). A model's score means
something only where it sits between those two.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrssl.explain.geometry import MIN_POINTING_GRID, oracle_map, wilson_interval
from cxrssl.explain.localisation import has_mask, localisation_scores

REGIONS = ("heart", "ctr")
REGION_LABELS = {"heart": "heart", "ctr": "heart + thoracic borders (CTR)"}
_SUFFIX = {"heart": "", "ctr": "_ctr"}
_NAN = float("nan")


def region_columns(region: str) -> list[str]:
    s = _SUFFIX[region]
    return [f"pointing_hit{s}", f"energy_inside{s}", f"mask_area{s}", f"ceiling_pointing{s}", f"ceiling_energy{s}",
            f"prior_pointing{s}", f"prior_energy{s}"]


def pointing_allowed(grid: Sequence[int] | None) -> bool:
    """Below 4×4 an upsampled map's peak can only land on a few fixed points: geometry, not model."""
    return grid is None or min(grid) >= MIN_POINTING_GRID


def score_image(attr: np.ndarray, regions: Mapping[str, np.ndarray | None], *, grid: Sequence[int] | None,
                tolerance: int, priors: Mapping[str, np.ndarray | None]) -> dict[str, float]:
    """Model, ceiling and prior scores of one map for each region (NaN where a mask is missing)."""
    row: dict[str, float] = {}
    allowed = pointing_allowed(grid)
    for region in REGIONS:
        s, mask = _SUFFIX[region], regions.get(region)
        if not has_mask(mask):
            row.update({c: _NAN for c in region_columns(region)})
            continue
        model = localisation_scores(attr, mask, tolerance)
        ceiling = localisation_scores(oracle_map(mask, grid), mask, tolerance)
        prior = priors.get(region)
        floor = (localisation_scores(prior, mask, tolerance) if prior is not None
                 else {"pointing_hit": _NAN, "energy_inside": _NAN})
        row.update({f"pointing_hit{s}": model["pointing_hit"] if allowed else _NAN,
                    f"energy_inside{s}": model["energy_inside"], f"mask_area{s}": model["mask_area"],
                    f"ceiling_pointing{s}": ceiling["pointing_hit"] if allowed else _NAN,
                    f"ceiling_energy{s}": ceiling["energy_inside"],
                    f"prior_pointing{s}": floor["pointing_hit"], f"prior_energy{s}": floor["energy_inside"]})
    return row


def summarise_localisation(per_image: pd.DataFrame, grids: Mapping[str, Sequence[int] | None] | None = None,
                           tolerance: int | None = None) -> pd.DataFrame:
    """Per method × group × region: n with a mask, pointing hit rate with its Wilson 95 % CI, energy
    inside, and the ceiling and prior of both; `note` says when the pointing game was skipped."""
    rows = []
    grids = grids or {}
    for (method, group), frame in per_image.groupby(["method", "group"], sort=False):
        grid = grids.get(method)
        for region in REGIONS:
            s = _SUFFIX[region]
            if f"energy_inside{s}" not in frame:
                continue
            scored = frame[frame[f"mask_area{s}"].notna()]
            hits = scored[f"pointing_hit{s}"].dropna()
            low, high = wilson_interval(int(hits.sum()), len(hits))
            note = "" if pointing_allowed(grid) else (f"pointing skipped: {grid[0]}×{grid[1]} grid < "
                                                      f"{MIN_POINTING_GRID}×{MIN_POINTING_GRID}")
            rows.append({"method": method, "group": group, "region": region, "n": len(frame),
                         "n_with_mask": len(scored), "grid": "pixel" if grid is None else f"{grid[0]}x{grid[1]}",
                         "tolerance_px": tolerance,
                         "pointing_hit_rate": _mean(hits), "pointing_ci_low": low, "pointing_ci_high": high,
                         "ceiling_pointing": _mean(scored[f"ceiling_pointing{s}"]),
                         "prior_pointing": _mean(scored[f"prior_pointing{s}"]),
                         "energy_inside": _mean(scored[f"energy_inside{s}"]),
                         "ceiling_energy": _mean(scored[f"ceiling_energy{s}"]),
                         "prior_energy": _mean(scored[f"prior_energy{s}"]),
                         "mask_area": _mean(scored[f"mask_area{s}"]), "note": note})
    return pd.DataFrame(rows)


def summarise_faithfulness(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per method × group: mean AUCs for each baseline, the random-order AUCs and the baseline's own
    probability (the film the deletion path ends on and the insertion path starts from)."""
    columns = [c for c in per_image.columns if c.startswith(("deletion_auc", "insertion_auc", "random_",
                                                             "baseline_probability"))]
    if not columns:
        return pd.DataFrame()
    grouped = per_image.groupby(["method", "group"], sort=False)
    table = grouped[["probability", *columns]].mean()
    table.insert(0, "n", grouped.size())
    return table.reset_index()


def _mean(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.mean()) if len(values) else _NAN


def occlusion_grid(height: int, window: int, stride: int) -> tuple[int, int]:
    """How many distinct occluder positions per side: occlusion's effective resolution."""
    n = max(1, math.ceil((height - window) / stride) + 1)
    return n, n
