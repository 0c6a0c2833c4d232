"""Deletion / insertion curves (Petsiuk et al. 2018, RISE): is the map faithful to the model?

Deletion removes the most-attributed pixels first (replacing them by the baseline) and tracks the
positive-class probability: a faithful map makes it fall fast (low AUC). Insertion starts from the
baseline and restores the most-attributed pixels first: it should rise fast (high AUC).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrssl.explain.attributions import PositiveScore, blur_images


def _baseline(images: torch.Tensor, baseline: str) -> torch.Tensor:
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        return blur_images(images)
    raise ValueError(f"baseline={baseline!r}: use 'blur' or 'zero'")


def _ranking(attr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices from most to least attributed; ties (flat ReLU'd regions) broken at random
    rather than in raster order, which would favour the top of the film."""
    flat = np.asarray(attr, dtype=np.float64).ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def _curve_inputs(image: torch.Tensor, base: torch.Tensor, order: np.ndarray, steps: int) -> torch.Tensor:
    """(2 * (steps + 1), 1, H, W): deletion images then insertion images for one film."""
    n_pixels = order.size
    counts = np.linspace(0, n_pixels, steps + 1).round().astype(int)
    rank = torch.empty(n_pixels, dtype=torch.long, device=image.device)
    rank[torch.as_tensor(order, device=image.device)] = torch.arange(n_pixels, device=image.device)
    rank = rank.view(image.shape[-2:])
    revealed = torch.stack([rank < c for c in counts]).unsqueeze(1)  # (steps+1, 1, H, W): top-c pixels
    deletion = torch.where(revealed, base, image)
    insertion = torch.where(revealed, image, base)
    return torch.cat([deletion, insertion])


@torch.no_grad()
def deletion_insertion_curves(model: nn.Module, images: torch.Tensor | np.ndarray, attrs: np.ndarray, *,
                              steps: int = 20, baseline: str = "blur", batch_size: int = 64,
                              device: str | torch.device = "cpu", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (B, steps + 1) along the deletion and insertion paths (x = share of pixels moved)."""
    images = torch.as_tensor(images, dtype=torch.float32)
    attrs = np.asarray(attrs)
    if attrs.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"attributions {attrs.shape} do not match images {tuple(images.shape)}")
    wrapped = PositiveScore(model.to(device).eval())
    rng = np.random.default_rng(seed)
    deletion, insertion = [], []
    for image, attr in zip(images.to(device), attrs):
        base = _baseline(image[None], baseline)[0]
        batch = _curve_inputs(image, base, _ranking(attr, rng), steps)
        probs = torch.cat([torch.sigmoid(wrapped(chunk)[:, 0]) for chunk in batch.split(batch_size)]).float().cpu()
        deletion.append(probs[: steps + 1].numpy())
        insertion.append(probs[steps + 1:].numpy())
    return np.stack(deletion), np.stack(insertion)


def deletion_insertion_auc(model: nn.Module, images: torch.Tensor | np.ndarray, attrs: np.ndarray, *,
                           steps: int = 20, baseline: str = "blur", batch_size: int = 64,
                           device: str | torch.device = "cpu", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (deletion AUC, insertion AUC), each (B,) in [0, 1]; all steps of an image share
    one or a few forward passes of `batch_size`."""
    from scipy.integrate import trapezoid

    deletion, insertion = deletion_insertion_curves(model, images, attrs, steps=steps, baseline=baseline,
                                                    batch_size=batch_size, device=device, seed=seed)
    x = np.linspace(0.0, 1.0, steps + 1)
    return trapezoid(deletion, x, axis=1), trapezoid(insertion, x, axis=1)


@torch.no_grad()
def baseline_probability(model: nn.Module, images: torch.Tensor | np.ndarray, baseline: str = "blur",
                         device: str | torch.device = "cpu") -> np.ndarray:
    """The model's probability for the baseline film itself: where insertion starts and deletion
    ends. A baseline the model already calls positive makes both AUCs uninformative."""
    images = torch.as_tensor(images, dtype=torch.float32).to(device)
    wrapped = PositiveScore(model.to(device).eval())
    return torch.sigmoid(wrapped(_baseline(images, baseline))[:, 0]).float().cpu().numpy()


def faithfulness_scores(model: nn.Module, images: torch.Tensor | np.ndarray, maps: dict[str, np.ndarray], *,
                        baselines: tuple[str, ...] = ("zero", "blur"), steps: int = 20, batch_size: int = 64,
                        device: str | torch.device = "cpu", seed: int = 0,
                        progress: bool = False) -> tuple[dict[str, dict[str, np.ndarray]],
                                                                                    dict[str, np.ndarray]]:
    """Deletion/insertion AUCs of every method under every baseline, next to their references.

    Returns ({method: {"deletion_auc_<b>", "insertion_auc_<b>": (B,)}} and {"random_deletion_auc_<b>",
    "random_insertion_auc_<b>", "baseline_probability_<b>": (B,)}): a map is only informative when
    its deletion AUC is below the random-order one and its insertion AUC above it.
    """
    from scipy.integrate import trapezoid
    from tqdm.auto import tqdm

    x = np.linspace(0.0, 1.0, steps + 1)
    images = torch.as_tensor(images, dtype=torch.float32)
    bar = tqdm(total=len(baselines) * (len(maps) + 1), desc="deletion/insertion", unit="curve set",
               disable=not progress, leave=False)
    per_method: dict[str, dict[str, np.ndarray]] = {m: {} for m in maps}
    reference: dict[str, np.ndarray] = {}
    noise = np.random.default_rng([seed, 7]).random((len(images), *images.shape[-2:])).astype(np.float32)
    for baseline in baselines:
        for method, attr in {**maps, "__random__": noise}.items():
            deletion, insertion = deletion_insertion_curves(model, images, attr, steps=steps, baseline=baseline,
                                                            batch_size=batch_size, device=device, seed=seed)
            target = reference if method == "__random__" else per_method[method]
            prefix = "random_" if method == "__random__" else ""
            target[f"{prefix}deletion_auc_{baseline}"] = trapezoid(deletion, x, axis=1)
            target[f"{prefix}insertion_auc_{baseline}"] = trapezoid(insertion, x, axis=1)
            bar.update()
        reference[f"baseline_probability_{baseline}"] = baseline_probability(model, images, baseline, device)
    bar.close()
    return per_method, reference
