"""The figures of a diagnostic-accuracy report, as PNGs: ROC, PR, calibration (with per-bin counts
and Wilson 95 % CIs), confusion matrix and decision curve (net benefit, Vickers & Elkin 2006).

Matplotlib is imported inside the functions (it is slow to import and the CLI must start fast),
and figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas rather than pyplot, so
no global backend or figure state is touched (safe in tests, threads and headless servers).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import auc, average_precision_score, confusion_matrix, precision_recall_curve, roc_curve

from cxrssl.evaluation.calibration import reliability_table
from cxrssl.evaluation.metrics import ensure_two_classes, prepare_predictions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_NAMES = ("roc", "pr", "calibration", "confusion", "decision_curve")
CI = tuple[float, float, float]


def save_plots(pred_df: pd.DataFrame, threshold: float, out_dir: str | Path,
               ci: dict[str, CI] | None = None, n_bins: int = 10,
               split: str = "data") -> dict[str, Path]:
    """Write ``roc.png``, ``pr.png``, ``calibration.png``, ``confusion.png`` and
    ``decision_curve.png`` (data: ``calibration.net_benefit``); ``ci`` (from
    :func:`bootstrap_ci`) adds the AUROC/AUPRC intervals to the legends."""
    df, _ = prepare_predictions(pred_df, split)
    y, p = df["label"].to_numpy(int), df["probability"].to_numpy(float)
    ensure_two_classes(y, split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ci = ci or {}
    figures = {"roc": roc_figure(y, p, threshold, ci.get("auroc")),
               "pr": pr_figure(y, p, threshold, ci.get("auprc")),
               "calibration": calibration_figure(y, p, n_bins),
               "confusion": confusion_figure(y, p, threshold),
               "decision_curve": decision_curve_figure(y, p, threshold)}
    paths = {}
    for name, fig in figures.items():
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=120, bbox_inches="tight")
    return paths


def _figure(width: float = 4.8, height: float = 4.4) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _with_ci(name: str, value: float, ci: CI | None) -> str:
    return f"{name} {value:.3f}" + ("" if ci is None else f" (95% CI {ci[1]:.3f}–{ci[2]:.3f})")


def roc_figure(y: np.ndarray, p: np.ndarray, threshold: float, ci: CI | None = None) -> Figure:
    fpr, tpr, _ = roc_curve(y, p)
    pred = p >= threshold
    op_fpr, op_tpr = pred[y == 0].mean(), pred[y == 1].mean()
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=_with_ci("AUROC", auc(fpr, tpr), ci))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.plot(op_fpr, op_tpr, "o", c="crimson", label=f"threshold {threshold:.3g} "
            f"(sens {op_tpr:.2f}, spec {1 - op_fpr:.2f})")
    ax.set(xlabel="1 − specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           title="ROC curve", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(y: np.ndarray, p: np.ndarray, threshold: float, ci: CI | None = None) -> Figure:
    precision, recall, _ = precision_recall_curve(y, p)
    prevalence = y.mean()
    pred = p >= threshold
    fig = _figure()
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", lw=2,
            label=_with_ci("AUPRC", average_precision_score(y, p), ci))
    ax.axhline(prevalence, ls="--", c="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    if pred.any():
        ax.plot(pred[y == 1].mean(), y[pred].mean(), "o", c="crimson", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision–recall curve",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return fig


def calibration_figure(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> Figure:
    """Reliability diagram: observed fraction per bin with its Wilson 95 % CI and the bin's count
    written beside it, so a one-case bin is visibly one case; a count histogram below."""
    from statsmodels.stats.proportion import proportion_confint

    table = reliability_table(y, p, n_bins)
    fig = _figure(5.4, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = table[table["count"] > 0]
    positives = (filled["fraction_positive"] * filled["count"]).round().astype(int)
    low, high = proportion_confint(positives, filled["count"], alpha=0.05, method="wilson")
    top.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    top.errorbar(filled["mean_probability"], filled["fraction_positive"],
                 # clipped: Wilson bounds of 0/n or n/n can miss 0 or 1 by one ulp, and matplotlib refuses
                 # negative error bars
                 yerr=[np.clip(filled["fraction_positive"] - low, 0, None),
                       np.clip(high - filled["fraction_positive"], 0, None)], fmt="o-", capsize=3,
                 label="model (95 % Wilson CI per bin)")
    for x, frac, count in zip(filled["mean_probability"], filled["fraction_positive"], filled["count"]):
        top.annotate(f"n={count}", (x, frac), textcoords="offset points", xytext=(4, -12), fontsize=7,
                     color="dimgrey")
    top.set(ylabel="observed fraction positive", title="Calibration (reliability) diagram",
            xlim=(0, 1), ylim=(-0.02, 1.02))
    top.legend(loc="upper left", fontsize=8)
    width = table["bin_high"] - table["bin_low"]
    bottom.bar(table["bin_low"], table["count"], width=width, align="edge", edgecolor="white")
    bottom.set(xlabel="predicted probability", ylabel="images per bin")
    return fig


def decision_curve_figure(y: np.ndarray, p: np.ndarray, threshold: float | None = None) -> Figure:
    """Decision curve: where the model's line is above both "treat all" and "treat none" it is
    worth using at that threshold probability."""
    from cxrssl.evaluation.calibration import net_benefit

    curve = net_benefit(y, p)
    fig = _figure(5.4, 4.4)
    ax = fig.add_subplot()
    ax.plot(curve["threshold"], curve["net_benefit_model"], lw=2, label="model")
    ax.plot(curve["threshold"], curve["net_benefit_all"], ls="--", c="grey", lw=1, label="treat all")
    ax.axhline(0, c="black", lw=1, label="treat none")
    if threshold is not None:
        ax.axvline(threshold, c="crimson", ls=":", lw=1.5, label=f"chosen threshold {threshold:.3g}")
    top = max(float(np.mean(y)), float(curve["net_benefit_model"].max()))
    ax.set(xlabel="threshold probability", ylabel="net benefit (true positives per image)",
           title="Decision curve", xlim=(0, 1), ylim=(-0.05, top + 0.05))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def confusion_figure(y: np.ndarray, p: np.ndarray, threshold: float) -> Figure:
    matrix = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])
    percent = 100 * matrix / matrix.sum()
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, f"{count}\n{percent[i, j]:.1f} %", ha="center", va="center", color=colour)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["negative", "positive"],
           yticklabels=["negative", "positive"], xlabel="predicted", ylabel="true",
           title=f"Confusion matrix (threshold {threshold:.3g})")
    return fig
