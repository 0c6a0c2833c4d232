"""The label-efficiency study's statistics: one table row per method × label fraction over repeats,
each compared with its matched control on the same test patients, with Holm's correction, the
harness checks (positive/negative controls) and the label-efficiency figure.

Why here and not in the script: these are pure functions over arrays of test-set probabilities, so
they are unit-tested (tests/evaluation/test_study.py) independently of any training.

A *cell* is ``{"method", "fraction", "control" (method name or None), "probs": [repeats × test
images], "thresholds": [per repeat], "n_patients", "n_positive_patients", "n_images"}``. Repeat r of a
method and repeat r of its control share the seed and the label subset, so they are paired.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrssl.evaluation.metrics import binary_metrics
from cxrssl.evaluation.paired import holm, paired_delta_over_repeats

POSITIVE_CONTROL = "positive control"
NEGATIVE_CONTROL = "negative control"
REPORTED = ("sensitivity", "specificity", "f1", "mcc", "brier", "ece")


def summarise_cells(cells: Sequence[dict], labels: np.ndarray, codes: np.ndarray, n_boot: int = 2000,
                    seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per cell: AUROC mean ± sd over repeats with a CI over patients *and* repeats;
    ΔAUROC vs the matched control (paired over repeats and patients) with its p; threshold metrics
    averaged over repeats; Holm-adjusted p across every compared row."""
    y = np.asarray(labels, float)
    by_key = {(c["method"], c["fraction"]): c for c in cells}
    rows = []
    for cell in cells:
        probs = np.atleast_2d(np.asarray(cell["probs"], float))
        chance = np.full_like(probs, 0.5)  # constant scores: AUROC exactly 0.5, so Δ + 0.5 = AUROC
        own = paired_delta_over_repeats(y, codes, probs, chance, n_boot, seed, alpha)
        aurocs = [binary_metrics(y, p, t)["auroc"] for p, t in zip(probs, cell["thresholds"])]
        row = {"method": cell["method"], "label_fraction": cell["fraction"], "repeats": len(probs),
               "labelled_patients": cell.get("n_patients"), "labelled_positive_patients": cell.get("n_positive_patients"),
               "labelled_images": cell.get("n_images"), "auroc": float(np.mean(aurocs)),
               "auroc_sd": float(np.std(aurocs, ddof=1)) if len(aurocs) > 1 else 0.0,
               "auroc_lo": own["ci_low"] + 0.5, "auroc_hi": own["ci_high"] + 0.5, "control": cell.get("control")}
        per_repeat = [binary_metrics(y, p, t) for p, t in zip(probs, cell["thresholds"])]
        row.update({m: float(np.nanmean([r[m] for r in per_repeat])) for m in REPORTED})
        control = by_key.get((cell.get("control"), cell["fraction"]))
        if control is not None:
            n = min(len(probs), len(control["probs"]))
            paired = paired_delta_over_repeats(y, codes, probs[:n], np.asarray(control["probs"], float)[:n],
                                               n_boot, seed, alpha)
            row.update(delta=paired["delta"], delta_lo=paired["ci_low"], delta_hi=paired["ci_high"],
                       p_value=paired["p_value"])
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("delta", "delta_lo", "delta_hi", "p_value"):
        if column not in table.columns:
            table[column] = np.nan
    table["p_holm"] = holm(table["p_value"].to_numpy(float))
    return table


def harness_verdict(table: pd.DataFrame, low_fractions: Sequence[float] | None = None) -> dict:
    """Did the harness see what it must? The positive control must show a CI-separated ΔAUROC > 0
    at the low-label fractions, the negative control must not (at any fraction; the fractions where it
    does are named, since a bias at 100 % labels says nothing about the low-label arms)."""
    low = sorted(table["label_fraction"].unique())[:-1] if low_fractions is None else list(low_fractions)
    low = low or sorted(table["label_fraction"].unique())
    pos = table[(table["method"].str.startswith(POSITIVE_CONTROL)) & table["label_fraction"].isin(low)]
    neg = table[table["method"].str.startswith(NEGATIVE_CONTROL)]
    positive_separates = bool(len(pos)) and bool((pos["delta_lo"] > 0).all())
    biased_at = sorted(float(f) for f in neg.loc[neg["delta_lo"] > 0, "label_fraction"].unique())
    negative_separates = bool(biased_at)
    warnings = []
    if not positive_separates:
        warnings.append("UNDERPOWERED: the positive control (encoder pretrained to regress the true CTR) does not "
                        "show a CI-separated ΔAUROC > 0 at " + ", ".join(f"{f:g}" for f in low) +
                        "; a null result for any method below says nothing")
    if negative_separates:
        warnings.append("BIASED at label fraction " + ", ".join(f"{f:g}" for f in biased_at) + ": the negative "
                        "control (encoder pretrained on random per-patient labels) separates from random init there; "
                        "at that fraction the comparison favours pretraining for reasons other than what it learnt, "
                        "so read each Δ against the negative control's")
    return {"positive_separates": positive_separates, "negative_separates": negative_separates,
            "negative_separates_at": biased_at, "low_fractions": low, "warnings": warnings}


def _f(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _p(value) -> str:
    return "—" if value is None or not np.isfinite(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def markdown_table(table: pd.DataFrame) -> str:
    head = ("| fraction | method | labelled patients (pos) | AUROC mean ± sd [95 % CI] | ΔAUROC vs control [paired CI] "
            "| Holm p | sens | spec | F1 | MCC | Brier | ECE |")
    lines = [head, "|" + "---|" * 12]
    for _, r in table.sort_values(["label_fraction", "method"], kind="stable").iterrows():
        delta = "—" if not np.isfinite(r.delta) else \
            f"{r.delta:+.3f} [{r.delta_lo:+.3f}, {r.delta_hi:+.3f}] vs {r.control}"
        lines.append(f"| {r.label_fraction:g} | {r.method} | {r.labelled_patients} ({r.labelled_positive_patients}) | "
                     f"{_f(r.auroc)} ± {_f(r.auroc_sd)} [{_f(r.auroc_lo)}, {_f(r.auroc_hi)}] | {delta} | {_p(r.p_holm)} | "
                     + " | ".join(_f(r[m]) for m in REPORTED) + " |")
    return "\n".join(lines)


def label_efficiency_figure(table: pd.DataFrame, path: Path) -> Path:
    """Test AUROC against labelled patients (log axis), one line per method with its CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    colours = plt.get_cmap("tab20").colors  # a colour per method: tab10 repeats after ten rows
    for i, (method, rows) in enumerate(table.groupby("method", sort=True)):
        rows = rows.sort_values("labelled_patients")
        x = rows["labelled_patients"].astype(float).to_numpy()
        line, = ax.plot(x, rows["auroc"], marker="o", label=method, color=colours[(2 * i) % 20 + (2 * i) // 20 % 2],
                        linestyle="--" if "control" in method or "only" in method or "thumbnail" in method else "-")
        ax.fill_between(x, rows["auroc_lo"], rows["auroc_hi"], color=line.get_color(), alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training patients")
    ax.set_ylabel("test AUROC (mean over repeats, 95 % CI over patients and repeats)")
    ax.set_title("Label efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
