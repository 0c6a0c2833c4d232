"""`cxrssl explain`: attribution maps for TP/TN/FP/FN (or chosen) images of a fine-tuned model,
with galleries, raw arrays, localisation against heart masks, faithfulness and sanity checks."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cxrssl.commands.checkpoint_data import checkpoint_tags, load_model_and_data, predict_split, saved_threshold
from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking
from cxrssl.commands.patient_guard import check_evaluated_split, overlap_tags
from cxrssl.commands.validation import check_config


def run(cfg: DictConfig) -> dict:
    from cxrssl.data.dataset import CXRDataset
    from cxrssl.data.loaders import prepare_table
    from cxrssl.engine.precision import resolve_precision
    from cxrssl.explain import run_explanations

    check_config(cfg)  # impossible values fail here, in well under a second
    run_dir = run_dir_from_hydra()
    model, info, data_cfg = load_model_and_data(cfg)
    ex = cfg.explain
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
        dataset = CXRDataset(rows, data_cfg, train=False, with_masks=True, cache=getattr(loader.dataset, "cache", None))
        index = {image_id: i for i, image_id in enumerate(dataset.table["image_id"].astype(str))}
        ids = list(ex.image_ids) if ex.get("image_ids") else None
        summary = run_explanations(
            model, dataset, predictions.dropna(subset=["label"]) if ids is None else predictions,
            methods=list(ex.methods), groups=list(ex.groups), per_group=int(ex.per_group), out_dir=run_dir / "explain",
            layer=ex.get("layer"), batch_size=int(ex.batch_size), device=precision.device, sanity=bool(ex.sanity),
            faithfulness=bool(ex.faithfulness), image_ids=ids, seed=int(ex.seed), index=index,
            sanity_threshold=float(ex.sanity_threshold), faithfulness_baseline=str(ex.faithfulness_baseline),
            baselines=str(ex.baselines), internal_batch_size=int(ex.internal_batch_size))
        headline = ["explain | " + ", ".join(ex.methods) + f" | threshold {threshold:.3f} | {split} split"]
        headline += _localisation_lines(run_dir / "explain")
        headline.append(f"galleries:   {run_dir / 'explain'}/*_gallery.png")
        finish_run(cfg, tracker, run_dir, {"pretrain_overlap": overlap, "explain": summary, "checkpoint": info["path"], "threshold": threshold,
                                           "config_explain": OmegaConf.to_container(ex, resolve=True)},
                   headline, [("explain", run_dir / "explain")])
        return summary


def _localisation_lines(out: Path) -> list[str]:
    """A compact per-method table of what matters: does the map point at the heart?"""
    import pandas as pd

    lines = []
    loc, sanity = out / "localisation.csv", out / "sanity.csv"
    if loc.is_file():
        df = pd.read_csv(loc)
        if not df.empty and "pointing_hit_rate" in df:
            group = "tp" if (df["group"] == "tp").any() else df["group"].iloc[0]
            overall = df[df["group"] == group].groupby("method")[["pointing_hit_rate", "energy_inside", "mask_area"]].mean()
            lines.append(f"method ({group})             pointing  energy-in-heart  heart-area")
            lines += [f"{m:<22} {r.pointing_hit_rate:8.2f}  {r.energy_inside:15.2f}  {r.mask_area:10.2f}"
                      for m, r in overall.iterrows()]
    if sanity.is_file():
        s = pd.read_csv(sanity)
        if {"method", "passes"} <= set(s.columns):
            lines.append("sanity (randomised model changes the map): " +
                         ", ".join(f"{m} {'pass' if p else 'FAIL'}" for m, p in zip(s["method"], s["passes"])))
    return lines
