"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains *the model* must change when the model's weights are destroyed. We
re-initialise the weights cascading from the head down through the encoder stages, then the whole
network, recompute the maps and measure the Spearman rank correlation with the trained maps per
image (on raw and absolute values). A method **passes** when, after full randomisation, the median
of both |raw| and absolute-value correlations is below `threshold`: an edge detector that ignores
the model keeps correlation ~1 and fails.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrssl.explain.attributions import Method, compute_attributions, method_name


def _cascade(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) from the output down: head, encoder stages (deepest first), then the whole model."""
    names = {id(m): n for n, m in model.named_modules()}
    levels: list[tuple[str, nn.Module]] = []
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        levels.append(("head", head))
    encoder = getattr(model, "encoder", None)
    for stage in reversed(list(getattr(encoder, "stages", []) or [])):
        if any(True for _ in stage.parameters()):
            levels.append((names.get(id(stage), type(stage).__name__), stage))
    levels.append(("all", model))
    return levels


def reinitialise(module: nn.Module) -> None:
    """Fresh random weights for every sub-module (their own init; N(0, 0.02) where there is none)."""
    done: set[int] = set()
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
            done.update(id(p) for p in sub.parameters(recurse=False))
    with torch.no_grad():
        for param in module.parameters():
            if id(param) not in done:
                param.normal_(0.0, 0.02)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; a constant map carries no ranking (0, or 1 if both are)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if (flat_a and flat_b) else 0.0
    return float(spearmanr(a, b).statistic)


def _layer_name(model: nn.Module, layer: str | nn.Module | None) -> str | None:
    if not isinstance(layer, nn.Module):
        return layer
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("explain layer module is not part of the model")


def randomisation_sanity(model: nn.Module, images: torch.Tensor, method: Method, *, threshold: float = 0.5,
                         cascade: bool = True, seed: int = 0, trained_maps: np.ndarray | None = None,
                         layer: str | nn.Module | None = None, **attr_kwargs) -> dict:
    """Spearman correlation between trained and randomised maps, per cascade level and image.

    Returns {method, median_spearman, median_spearman_abs, passes, threshold, levels: DataFrame
    (level, image, spearman, spearman_abs)}; the medians are those of full randomisation ("all").
    """
    layer = _layer_name(model, layer)
    kwargs = dict(attr_kwargs, layer=layer, progress=attr_kwargs.get("progress", False))
    if trained_maps is None:
        trained_maps = compute_attributions(model, images, method, **kwargs)
    randomised = copy.deepcopy(model)
    levels = _cascade(randomised)
    if not cascade:
        levels = levels[-1:]
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for level, module in levels:
            reinitialise(module)
            maps = compute_attributions(randomised, images, method, **kwargs)
            for i, (before, after) in enumerate(zip(trained_maps, maps)):
                rows.append({"level": level, "image": i, "spearman": _spearman(before, after),
                             "spearman_abs": _spearman(np.abs(before), np.abs(after))})
    table = pd.DataFrame(rows)
    final = table[table["level"] == "all"]
    med, med_abs = float(final["spearman"].median()), float(final["spearman_abs"].median())
    return {"method": method_name(method), "median_spearman": med, "median_spearman_abs": med_abs,
            "passes": bool(max(abs(med), med_abs) < threshold), "threshold": threshold, "levels": table}


def sanity_table(model: nn.Module, images: torch.Tensor, methods: Sequence[Method], *, threshold: float = 0.5,
                 cascade: bool = False, trained: dict[str, np.ndarray] | None = None,
                 **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per method (median correlations, passes) and the per-level medians of every method."""
    summary, per_level = [], []
    for method in methods:
        name = method_name(method)
        result = randomisation_sanity(model, images, method, threshold=threshold, cascade=cascade,
                                      trained_maps=(trained or {}).get(name), **kwargs)
        levels = result.pop("levels")
        summary.append({**result, "n_images": int(len(images))})
        medians = levels.groupby("level", sort=False)[["spearman", "spearman_abs"]].median().reset_index()
        per_level.append(medians.assign(method=name))
    return pd.DataFrame(summary), pd.concat(per_level, ignore_index=True)
