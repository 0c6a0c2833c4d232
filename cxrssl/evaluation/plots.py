"""The four figures of a diagnostic-accuracy report, as PNGs.

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

PLOT_NAMES = ("roc", "pr", "calibration", "confusion")
CI = tuple[float, float, float]


def save_plots(pred_df: pd.DataFrame, threshold: float, out_dir: str | Path,
               ci: dict[str, CI] | None = None, n_bins: int = 10,
               split: str = "data") -> dict[str, Path]:
    """Write ``roc.png``, ``pr.png``, ``calibration.png`` and ``confusion.png``; ``ci`` (from
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
               "confusion": confusion_figure(y, p, threshold)}
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
    table = reliability_table(y, p, n_bins)
    fig = _figure(4.8, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = table["count"] > 0
    top.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    top.plot(table.loc[filled, "mean_probability"], table.loc[filled, "fraction_positive"], "o-",
             label="model")
    top.set(ylabel="observed fraction positive", title="Calibration (reliability) diagram",
            xlim=(0, 1), ylim=(-0.01, 1.01))
    top.legend(loc="upper left", fontsize=8)
    width = table["bin_high"] - table["bin_low"]
    bottom.bar(table["bin_low"], table["count"], width=width, align="edge", edgecolor="white")
    bottom.set(xlabel="predicted probability", ylabel="count")
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
