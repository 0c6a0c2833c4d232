"""`run_explanations`: the one call behind `cxrssl explain` (select → attribute → score → draw)."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrssl.explain.attributions import METHODS, compute_attributions, is_signed
from cxrssl.explain.faithfulness import deletion_insertion_auc
from cxrssl.explain.localisation import has_mask, localisation_scores
from cxrssl.explain.render import image_title, render_grid, render_image_row
from cxrssl.explain.sanity import sanity_table
from cxrssl.explain.selection import select_groups, select_ids
from cxrssl.common import jsonable as _jsonable

log = logging.getLogger(__name__)
_METRICS = ["pointing_hit", "energy_inside", "mask_area", "deletion_auc", "insertion_auc"]


def _index_of(samples: Sequence[Mapping[str, Any]], index: Mapping[str, int] | None) -> Mapping[str, int]:
    if index is not None:
        return index
    ids = getattr(samples, "image_ids", None)
    if ids is not None:
        return {str(i): n for n, i in enumerate(ids)}
    log.warning("no image_id → index mapping given; reading every sample once to build it")
    return {str(samples[n]["image_id"]): n for n in range(len(samples))}


def _load(samples, index: Mapping[str, int], ids: Sequence[str]) -> tuple[torch.Tensor, list[np.ndarray | None]]:
    images, masks = [], []
    for image_id in ids:
        if image_id not in index:
            raise KeyError(f"image_id {image_id!r} is not in the dataset being explained (check data.* and the "
                           f"predictions table's split)")
        sample = samples[index[image_id]]
        if "image" not in sample:
            raise KeyError(f"sample for image_id {image_id!r} has no 'image' key (design.md §2)")
        images.append(torch.as_tensor(sample["image"], dtype=torch.float32))
        mask = sample.get("mask")
        masks.append(np.squeeze(np.asarray(mask, dtype=np.float32)) if mask is not None else None)
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ValueError(f"images to explain differ in shape {sorted(shapes)}; build the dataset with one image_size")
    return torch.stack(images), masks


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:120]


def _value(row: pd.Series, key: str) -> float | None:
    value = row.get(key)
    return None if value is None or pd.isna(value) else float(value)


def run_explanations(model: nn.Module, dataset_or_samples: Sequence[Mapping[str, Any]], pred_df: pd.DataFrame | None,
                     *, methods: Sequence[str] = METHODS, groups: Sequence[str] = ("tp", "tn", "fp", "fn"),
                     per_group: int = 5, out_dir: str | Path, layer: str | None = None, batch_size: int = 16,
                     device: str | torch.device = "cpu", sanity: bool = True, faithfulness: bool = True,
                     image_ids: Sequence[str] | None = None, seed: int = 0, index: Mapping[str, int] | None = None,
                     sanity_images: int = 8, sanity_threshold: float = 0.5, sanity_cascade: bool = False,
                     faithfulness_steps: int = 20, faithfulness_baseline: str = "blur", pointing_tolerance: int = 0,
                     progress: bool = True, **attr_kwargs) -> dict[str, Any]:
    """Explain chosen images with every method; write galleries, arrays and tables under `out_dir`.

    Images are the seeded TP/TN/FP/FN picks from `pred_df` or, with `image_ids`, one "selected"
    group. Returns a JSON-serialisable summary: groups → ids, files written, localisation and
    sanity tables as records.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"explain.methods has unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = ({"selected": select_ids(pred_df, image_ids)} if image_ids is not None
              else select_groups(pred_df, groups, per_group, seed))
    index = _index_of(dataset_or_samples, index)
    model = model.to(device).eval()
    kwargs = dict(attr_kwargs, layer=layer, batch_size=batch_size, device=device, seed=seed)
    signed = {m: is_signed(m, attr_kwargs.get("gradcam_relu", True)) for m in methods}
    files: dict[str, Any] = {"galleries": {}, "arrays": {}, "images": []}
    rows, pool = [], []
    for group, table in chosen.items():
        if table.empty:
            log.warning("explain: group %s has no images; skipped", group)
            continue
        ids = table["image_id"].astype(str).tolist()
        images, masks = _load(dataset_or_samples, index, ids)
        maps = {m: compute_attributions(model, images, m, progress=progress, **kwargs) for m in methods}
        np.savez_compressed(out / f"{group}_attributions.npz", image_ids=np.array(ids), **maps)
        files["arrays"][group] = str(out / f"{group}_attributions.npz")
        titles = [image_title(i, _value(r, "label"), _value(r, "probability")) for i, (_, r) in zip(ids, table.iterrows())]
        gallery = render_grid(images.numpy(), maps, out / f"{group}_gallery.png", signed=signed, titles=titles,
                              masks=masks, suptitle=f"{group.upper()} (n={len(ids)})")
        files["galleries"][group] = str(gallery)
        for n, image_id in enumerate(ids):
            path = render_image_row(images[n].numpy(), {m: maps[m][n] for m in methods},
                                    out / "images" / group / f"{_safe(image_id)}.png", signed=signed,
                                    title=titles[n], mask=masks[n])
            files["images"].append(str(path))
        for method in methods:
            faith = (deletion_insertion_auc(model, images, maps[method], steps=faithfulness_steps,
                                            baseline=faithfulness_baseline, device=device, seed=seed)
                     if faithfulness else (np.full(len(ids), np.nan), np.full(len(ids), np.nan)))
            for n, image_id in enumerate(ids):
                rows.append({"group": group, "method": method, "image_id": image_id,
                             "label": _value(table.iloc[n], "label"), "probability": _value(table.iloc[n], "probability"),
                             "has_mask": has_mask(masks[n]),
                             **localisation_scores(maps[method][n], masks[n], pointing_tolerance),
                             "deletion_auc": float(faith[0][n]), "insertion_auc": float(faith[1][n])})
        pool.append((images, maps))
    per_image = pd.DataFrame(rows, columns=["group", "method", "image_id", "label", "probability", "has_mask", *_METRICS])
    per_image.to_csv(out / "per_image.csv", index=False)
    localisation = summarise_localisation(per_image)
    localisation.to_csv(out / "localisation.csv", index=False)
    files.update(per_image=str(out / "per_image.csv"), localisation=str(out / "localisation.csv"))
    summary: dict[str, Any] = {"out_dir": str(out), "methods": list(methods),
                               "groups": {g: t["image_id"].astype(str).tolist() for g, t in chosen.items()},
                               "localisation": _jsonable(localisation.to_dict("records")), "sanity": [], "files": files}
    if sanity and pool:
        images, trained = _sanity_pool(pool, sanity_images)
        table, levels = sanity_table(model, images, methods, threshold=sanity_threshold, cascade=sanity_cascade,
                                     trained=trained, **kwargs)
        table.to_csv(out / "sanity.csv", index=False)
        files["sanity"] = str(out / "sanity.csv")
        if sanity_cascade:
            levels.to_csv(out / "sanity_cascade.csv", index=False)
            files["sanity_cascade"] = str(out / "sanity_cascade.csv")
        summary["sanity"] = _jsonable(table.to_dict("records"))
    return summary


def summarise_localisation(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per method × group: n, n_with_mask, pointing hit rate, mean energy inside, mean mask area, AUCs."""
    grouped = per_image.groupby(["method", "group"], sort=False)
    table = grouped[_METRICS].mean()
    table.insert(0, "n_with_mask", grouped["has_mask"].sum().astype(int))
    table.insert(0, "n", grouped.size())
    return table.rename(columns={"pointing_hit": "pointing_hit_rate"}).reset_index()


def _sanity_pool(pool: list[tuple[torch.Tensor, dict[str, np.ndarray]]],
                 limit: int) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Up to `limit` images taken round-robin across groups, with their trained maps."""
    picks = [(g, i) for i in range(max(len(p[0]) for p in pool)) for g in range(len(pool)) if i < len(pool[g][0])]
    picks = picks[:limit]
    images = torch.stack([pool[g][0][i] for g, i in picks])
    maps = {m: np.stack([pool[g][1][m][i] for g, i in picks]) for m in pool[0][1]}
    return images, maps
