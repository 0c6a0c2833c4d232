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
from tqdm.auto import tqdm

from cxrssl.explain.attributions import METHODS, compute_attributions, is_signed, occlusion_geometry
from cxrssl.explain.faithfulness import faithfulness_scores
from cxrssl.explain.geometry import (POINTING_REFERENCE_SIZE, POINTING_TOLERANCE_PX, choose_layer, ctr_region,
                                     layer_grid, scaled_tolerance)
from cxrssl.explain.localisation import has_mask
from cxrssl.explain.render import image_title, render_grid, render_image_row
from cxrssl.explain.sanity import sanity_mode, sanity_table
from cxrssl.explain.scoring import occlusion_grid, score_image, summarise_faithfulness, summarise_localisation
from cxrssl.explain.selection import select_groups, select_ids
from cxrssl.common import jsonable as _jsonable

log = logging.getLogger(__name__)


def _index_of(samples: Sequence[Mapping[str, Any]], index: Mapping[str, int] | None) -> Mapping[str, int]:
    if index is not None:
        return index
    ids = getattr(samples, "image_ids", None)
    if ids is not None:
        return {str(i): n for n, i in enumerate(ids)}
    log.warning("no image_id → index mapping given; reading every sample once to build it")
    return {str(samples[n]["image_id"]): n for n in range(len(samples))}


def _load(samples, index: Mapping[str, int], ids: Sequence[str]) -> tuple[torch.Tensor, list, list]:
    """(images, heart masks, lung masks); a sample may carry `lung_mask` for the CTR region."""
    images, masks, lungs = [], [], []
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
        lung = sample.get("lung_mask")
        lungs.append(np.squeeze(np.asarray(lung, dtype=np.float32)) if lung is not None else None)
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ValueError(f"images to explain differ in shape {sorted(shapes)}; build the dataset with one image_size")
    return torch.stack(images), masks, lungs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:120]


def _value(row: pd.Series, key: str) -> float | None:
    value = row.get(key)
    return None if value is None or pd.isna(value) else float(value)


def resolve_explain_layer(model: nn.Module, layer: str | None, image_size: int) -> tuple[str | None, tuple | None]:
    """(layer name, its grid): `layer` if given, else the deepest stage with a grid ≥ 7×7."""
    if layer:
        return str(layer), layer_grid(model, str(layer), image_size)
    if getattr(getattr(model, "encoder", None), "stages", None):
        return choose_layer(model, image_size)
    return None, None


