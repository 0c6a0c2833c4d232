"""`model_card.md` + `model_card.json` beside a fine-tuned checkpoint, under the headings of Model
Cards for Model Reporting (Mitchell et al., FAT* 2019): model details, intended use, factors,
metrics, evaluation data, training data, quantitative analyses, ethical considerations, caveats
and recommendations. Numbers come from the caller's evaluation summary (finetune: validation,
where the threshold was chosen; evaluate may rewrite it with the held-out split).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

HEADINGS = ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def model_card(details: dict, evaluation: dict, subgroups: pd.DataFrame | None, training: dict) -> dict:
    """The card as a dict (the JSON file); `write_model_card` renders it as markdown too."""
    metrics = evaluation.get("metrics", {})
    small = [] if subgroups is None else [f"{r.attribute}={r.group} (n={r.n})" for r in subgroups.itertuples()
                                          if r.n < 20]
    return _clean({
        "model_details": details,
        "intended_use": {"primary": "research on self-supervised pretraining for cardiomegaly detection on frontal "
                                    "chest radiographs; comparison of pretexts and label fractions",
                         "out_of_scope": "clinical diagnosis or triage; lateral films; children; any site whose "
                                         "data were not evaluated"},
        "factors": {"evaluated": ["sex", "view (PA/AP)", "age band"],
                    "relevant_not_evaluated": ["scanner/site", "disease severity", "devices in the film"]},
        "metrics": {"threshold": evaluation.get("threshold"), "threshold_rule": evaluation.get("threshold_rule"),
                    "ci": "95 % patient-level bootstrap", "values": metrics,
                    "calibration": {k: metrics.get(k) for k in ("brier", "ece")}},
        "evaluation_data": {"split": evaluation.get("split"), "n_images": evaluation.get("n"),
                            "n_patients": evaluation.get("n_patients"), "prevalence": evaluation.get("prevalence"),
                            "dataset": evaluation.get("dataset")},
        "training_data": training,
        "quantitative_analyses": {"subgroups": [] if subgroups is None else subgroups.to_dict("records"),
                                  "too_small_to_compare": small},
        "ethical_considerations": ["Synthetic phantoms carry no patient data." if str(training.get("source", ""))
                                   .startswith("synthetic") else "Trained on de-identified public radiographs; "
                                   "report-mined labels carry their annotators' biases.",
                                   "Subgroup differences are reported, not corrected."],
        "caveats_and_recommendations": ["Re-check PPV/NPV at the deployment prevalence.",
                                        "Re-choose the threshold on local validation data before any use.",
                                        "Metrics on the validation split are optimistic: the threshold was chosen there."
                                        if evaluation.get("split") == "val" else
                                        "Metrics are from one held-out split; they do not cover site shift."],
    })


def _markdown(card: dict) -> str:
    d, m = card["model_details"], card["metrics"]
    lines = [f"# Model card: {d.get('backbone')} cardiomegaly classifier ({d.get('pretext')} pretext)", ""]
    lines += ["## Model details", ""] + [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in d.items()] + [""]
    lines += ["## Intended use", "", f"- primary: {card['intended_use']['primary']}",
              f"- out of scope: {card['intended_use']['out_of_scope']}", ""]
    lines += ["## Factors", "", f"- evaluated: {', '.join(card['factors']['evaluated'])}",
              f"- relevant, not evaluated: {', '.join(card['factors']['relevant_not_evaluated'])}", ""]
    lines += ["## Metrics", "", f"Threshold {_fmt(m['threshold'], 4)} ({m['threshold_rule']}); {m['ci']} CIs.", "",
              "| metric | value | 95 % CI |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v.get('value'))} | {_fmt(v.get('ci_low'))}–{_fmt(v.get('ci_high'))} |"
              for k, v in (m["values"] or {}).items()]
    e = card["evaluation_data"]
    lines += ["", "## Evaluation data", "", f"- {e['dataset']} / {e['split']}: {e['n_images']} images, "
              f"{e['n_patients']} patients, prevalence {_fmt(e['prevalence'])}", ""]
    lines += ["## Training data", ""] + [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in card["training_data"].items()]
    q = card["quantitative_analyses"]
    lines += ["", "## Quantitative analyses", ""]
    if q["subgroups"]:
        lines += ["| attribute | group | n | AUROC | sensitivity | specificity |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['attribute']} | {r['group']} | {r['n']} | {_fmt(r.get('auroc'))} | {_fmt(r.get('sensitivity'))}"
                  f" | {_fmt(r.get('specificity'))} |" for r in q["subgroups"]]
    if q["too_small_to_compare"]:
        lines += ["", f"Too small to compare (< 20 images): {', '.join(q['too_small_to_compare'])}"]
    lines += ["", "## Ethical considerations", ""] + [f"- {x}" for x in card["ethical_considerations"]]
    lines += ["", "## Caveats and recommendations", ""] + [f"- {x}" for x in card["caveats_and_recommendations"]]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, details: dict, evaluation: dict, subgroups: pd.DataFrame | None,
                     training: dict) -> tuple[Path, Path]:
    """Write `model_card.md` and `model_card.json` into `folder` (the checkpoint's folder)."""
    card = model_card(details, evaluation, subgroups, training)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / "model_card.md", folder / "model_card.json"
    md.write_text(_markdown(card), encoding="utf-8")
    js.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return md, js


def card_from_validation(val_pred: pd.DataFrame, threshold: float, rule: str, details: dict, training: dict,
                         folder: str | Path, n_boot: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Finetune's hook: validation metrics with bootstrap CIs and subgroups at the saved threshold."""
    from cxrssl.evaluation import bootstrap_ci, prepare_predictions, subgroup_metrics

    labelled, _ = prepare_predictions(val_pred, "val")
    ci = bootstrap_ci(labelled, threshold, n_boot=n_boot, seed=seed, split="val")
    evaluation = {"split": "val", "n": len(labelled), "n_patients": int(labelled["patient_id"].nunique()),
                  "prevalence": float(labelled["label"].mean()), "threshold": float(threshold),
                  "threshold_rule": f"{rule} on val", "dataset": training.get("source"),
                  "metrics": {m: {"value": v, "ci_low": lo, "ci_high": hi} for m, (v, lo, hi) in ci.items()}}
    return write_model_card(folder, details, evaluation, subgroup_metrics(labelled, threshold), training)
