"""`cxrssl explain`: attribution maps for TP/TN/FP/FN (or chosen) images of a fine-tuned model,
with galleries, raw arrays, localisation against heart masks (with ceilings and a prior),
faithfulness and sanity checks; adds its sections to the evaluate run's `report.html`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cxrssl.commands.checkpoint_data import checkpoint_tags, load_model_and_data, predict_split, saved_threshold
from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking
from cxrssl.commands.patient_guard import check_evaluated_split, overlap_tags
from cxrssl.commands.validation import check_config


class _WithLungs:
    """Dataset view that adds each row's lung mask (`lung_mask`) for the CTR region, when the
    source has a `lung_mask_path` column (the synthetic phantoms do)."""

    def __init__(self, heart, lungs):
        self.heart, self.lungs = heart, lungs

    def __len__(self):
        return len(self.heart)

    def __getitem__(self, i):
        sample = self.heart[i]
        if self.lungs is not None:
            sample["lung_mask"] = self.lungs[i]["mask"]
        return sample


def mask_datasets(rows, data_cfg, cache=None):
    """(samples with heart and lung masks, evaluation transforms only)."""
    from cxrssl.data.dataset import CXRDataset

    heart = CXRDataset(rows, data_cfg, train=False, with_masks=True, cache=cache)
    lungs = None
    if "lung_mask_path" in rows.columns and rows["lung_mask_path"].notna().any():
        lungs = CXRDataset(rows.assign(mask_path=rows["lung_mask_path"]), data_cfg, train=False, with_masks=True,
                           cache=cache)
    return _WithLungs(heart, lungs)


def training_priors(table, data_cfg, limit: int = 300, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Mean heart mask and mean CTR region of up to `limit` training films: the fixed-prior maps."""
    from cxrssl.explain import ctr_region, prior_map

    train = table[(table["split"] == "train") & table["mask_path"].notna()]
    if train.empty:
        return {"heart": None, "ctr": None}
    train = train.sample(min(limit, len(train)), random_state=seed)
    cfg = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    cfg.cache.enabled = False  # masks only; do not build an image cache for the training split
    samples = mask_datasets(train, cfg)
    hearts, regions = [], []
    for i in range(len(samples)):
        sample = samples[i]
        heart = np.squeeze(sample["mask"].numpy())
        hearts.append(heart)
        lung = sample.get("lung_mask")
        regions.append(ctr_region(heart, None if lung is None else np.squeeze(lung.numpy())))
    return {"heart": prior_map(hearts), "ctr": prior_map([r for r in regions if r is not None])}


def run(cfg: DictConfig) -> dict:
    from cxrssl.data.loaders import prepare_table
    from cxrssl.engine.precision import resolve_precision
    from cxrssl.explain import run_explanations, sanity_mode

    check_config(cfg)  # impossible values fail here, in well under a second
    run_dir = run_dir_from_hydra()
    model, info, data_cfg = load_model_and_data(cfg)
    ex = cfg.explain
    mode = sanity_mode(ex.get("sanity", "full"))
    split = str(data_cfg.get("split", "test"))
    threshold = saved_threshold(info, ex.get("threshold"))
    tracker = start_run_tracking(cfg, checkpoint_tags(info, split))
    with tracker:
        precision = resolve_precision(cfg.trainer.device, cfg.trainer.amp)
        table = prepare_table(data_cfg)
        overlap = check_evaluated_split(info, table, split, allow=bool(cfg.explain.get("allow_pretrain_overlap", False)),
                                        key="explain.allow_pretrain_overlap", data_cfg=data_cfg)
        tracker.set_tags(overlap_tags(overlap))
        predictions, loader = predict_split(model, table, data_cfg, split, precision, int(cfg.trainer.seed))
        rows = table[table["split"] == split]
        predictions["predicted"] = (predictions["probability"] >= threshold).astype(int)
        explain_cfg, cache = data_cfg, getattr(loader.dataset, "cache", None)
        if ex.get("image_size") and int(ex.image_size) != int(data_cfg.image_size):
            explain_cfg = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
            explain_cfg.image_size, cache = int(ex.image_size), None
            print(f"note: explaining at {explain_cfg.image_size} px (the model was trained at {data_cfg.image_size} px)")
        dataset = mask_datasets(rows, explain_cfg, cache=cache)
        index = {image_id: i for i, image_id in enumerate(dataset.heart.table["image_id"].astype(str))}
        priors = training_priors(table, explain_cfg, seed=int(ex.seed))
        ids = list(ex.image_ids) if ex.get("image_ids") else None
        summary = run_explanations(
            model, dataset, predictions.dropna(subset=["label"]) if ids is None else predictions,
            methods=list(ex.methods), groups=list(ex.groups), per_group=int(ex.per_group), out_dir=run_dir / "explain",
            layer=ex.get("layer"), batch_size=int(ex.batch_size), device=precision.device, sanity=mode,
            faithfulness=bool(ex.faithfulness), image_ids=ids, seed=int(ex.seed), index=index, priors=priors,
            sanity_images=int(ex.get("sanity_images", 8)),
            faithfulness_baselines=tuple(ex.get("faithfulness_baselines", ("zero", "blur"))),
            pointing_tolerance=float(ex.get("pointing_tolerance", 15)),
            tolerance_reference_size=ex.get("tolerance_reference_size", 224),
            baselines=str(ex.baselines), internal_batch_size=int(ex.internal_batch_size))
        headline = [f"explain | {', '.join(ex.methods)} | threshold {threshold:.3f} | {split} split | "
                    f"{summary['image_size']} px | Grad-CAM layer {summary['layer']} "
                    f"(grid {_grid(summary['grids'].get('gradcam'))}) | pointing tolerance "
                    f"{summary['pointing_tolerance_px']} px"]
        headline += localisation_lines(run_dir / "explain")
        headline.append(f"galleries:   {run_dir / 'explain'}/*_gallery.png")
        report = _add_to_report(cfg, info, run_dir, summary, split)
        headline.append(f"report:      {report}")
        finish_run(cfg, tracker, run_dir, {"pretrain_overlap": overlap, "explain": summary, "checkpoint": info["path"], "threshold": threshold,
                                           "config_explain": OmegaConf.to_container(ex, resolve=True)},
                   headline, [("explain", run_dir / "explain"), ("report", report)])
        return summary


