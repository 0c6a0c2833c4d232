"""`cxrssl evaluate`: clinical evaluation of a fine-tuned checkpoint on one split."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cxrssl.commands.checkpoint_data import checkpoint_tags, load_model_and_data, predict_split, saved_threshold
from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking
from cxrssl.commands.patient_guard import check_evaluated_split, overlap_tags
from cxrssl.commands.validation import check_config


def _threshold(cfg: DictConfig, info: dict, model, table, data_cfg, precision) -> tuple[float, str]:
    """The checkpoint's saved threshold unless `evaluate.threshold` overrides it (a number, or a
    rule applied to the validation split — never to the evaluated split itself)."""
    from cxrssl.evaluation import choose_threshold

    meta = info.get("meta", {})
    wanted = cfg.evaluate.get("threshold")
    if wanted is None:
        return saved_threshold(info, None), f"{meta.get('threshold_rule', 'saved')} on val (saved with checkpoint)"
    try:
        return float(wanted), "fixed"
    except (TypeError, ValueError):
        val, _ = predict_split(model, table, data_cfg, "val", precision, int(cfg.trainer.seed))
        val = val.dropna(subset=["label"])
        return choose_threshold(val["label"].to_numpy(), val["probability"].to_numpy(), str(wanted), split="val"), \
            f"{wanted} on val"


def run(cfg: DictConfig) -> float | None:
    from cxrssl.data.loaders import prepare_table
    from cxrssl.engine.precision import resolve_precision
    from cxrssl.evaluation import evaluate_predictions, format_terminal_table

    check_config(cfg)  # impossible values fail here, in well under a second
    run_dir = run_dir_from_hydra()
    model, info, data_cfg = load_model_and_data(cfg)
    split = str(data_cfg.get("split", "test"))
    tracker = start_run_tracking(cfg, checkpoint_tags(info, split))
    with tracker:
        precision = resolve_precision(cfg.trainer.device, cfg.trainer.amp)
        table = prepare_table(data_cfg)
        overlap = check_evaluated_split(info, table, split, allow=bool(cfg.evaluate.get("allow_pretrain_overlap", False)),
                                        key="evaluate.allow_pretrain_overlap", data_cfg=data_cfg)
        tracker.set_tags(overlap_tags(overlap))
        threshold, rule = _threshold(cfg, info, model, table, data_cfg, precision)
        predictions, _ = predict_split(model, table, data_cfg, split, precision, int(cfg.trainer.seed))
        recalibration, method = None, str(cfg.evaluate.get("recalibrate") or "none")
        if method != "none":  # fitted on val; the threshold is re-chosen on the recalibrated val
            from cxrssl.evaluation.calibration import recalibrate_predictions

            val, _ = predict_split(model, table, data_cfg, "val", precision, int(cfg.trainer.seed))
            wanted = cfg.evaluate.get("threshold")
            base_rule = str(wanted if wanted is not None else info.get("meta", {}).get("threshold_rule") or "youden")
            predictions, threshold, recalibration = recalibrate_predictions(val, predictions, method, base_rule)
            rule = f"{base_rule} on val after {method} recalibration (fitted on val)"
        from cxrssl.commands.finetune import trained_table

        trained = trained_table(table, data_cfg, require_both_classes=False)  # the label subset actually trained on
        cohort = {"train": trained[trained["split"] == "train"], split: table[table["split"] == split]}
        summary = evaluate_predictions(predictions, threshold, run_dir, cohort=cohort,
                                       n_boot=int(cfg.evaluate.n_boot), seed=int(cfg.evaluate.seed),
                                       split_name=split, threshold_rule=rule,
                                       age_bands=tuple(cfg.evaluate.age_bands), dataset=str(data_cfg.source),
                                       ci_method=str(cfg.evaluate.get("ci_method") or "percentile"),
                                       recalibration=recalibration)
        metrics = summary["metrics"]
        tracker.log_metrics({f"{split}/{m}{suffix}": v[key] for m, v in metrics.items()
                             for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))
                             if v.get(key) is not None}, step=0)
        table_text = format_terminal_table(summary)
        report = _write_html_report(info, run_dir, summary, tracker, split)
        headline = [table_text, f"checkpoint:  {info['path']}", f"threshold:   {threshold:.4f} ({rule})",
                    f"report:      {report}  (tables: {Path(run_dir) / 'report.md'})",
                    f"next:        cxrssl explain checkpoint={info['path']} explain.evaluation={run_dir}"]
        finish_run(cfg, tracker, run_dir, {"pretrain_overlap": overlap, "evaluation": summary, "checkpoint": info["path"], "split": split},
                   headline, [("evaluation", run_dir)])
        return metrics.get("auroc", {}).get("value")


def _write_html_report(info: dict, run_dir: Path, summary: dict, tracker, split: str) -> Path:
    """`report.html` of this run; remembered beside a local checkpoint (`reports.json`) so a later
    `cxrssl explain` on the same checkpoint and split adds its sections to it."""
    import json

    from cxrssl.reporting.html import write_report
    from cxrssl.tracking_security import redact_uri

    path = write_report(Path(run_dir) / "report.html", info=info, evaluation_dir=run_dir, evaluation=summary,
                        run={"mlflow_run_id": tracker.run_id,
                             "tracking_uri": redact_uri(getattr(tracker, "tracking_uri", None))})
    checkpoint = Path(str(info["path"]))
    if checkpoint.is_file():
        index = checkpoint.parent / "reports.json"
        try:
            known = json.loads(index.read_text()) if index.is_file() else {}
            index.write_text(json.dumps({**known, split: str(run_dir)}, indent=2) + "\n")
        except (OSError, ValueError):  # a read-only or damaged index only loses the link
            pass
    return path
