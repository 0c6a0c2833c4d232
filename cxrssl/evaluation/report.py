"""The one call ``cxrssl evaluate`` makes: metrics with CIs, subgroups, cohort, plots, files.

Output folder layout: ``metrics.csv`` (metric, value, ci_low, ci_high), ``subgroups.csv``,
``subgroup_tests.csv``, ``cohort.csv`` (when a cohort is given), ``predictions.csv`` (input rows
plus ``predicted``), ``roc.png``, ``pr.png``, ``calibration.png``, ``confusion.png`` and
``report.md``. The returned summary is JSON-serialisable (NaN → ``None``).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cxrssl.evaluation.bootstrap import bootstrap_ci
from cxrssl.evaluation.calibration import calibration_slope_intercept, net_benefit
from cxrssl.evaluation.cohort import cohort_table
from cxrssl.evaluation.metrics import METRIC_NAMES, ensure_two_classes, prepare_predictions
from cxrssl.evaluation.plots import save_plots
from cxrssl.evaluation.subgroups import subgroup_metrics, subgroup_tests
from cxrssl.evaluation.thresholds import choose_threshold
from cxrssl.common import jsonable as _json_safe

METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC (average precision)", "sensitivity": "Sensitivity",
    "specificity": "Specificity", "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1", "mcc": "MCC",
    "balanced_accuracy": "Balanced accuracy", "accuracy": "Accuracy", "brier": "Brier score",
    "ece": "ECE",
}


def evaluate_predictions(pred_df: pd.DataFrame, threshold: float | str, out_dir: str | Path, *,
                         cohort: dict[str, pd.DataFrame] | None = None, n_boot: int = 2000,
                         seed: int = 0, split_name: str = "test", threshold_rule: str | None = None,
                         cluster: str | None = "patient_id", age_bands=(0, 40, 60, 80, 200),
                         n_bins: int = 10, dataset: str | None = None, ci_method: str = "percentile",
                         recalibration: dict | None = None) -> dict:
    """Evaluate one split's predictions and write every artefact to ``out_dir``.

    ``threshold`` should be chosen on another split (``choose_threshold`` on validation) and
    described by ``threshold_rule`` (e.g. ``"youden on val"``). A rule string here is applied to
    this split itself and the report flags the result as optimistic. Rows of other splits are
    dropped when the table has a ``split`` column that contains ``split_name``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _select_split(pred_df, split_name)
    labelled, n_excluded = prepare_predictions(rows, split_name)
    ensure_two_classes(labelled["label"].to_numpy(), split_name)
    threshold, threshold_rule = _resolve_threshold(labelled, threshold, threshold_rule, split_name)

    ci = bootstrap_ci(labelled, threshold, n_boot=n_boot, seed=seed, cluster=cluster,
                      n_bins=n_bins, split=split_name, method=ci_method)
    metrics = pd.DataFrame([(m, *ci[m]) for m in METRIC_NAMES],
                           columns=["metric", "value", "ci_low", "ci_high"])
    subgroups = subgroup_metrics(labelled, threshold, age_bands)
    tests = subgroup_tests(labelled, threshold, age_bands)
    files = {"metrics": out / "metrics.csv", "subgroups": out / "subgroups.csv",
             "subgroup_tests": out / "subgroup_tests.csv", "predictions": out / "predictions.csv"}
    metrics.to_csv(files["metrics"], index=False)
    subgroups.to_csv(files["subgroups"], index=False)
    tests.to_csv(files["subgroup_tests"], index=False)
    written = rows.copy()
    written["predicted"] = (pd.to_numeric(written["probability"]) >= threshold).astype(int)
    written.to_csv(files["predictions"], index=False)
    cohort_df = None
    if cohort:
        cohort_df = cohort_table(cohort)
        files["cohort"] = out / "cohort.csv"
        cohort_df.to_csv(files["cohort"], index=False)
    files.update(save_plots(labelled, threshold, out, ci=ci, n_bins=n_bins, split=split_name))

    n_pos = int(labelled["label"].sum())
    summary = {
        "dataset": dataset, "split": split_name, "n": len(labelled),
        "n_patients": int(labelled["patient_id"].nunique()), "n_excluded": n_excluded,
        "n_positive": n_pos, "prevalence": n_pos / len(labelled),
        "threshold": float(threshold), "threshold_rule": threshold_rule,
        "metrics": {m: {"value": v, "ci_low": lo, "ci_high": hi} for m, (v, lo, hi) in ci.items()},
        "bootstrap": {k: v for k, v in ci.info.items() if k != "n_excluded"},
        "subgroup_p_values": dict(zip(tests["attribute"], tests["p_value"])),
        "calibration": calibration_slope_intercept(labelled["label"], labelled["probability"]),
        "recalibration": recalibration or {"method": "none"},
    }
    files["net_benefit"] = out / "net_benefit.csv"  # decision-curve data (plot: explain/report)
    net_benefit(labelled["label"], labelled["probability"]).to_csv(files["net_benefit"], index=False)
    files["report"] = out / "report.md"
    files["report"].write_text(_markdown(summary, metrics, subgroups, tests, cohort_df, files))
    summary["files"] = {name: str(path) for name, path in files.items()}
    return _json_safe(summary)