def run_explanations(model: nn.Module, dataset_or_samples: Sequence[Mapping[str, Any]], pred_df: pd.DataFrame | None,
                     *, methods: Sequence[str] = METHODS, groups: Sequence[str] = ("tp", "tn", "fp", "fn"),
                     per_group: int = 5, out_dir: str | Path, layer: str | None = None, batch_size: int = 16,
                     device: str | torch.device = "cpu", sanity: bool | str = "full", faithfulness: bool = True,
                     image_ids: Sequence[str] | None = None, seed: int = 0, index: Mapping[str, int] | None = None,
                     sanity_images: int = 8, faithfulness_steps: int = 20,
                     faithfulness_baselines: Sequence[str] = ("zero", "blur"),
                     pointing_tolerance: float = POINTING_TOLERANCE_PX,
                     tolerance_reference_size: int | None = POINTING_REFERENCE_SIZE,
                     priors: Mapping[str, np.ndarray | None] | None = None, image_rows: bool = True,
                     progress: bool = True,
                     **attr_kwargs) -> dict[str, Any]:
    """Explain chosen images with every method; write galleries, arrays and tables under `out_dir`.

    Images are the seeded TP/TN/FP/FN picks from `pred_df` or, with `image_ids`, one "selected"
    group. Localisation rows carry the ceiling and the `priors` ({"heart", "ctr"}: mean training
    masks) beside the model's scores. Returns a JSON-serialisable summary.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"explain.methods has unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    mode = sanity_mode(sanity)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = ({"selected": select_ids(pred_df, image_ids)} if image_ids is not None
              else select_groups(pred_df, groups, per_group, seed))
    index = _index_of(dataset_or_samples, index)
    model = model.to(device).eval()
    signed = {m: is_signed(m, attr_kwargs.get("gradcam_relu", True)) for m in methods}
    files: dict[str, Any] = {"galleries": {}, "arrays": {}, "images": []}
    rows, faith_rows, pool, size, grids, tolerance = [], [], [], None, {}, 0
    layer_name = None
    for group, table in chosen.items():
        if table.empty:
            log.warning("explain: group %s has no images; skipped", group)
            continue
        ids = table["image_id"].astype(str).tolist()
        images, masks, lungs = _load(dataset_or_samples, index, ids)
        if size is None:
            size = int(images.shape[-2])
            layer_name, layer_grid_hw = resolve_explain_layer(model, layer, size)
            window, stride = occlusion_geometry(size, attr_kwargs.get("occlusion_window", 15),
                                                attr_kwargs.get("occlusion_stride", 8),
                                                attr_kwargs.get("occlusion_reference_size", 224))
            grids = {"gradcam": layer_grid_hw, "occlusion": occlusion_grid(size, window, stride)}
            tolerance = scaled_tolerance(size, pointing_tolerance, tolerance_reference_size)
        kwargs = dict(attr_kwargs, layer=layer_name, batch_size=batch_size, device=device, seed=seed)
        maps = {}
        bar = tqdm(methods, desc=f"explain {group} ({len(ids)} films)", unit="method", disable=not progress)
        for m in bar:  # every method reports progress, not only the slow ones
            bar.set_postfix_str(m)
            maps[m] = compute_attributions(model, images, m, progress=progress, **kwargs)
        np.savez_compressed(out / f"{group}_attributions.npz", image_ids=np.array(ids), **maps)
        files["arrays"][group] = str(out / f"{group}_attributions.npz")
        titles = [image_title(i, _value(r, "label"), _value(r, "probability")) for i, (_, r) in zip(ids, table.iterrows())]
        gallery = render_grid(images.numpy(), maps, out / f"{group}_gallery.png", signed=signed, titles=titles,
                              masks=masks, suptitle=f"{group.upper()} (n={len(ids)})")
        files["galleries"][group] = str(gallery)
        for n, image_id in enumerate(ids if image_rows else []):  # one PNG per film, for slides
            path = render_image_row(images[n].numpy(), {m: maps[m][n] for m in methods},
                                    out / "images" / group / f"{_safe(image_id)}.png", signed=signed,
                                    title=titles[n], mask=masks[n])
            files["images"].append(str(path))
        regions = [{"heart": masks[n], "ctr": ctr_region(masks[n], lungs[n])} for n in range(len(ids))]
        faith, reference = (faithfulness_scores(model, images, maps, baselines=tuple(faithfulness_baselines),
                                                steps=faithfulness_steps, device=device, seed=seed,
                                                progress=progress)
                            if faithfulness else ({}, {}))
        for method in methods:
            for n, image_id in enumerate(ids):
                base = {"group": group, "method": method, "image_id": image_id,
                        "label": _value(table.iloc[n], "label"), "probability": _value(table.iloc[n], "probability")}
                rows.append({**base, "has_mask": has_mask(masks[n]),
                             **score_image(maps[method][n], regions[n], grid=grids.get(method), tolerance=tolerance,
                                           priors=priors or {})})
                if faithfulness:
                    faith_rows.append({**base, **{k: float(v[n]) for k, v in faith[method].items()},
                                       **{k: float(v[n]) for k, v in reference.items()}})
        pool.append((images, maps))
    per_image = pd.DataFrame(rows)
    per_image.to_csv(out / "per_image.csv", index=False)
    localisation = summarise_localisation(per_image, grids, tolerance) if len(per_image) else pd.DataFrame()
    localisation.to_csv(out / "localisation.csv", index=False)
    files.update(per_image=str(out / "per_image.csv"), localisation=str(out / "localisation.csv"))
    faith_table = pd.DataFrame()
    if faith_rows:
        faith_per_image = pd.DataFrame(faith_rows)
        faith_per_image.to_csv(out / "faithfulness_per_image.csv", index=False)
        faith_table = summarise_faithfulness(faith_per_image)
        faith_table.to_csv(out / "faithfulness.csv", index=False)
        files["faithfulness"] = str(out / "faithfulness.csv")
    summary: dict[str, Any] = {
        "out_dir": str(out), "methods": list(methods), "image_size": size, "layer": layer_name,
        "grids": {m: (list(g) if g is not None else None) for m, g in grids.items()},
        "pointing_tolerance_px": tolerance, "groups": {g: t["image_id"].astype(str).tolist() for g, t in chosen.items()},
        "localisation": _jsonable(localisation.to_dict("records")),
        "faithfulness": _jsonable(faith_table.to_dict("records")), "sanity": [], "sanity_mode": mode, "files": files}
    if mode != "off" and pool:
        images, trained = _sanity_pool(pool, sanity_images)
        kwargs = dict(attr_kwargs, layer=layer_name, batch_size=batch_size, device=device, seed=seed)
        table, levels = sanity_table(model, images, methods, cascade=mode == "cascade", trained=trained,
                                     progress=progress, **kwargs)
        table.to_csv(out / "sanity.csv", index=False)
        files["sanity"] = str(out / "sanity.csv")
        levels.to_csv(out / "sanity_levels.csv", index=False)
        files["sanity_levels"] = str(out / "sanity_levels.csv")
        from cxrssl.explain.plots import plot_sanity_levels

        files["sanity_plot"] = str(plot_sanity_levels(levels, out / "sanity_cascade.png"))
        summary["sanity"] = _jsonable(table.to_dict("records"))
    return summary


def _sanity_pool(pool: list[tuple[torch.Tensor, dict[str, np.ndarray]]],
                 limit: int) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Up to `limit` images taken round-robin across groups, with their trained maps."""
    picks = [(g, i) for i in range(max(len(p[0]) for p in pool)) for g in range(len(pool)) if i < len(pool[g][0])]
    picks = picks[:limit]
    images = torch.stack([pool[g][0][i] for g, i in picks])
    maps = {m: np.stack([pool[g][1][m][i] for g, i in picks]) for m in pool[0][1]}
    return images, maps