def _grid(grid) -> str:
    return "n/a" if not grid else f"{grid[0]}×{grid[1]}"


def _evaluation_dir(cfg: DictConfig, info: dict, split: str) -> Path | None:
    """`explain.evaluation`, else the evaluate run recorded beside the checkpoint for this split."""
    import json

    evaluation = cfg.explain.get("evaluation")
    if evaluation is False or str(evaluation).lower() == "false":  # this run's own report.html only
        return None
    if evaluation:
        eval_dir = Path(str(evaluation))
        if not (eval_dir / "summary.json").is_file():
            raise FileNotFoundError(f"explain.evaluation={evaluation}: no summary.json there; pass the output folder "
                                    f"of `cxrssl evaluate` on the same checkpoint")
        return eval_dir
    index = Path(str(info["path"])).parent / "reports.json"
    try:
        known = json.loads(index.read_text()) if index.is_file() else {}
    except (OSError, ValueError):
        return None
    found = Path(known[split]) if split in known else None
    return found if found is not None and (found / "summary.json").is_file() else None


def _add_to_report(cfg: DictConfig, info: dict, run_dir: Path, summary: dict, split: str) -> Path:
    """`report.html` in this run with the explanation sections, and the evaluate run's sections when
    one exists for this checkpoint and split (whose own `report.html` then gains these sections)."""
    from cxrssl.reporting.html import write_report

    eval_dir = _evaluation_dir(cfg, info, split)
    kwargs = dict(info=info, evaluation_dir=eval_dir, explain_dir=run_dir / "explain", explain_summary=summary)
    path = write_report(run_dir / "report.html", **kwargs)
    if eval_dir is not None:
        write_report(eval_dir / "report.html", **kwargs)
        print(f"note: added the explanation sections to {eval_dir / 'report.html'}")
    return path


def localisation_lines(out: Path) -> list[str]:
    """Per method, TP group, heart region: the model's score between its prior and its ceiling."""
    import pandas as pd

    lines = []
    loc, sanity = out / "localisation.csv", out / "sanity.csv"
    if loc.is_file() and loc.stat().st_size > 1:
        df = pd.read_csv(loc)
        if not df.empty and "pointing_hit_rate" in df:
            group = "tp" if (df["group"] == "tp").any() else df["group"].iloc[0]
            part = df[(df["group"] == group) & (df["region"] == "heart")]
            lines.append(f"localisation, {group.upper()} images, heart region (model [95% CI] | ceiling | prior):")
            lines.append(f"  {'method':<22} {'pointing':<32} {'energy in heart (share 0-1)'}")
            for r in part.itertuples():
                point = ("skipped (" + r.note.split(": ")[1] + ")" if isinstance(r.note, str) and r.note else
                         f"{r.pointing_hit_rate:.2f} [{r.pointing_ci_low:.2f}, {r.pointing_ci_high:.2f}] | "
                         f"{r.ceiling_pointing:.2f} | {r.prior_pointing:.2f}")
                lines.append(f"  {r.method:<22} {point:<32} {r.energy_inside:.2f} | {r.ceiling_energy:.2f} | "
                             f"{r.prior_energy:.2f}  (n={r.n_with_mask})")
    if sanity.is_file():
        s = pd.read_csv(sanity)
        if {"method", "verdict"} <= set(s.columns):
            lines.append("sanity (randomised model vs image-only reference): " +
                         ", ".join(f"{m} {v}" for m, v in zip(s["method"], s["verdict"])))
    return lines