def format_terminal_table(summary: dict) -> str:
    """Compact ``metric | value | 95 % CI`` table of an :func:`evaluate_predictions` summary."""
    level = round(100 * (1 - summary.get("bootstrap", {}).get("alpha", 0.05)))
    head = (f"{summary.get('split', '?')}: n={summary.get('n')} (excluded {summary.get('n_excluded', 0)}), "
            f"prevalence {_fmt(summary.get('prevalence'))}, threshold {_fmt(summary.get('threshold'))}"
            f" ({summary.get('threshold_rule') or 'fixed'})")
    rows = [(METRIC_LABELS.get(m, m), _fmt(v["value"]), f"{_fmt(v['ci_low'])}–{_fmt(v['ci_high'])}")
            for m, v in summary["metrics"].items()]
    widths = [max(len(r[i]) for r in [("metric", "value", f"{level} % CI"), *rows]) for i in range(3)]
    line = "-+-".join("-" * w for w in widths)
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([head, fmt.format("metric", "value", f"{level} % CI"), line,
                      *(fmt.format(*r) for r in rows)])


def _select_split(pred_df: pd.DataFrame, split_name: str) -> pd.DataFrame:
    if "split" not in pred_df.columns:
        return pred_df
    present = pred_df["split"].dropna().unique()
    if split_name in present:
        return pred_df[pred_df["split"] == split_name]
    if len(present) > 1:
        raise ValueError(f"predictions hold splits {sorted(map(str, present))} but not "
                         f"{split_name!r}; pass split_name= one of them")
    return pred_df


def _resolve_threshold(df: pd.DataFrame, threshold: float | str, rule: str | None,
                       split: str) -> tuple[float, str]:
    try:
        return float(threshold), rule or "fixed"
    except (TypeError, ValueError):
        chosen = choose_threshold(df["label"], df["probability"], threshold, split=split)
        return chosen, f"{threshold} on {split} itself (optimistic: not chosen on held-out data)"


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _fmt_p(value: object) -> str:
    if not isinstance(value, float) or math.isnan(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _markdown_table(df: pd.DataFrame) -> str:
    cells = df.astype(object).copy()
    for column in cells.columns:
        is_p = "p_value" in str(column)
        cells[column] = [_fmt_p(v) if is_p else _fmt(v) if isinstance(v, float) else str(v)
                         for v in cells[column]]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _metrics_for_humans(metrics: pd.DataFrame, alpha: float) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": metrics["metric"].map(METRIC_LABELS).fillna(metrics["metric"]),
        "value": metrics["value"],
        f"{100 * (1 - alpha):.0f} % CI": [f"{_fmt(lo)}–{_fmt(hi)}" for lo, hi in
                                           zip(metrics["ci_low"], metrics["ci_high"])]})


def _markdown(summary: dict, metrics: pd.DataFrame, subgroups: pd.DataFrame, tests: pd.DataFrame,
              cohort: pd.DataFrame | None, files: dict[str, Path]) -> str:
    boot = summary["bootstrap"]
    title = f"# Evaluation: {summary['dataset'] + ' / ' if summary['dataset'] else ''}{summary['split']}"
    parts = [
        title, "",
        f"- images: {summary['n']} from {summary['n_patients']} patients "
        f"({summary['n_excluded']} rows without a label excluded)",
        f"- positives: {summary['n_positive']} (prevalence {summary['prevalence']:.3f})",
        f"- threshold: {summary['threshold']:.4g} ({summary['threshold_rule']}); "
        "positive when probability ≥ threshold",
        f"- CIs: {100 * (1 - boot['alpha']):.0f} % {boot['method']} bootstrap, {boot['n_valid']} "
        f"resamples of {'clusters by ' + boot['cluster'] if boot['cluster'] else 'images'} (seed {boot['seed']}; {boot['n_redrawn']} "
        f"one-class resamples redrawn, {boot['n_skipped']} skipped)",
        f"- calibration: slope {_fmt(summary['calibration']['calibration_slope'])} (1 = ideal), "
        f"intercept {_fmt(summary['calibration']['calibration_intercept'])} (0 = ideal); recalibration: "
        f"{summary['recalibration'].get('method', 'none')}",
        "", "## Metrics", "", _markdown_table(_metrics_for_humans(metrics, boot["alpha"])), "",
        "## Subgroups", "", _markdown_table(subgroups.drop(columns=["test_p_holm"])), "",
        "Do sensitivity and specificity differ across the groups of an attribute? Wald χ² with a "
        "patient-bootstrap covariance, Bonferroni over the two, Holm across attributes:", "",
        _markdown_table(tests), "",
    ]
    if cohort is not None:
        parts += ["## Cohort", "", _markdown_table(cohort), ""]
    parts += ["## Plots", ""] + [f"![{name}]({files[name].name})" for name in
                                  ("roc", "pr", "calibration", "confusion")]
    return "\n".join(parts) + "\n"
