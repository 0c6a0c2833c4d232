"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains *the model* must change when the model's weights are destroyed. We
re-initialise the weights cascading from the head down through the encoder stages, then the whole
network ("cascade"; or only the whole network, "full"), recompute the maps and measure the Spearman
rank correlation with the trained maps per image (on raw and absolute values).

The verdict has a reference rather than a fixed cut-off: two model-independent maps of the same
film, its **intensity** and its **edge map** (Sobel magnitude), are correlated with the trained
maps too. A method **passes** only when its maps change under full randomisation by more than the
distance to the closest reference, i.e. the randomised model's map resembles the trained map *less*
than a map computed from the image alone does. A method whose maps are flat (no ranking, ρ = 0 by
construction) for most images is **degenerate**, never a pass.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrssl.explain.attributions import Method, compute_attributions, method_name

SANITY_MODES = ("cascade", "full", "off")
REFERENCES = ("intensity", "edges")


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


def sanity_mode(value) -> str:
    """`explain.sanity`: cascade | full | off (true → full, false → off, for older configs)."""
    if value is True or value is None:
        return "full"
    if value is False:
        return "off"
    mode = str(value).lower()
    if mode not in SANITY_MODES:
        raise ValueError(f"explain.sanity={value!r}: use one of {', '.join(SANITY_MODES)}")
    return mode


def is_flat(attr: np.ndarray) -> bool:
    """A map with no ranking to compare (all equal, e.g. a ReLU'd Grad-CAM that is all zero)."""
    a = np.asarray(attr, dtype=np.float64)
    return not np.isfinite(a).all() or float(np.ptp(a)) <= 1e-12 * max(float(np.abs(a).max()), 1e-30)


def reference_maps(images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Model-independent maps of each film: its intensity and its Sobel edge magnitude (B, H, W)."""
    from scipy import ndimage

    arr = np.asarray(torch.as_tensor(images).detach().cpu(), dtype=np.float64)[:, 0]
    edges = np.stack([np.hypot(ndimage.sobel(a, 0), ndimage.sobel(a, 1)) for a in arr])
    return {"intensity": arr.astype(np.float32), "edges": edges.astype(np.float32)}


def _similarity(rows: list[tuple[float, float]]) -> float:
    """max(|median ρ|, median ρ of |maps|): how alike two sets of maps are, sign-agnostic."""
    raw = np.median([r[0] for r in rows]) if rows else np.nan
    absolute = np.median([r[1] for r in rows]) if rows else np.nan
    return float(max(abs(raw), absolute))


def randomisation_sanity(model: nn.Module, images: torch.Tensor, method: Method, *, cascade: bool = True,
                         seed: int = 0, trained_maps: np.ndarray | None = None,
                         layer: str | nn.Module | None = None, **attr_kwargs) -> dict:
    """Trained vs randomised maps, per cascade level and image, judged against the references.

    Returns {method, median_spearman, median_spearman_abs (full randomisation), similarity_randomised,
    similarity_intensity, similarity_edges, reference, similarity_reference, flat_trained,
    flat_randomised (shares of images), verdict (pass | fail | degenerate), passes, levels: DataFrame
    (level, image, spearman, spearman_abs)}.
    """
    layer = _layer_name(model, layer)
    kwargs = dict(attr_kwargs, layer=layer, progress=attr_kwargs.get("progress", False))
    if trained_maps is None:
        trained_maps = compute_attributions(model, images, method, **kwargs)
    randomised = copy.deepcopy(model)
    levels = _cascade(randomised)
    if not cascade:
        levels = levels[-1:]
    rows, final_maps = [], None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for level, module in levels:
            reinitialise(module)
            final_maps = compute_attributions(randomised, images, method, **kwargs)
            for i, (before, after) in enumerate(zip(trained_maps, final_maps)):
                rows.append({"level": level, "image": i, "spearman": _spearman(before, after),
                             "spearman_abs": _spearman(np.abs(before), np.abs(after))})
    table = pd.DataFrame(rows)
    final = table[table["level"] == "all"]
    med, med_abs = float(final["spearman"].median()), float(final["spearman_abs"].median())
    refs = reference_maps(images)
    similarity = {name: _similarity([(_spearman(a, r), _spearman(np.abs(a), np.abs(r)))
                                     for a, r in zip(trained_maps, ref)]) for name, ref in refs.items()}
    closest = max(similarity, key=similarity.get)
    flat_trained = float(np.mean([is_flat(a) for a in trained_maps]))
    flat_random = float(np.mean([is_flat(a) for a in final_maps]))
    changed = max(abs(med), med_abs)
    if flat_trained >= 0.5 or flat_random >= 0.5:
        verdict = "degenerate"
    else:
        verdict = "pass" if changed < similarity[closest] else "fail"
    return {"method": method_name(method), "median_spearman": med, "median_spearman_abs": med_abs,
            "similarity_randomised": changed, "similarity_intensity": similarity["intensity"],
            "similarity_edges": similarity["edges"], "reference": closest,
            "similarity_reference": similarity[closest], "flat_trained": flat_trained,
            "flat_randomised": flat_random, "verdict": verdict, "passes": verdict == "pass", "levels": table}


def sanity_table(model: nn.Module, images: torch.Tensor, methods: Sequence[Method], *, cascade: bool = False,
                 trained: dict[str, np.ndarray] | None = None, progress: bool = False,
                 **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per method (verdict and its numbers) and the per-level medians of every method."""
    from tqdm.auto import tqdm

    summary, per_level = [], []
    for method in tqdm(list(methods), desc="sanity", disable=not progress, leave=False):
        name = method_name(method)
        result = randomisation_sanity(model, images, method, cascade=cascade,
                                      trained_maps=(trained or {}).get(name), **kwargs)
        levels = result.pop("levels")
        summary.append({**result, "n_images": int(len(images)), "mode": "cascade" if cascade else "full"})
        medians = levels.groupby("level", sort=False)[["spearman", "spearman_abs"]].median().reset_index()
        per_level.append(medians.assign(method=name, similarity_reference=result["similarity_reference"],
                                        reference=result["reference"]))
    return pd.DataFrame(summary), pd.concat(per_level, ignore_index=True)
