"""`cxrssl probe checkpoint=... probe=linear|knn`: frozen-feature evaluation in seconds.

The encoder embeds train/val/test once (cached, see probe_embed); a scikit-learn logistic
regression or kNN is fitted on the labelled training rows at each label fraction and repeat
(`splits.label_subset`, the patients finetune would keep), its threshold chosen on val by
`probe.threshold`, and the test split scored with the same metrics and patient-level bootstrap
CIs as `cxrssl evaluate` (the largest fraction's first repeat also gets evaluate's full report).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking

SPLITS = ("train", "val", "test")


def _weights_id(cfg: DictConfig, info: dict) -> str:
    from cxrssl.commands.probe_embed import file_digest

    source = info.get("source")
    if info.get("kind") == "random" or not source:
        return f"random:{cfg.backbone.name}:seed{int(cfg.trainer.seed)}"
    return f"sha256:{file_digest(source)}"


def _cache_dir(cfg: DictConfig) -> Path:
    import os

    configured = cfg.probing.get("cache_dir")
    if configured:
        return Path(str(configured)).expanduser()
    return Path(os.environ.get("CXRSSL_CACHE", "~/.cache/cxrssl")).expanduser() / "embeddings"


def embeddings_by_split(cfg: DictConfig, encoder, info: dict, table: pd.DataFrame, device) -> tuple[dict, dict]:
    from cxrssl.commands.probe_embed import cache_key, cached_embeddings, extract_embeddings

    weights_id = _weights_id(cfg, info)
    out, hits = {}, {}
    for split in SPLITS:
        rows = table[table["split"] == split]
        if rows.empty:
            continue
        key = cache_key(weights_id, cfg.backbone, cfg.data, rows)
        out[split], hits[split] = cached_embeddings(
            _cache_dir(cfg), key, lambda rows=rows: extract_embeddings(encoder, rows, cfg.data, device,
                                                                       int(cfg.trainer.seed)))
    return out, hits


def _predictions(rows: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    keep = [c for c in ("image_id", "patient_id", "age", "sex", "view", "split") if c in rows.columns]
    return rows[keep].assign(probability=probs, label=rows["cardiomegaly"].to_numpy()).reset_index(drop=True)


def run_probes(cfg: DictConfig, table: pd.DataFrame, emb: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict]:
    """One row per (fraction, repeat, metric) with value and CI; and the primary predictions."""
    from cxrssl.commands.probe_embed import fit_predict
    from cxrssl.data.splits import label_subset
    from cxrssl.evaluation import bootstrap_ci, choose_threshold

    kind, settings = str(cfg.probe), OmegaConf.to_container(cfg.probing.get(str(cfg.probe)) or {}, resolve=True)
    rows = {s: table[table["split"] == s].reset_index(drop=True) for s in SPLITS}
    for split in ("train", "val", "test"):
        if split not in emb:
            raise ValueError(f"probe: the {split} split is empty; it needs train, val and test images")
    val_labelled = rows["val"]["cardiomegaly"].notna().to_numpy()
    records, primary = [], {}
    fractions = sorted(float(f) for f in cfg.probing.label_fractions)
    for fraction in fractions:
        for repeat in range(int(cfg.probing.repeats)):
            subset = label_subset(rows["train"], fraction, seed=repeat)
            ids = set(subset["image_id"].astype(str))
            keep = (rows["train"]["image_id"].astype(str).isin(ids) & rows["train"]["cardiomegaly"].notna()).to_numpy()
            y = rows["train"]["cardiomegaly"].to_numpy()[keep]
            p_val, p_test = fit_predict(kind, settings, emb["train"][keep], y,
                                        [emb["val"][val_labelled], emb["test"]], seed=repeat)
            threshold = choose_threshold(rows["val"]["cardiomegaly"].to_numpy()[val_labelled], p_val,
                                         str(cfg.probing.threshold), split="val")
            pred = _predictions(rows["test"], p_test)
            ci = bootstrap_ci(pred.dropna(subset=["label"]), threshold, n_boot=int(cfg.probing.n_boot),
                              seed=repeat, split="test")
            for metric, (value, low, high) in ci.items():
                records.append({"probe": kind, "label_fraction": fraction, "repeat": repeat, "n_train": int(keep.sum()),
                                "threshold": threshold, "metric": metric, "value": value, "ci_low": low,
                                "ci_high": high})
            if fraction == fractions[-1] and repeat == 0:
                primary = {"predictions": pred, "threshold": threshold}
    return pd.DataFrame.from_records(records), primary


def run(cfg: DictConfig) -> float | None:
    from cxrssl.commands.probe_embed import PROBES, tsne_figure
    from cxrssl.data.loaders import prepare_table
    from cxrssl.engine.precision import resolve_precision
    from cxrssl.evaluation import evaluate_predictions
    from cxrssl.models.loading import load_encoder

    if str(cfg.probe) not in PROBES:
        raise ValueError(f"probe={cfg.probe!r}: expected one of {PROBES}")
    from cxrssl.engine.seed import seed_everything

    run_dir = run_dir_from_hydra()
    seed_everything(int(cfg.trainer.seed))  # checkpoint=none: the same random encoder every time
    encoder, info = load_encoder(cfg.backbone, cfg.checkpoint, cfg.mlflow.get("tracking_uri"))
    tags = {"probe": str(cfg.probe), "backbone": cfg.backbone.name, "data": cfg.data.source,
            "encoder": str(info.get("source") or "random"), "pretext": str(info.get("pretext"))}
    tracker = start_run_tracking(cfg, tags)
    with tracker:
        precision = resolve_precision(cfg.trainer.device, cfg.trainer.amp)
        table = prepare_table(cfg.data)
        emb, hits = embeddings_by_split(cfg, encoder, info, table, precision.device)
        results, primary = run_probes(cfg, table, emb)
        results_path = run_dir / "probe_results.csv"
        results.to_csv(results_path, index=False)
        report = evaluate_predictions(primary["predictions"], primary["threshold"], run_dir / "evaluation",
                                      n_boot=int(cfg.probing.n_boot), split_name="test",
                                      threshold_rule=f"{cfg.probing.threshold} on val", dataset=str(cfg.data.source))
        auroc = results[results["metric"] == "auroc"].groupby("label_fraction")["value"]
        per_fraction = {f"{f:g}": {"auroc_mean": float(v.mean()), "auroc_sd": float(v.std(ddof=0))}
                        for f, v in auroc}
        for f, stats in per_fraction.items():
            tracker.log_metrics({f"probe/auroc_fraction_{f}": stats["auroc_mean"]}, step=0)
        artifacts = [("probe", results_path), ("evaluation", run_dir / "evaluation")]
        if bool(cfg.probing.get("tsne", True)):
            val_rows = table[table["split"] == "val"].reset_index(drop=True)
            artifacts.append(("plots", tsne_figure(emb["val"], val_rows, run_dir / "tsne_val.png")))
        headline = [f"probe {cfg.probe} | {cfg.backbone.name} | encoder {info.get('source') or 'random'} | "
                    f"embeddings {'cached' if all(hits.values()) else 'extracted'}"]
        headline += [f"label fraction {f}: test AUROC {s['auroc_mean']:.3f} ± {s['auroc_sd']:.3f} "
                     f"({int(cfg.probing.repeats)} repeats)" for f, s in per_fraction.items()]
        top = report["metrics"]["auroc"]
        headline.append(f"report:      AUROC {top['value']:.3f} (95% CI {top['ci_low']:.3f}-{top['ci_high']:.3f}) "
                        f"-> {run_dir / 'evaluation' / 'report.md'}")
        finish_run(cfg, tracker, run_dir, {"probe": str(cfg.probe), "backbone": cfg.backbone.name,
                                           "encoder": info.get("source"), "embeddings_cached": hits,
                                           "per_fraction": per_fraction, "test_auroc": top["value"],
                                           "results": results_path, "report": report},
                   headline, artifacts)
        return float(top["value"])
