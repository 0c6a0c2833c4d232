"""Paired comparison of two models scored on the same test rows: ΔAUROC with a paired patient-level
bootstrap CI and DeLong's test; the same over training repeats; Holm's correction.

Why paired: two models' AUROCs on one test set are strongly correlated (same hard cases), so
overlapping *marginal* CIs say nothing about the difference. Resampling the same patients for both
models (and DeLong's covariance) uses that correlation. DeLong treats images as independent; the
bootstrap resamples patients, so it is the interval to report when patients have several films.

    python -m cxrssl.evaluation.paired a=<predictions.csv> b=<predictions.csv> [n_boot=2000] [seed=0]
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from cxrssl.evaluation.bootstrap import _weighted_rank_metrics, cluster_weights
from cxrssl.evaluation.metrics import prepare_predictions


def _placements(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive the share of negatives it outranks (ties
    ½), for each negative the share of positives that outrank it."""
    neg_sorted, pos_sorted = np.sort(neg_scores), np.sort(pos_scores)
    below = np.searchsorted(neg_sorted, pos_scores, "left")
    tied = np.searchsorted(neg_sorted, pos_scores, "right") - below
    v10 = (below + 0.5 * tied) / len(neg_scores)
    above = len(pos_scores) - np.searchsorted(pos_sorted, neg_scores, "right")
    tied_p = np.searchsorted(pos_sorted, neg_scores, "right") - np.searchsorted(pos_sorted, neg_scores, "left")
    v01 = (above + 0.5 * tied_p) / len(pos_scores)
    return v10, v01


def delong_test(labels: Sequence[float], score_a: Sequence[float], score_b: Sequence[float]) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988) test of AUROC(a) = AUROC(b) on the same cases."""
    y = np.asarray(labels, dtype=float)
    pos = y == 1
    if pos.all() or not pos.any():
        raise ValueError("DeLong's test needs both classes among the labels")
    comps = [_placements(np.asarray(s, float)[pos], np.asarray(s, float)[~pos]) for s in (score_a, score_b)]
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    auc = v10.mean(axis=1)
    cov = np.cov(v10) / pos.sum() + np.cov(v01) / (~pos).sum()
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    delta = auc[0] - auc[1]
    z = delta / np.sqrt(var) if var > 0 else (0.0 if delta == 0 else np.inf * np.sign(delta))
    return {"auroc_a": float(auc[0]), "auroc_b": float(auc[1]), "delta": float(delta),
            "se": float(np.sqrt(max(var, 0.0))), "z": float(z), "p_value": float(2 * stats.norm.sf(abs(z))),
            "var_a": float(cov[0, 0]), "var_b": float(cov[1, 1])}


def _bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p for Δ = 0 (share of resamples on the other side of zero, doubled)."""
    deltas = deltas[np.isfinite(deltas)]
    if not len(deltas):
        return float("nan")
    side = min(np.mean(deltas <= 0), np.mean(deltas >= 0))
    return float(min(1.0, max(2 * side, 1 / len(deltas))))


def _auroc_rows(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    pos = y == 1
    return _weighted_rank_metrics(pos, p, w, w @ pos, w @ ~pos)[0]


def _valid_weights(y: np.ndarray, codes: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    w = cluster_weights(codes, n_boot, rng)
    for _ in range(100):  # redraw one-class resamples, as bootstrap_ci does
        bad = ((w @ y) == 0) | ((w @ (1 - y)) == 0)
        if not bad.any():
            break
        w[bad] = cluster_weights(codes, int(bad.sum()), rng)
    return w


def paired_delta_over_repeats(labels: np.ndarray, codes: np.ndarray, probs_a: Sequence[np.ndarray],
                              probs_b: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0,
                              alpha: float = 0.05) -> dict:
    """Mean ΔAUROC (a − b) over repeats paired by index (repeat r of a with repeat r of b: same
    seed and label subset), with a CI that covers test sampling *and* training variance: each
    resample draws patients (shared by both arms) and repeats (with replacement)."""
    y = np.asarray(labels, float)
    a, b = np.atleast_2d(np.asarray(probs_a, float)), np.atleast_2d(np.asarray(probs_b, float))
    if a.shape != b.shape or a.shape[1] != len(y):
        raise ValueError(f"paired repeats need equal shapes (repeats × images); got {a.shape} and {b.shape} "
                         f"for {len(y)} labels")
    rng = np.random.default_rng(seed)
    w = _valid_weights(y, np.asarray(codes), n_boot, rng)
    per_repeat = np.stack([_auroc_rows(y, a[r], w) - _auroc_rows(y, b[r], w) for r in range(len(a))])
    picks = rng.integers(0, len(a), size=(n_boot, len(a)))
    deltas = np.take_along_axis(per_repeat.T, picks, axis=1).mean(axis=1)
    ones = np.ones((1, len(y)))
    point_each = np.array([(_auroc_rows(y, a[r], ones) - _auroc_rows(y, b[r], ones))[0] for r in range(len(a))])
    lo, hi = np.nanquantile(deltas, [alpha / 2, 1 - alpha / 2])
    return {"delta": float(point_each.mean()), "delta_sd": float(point_each.std(ddof=1)) if len(a) > 1 else 0.0,
            "ci_low": float(lo), "ci_high": float(hi), "p_value": _bootstrap_p(deltas),
            "n_repeats": len(a), "n_boot": n_boot}


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                        alpha: float = 0.05, cluster: str = "patient_id") -> dict:
    """ΔAUROC (a − b) of two predictions tables on the same test rows (joined on ``image_id``):
    paired patient-level bootstrap CI and p, plus DeLong's test as a cross-check."""
    a, _ = prepare_predictions(a, "a")
    b, _ = prepare_predictions(b, "b")
    merged = a.merge(b[["image_id", "label", "probability"]], on="image_id", suffixes=("_a", "_b"))
    if len(merged) < max(len(a), len(b)):
        raise ValueError(f"paired comparison needs the same test rows: a has {len(a)} labelled images, b "
                         f"{len(b)}, {len(merged)} shared image_ids; evaluate both on the same split")
    if not (merged["label_a"] == merged["label_b"]).all():
        bad = merged.loc[merged["label_a"] != merged["label_b"], "image_id"].head(5).tolist()
        raise ValueError(f"the two tables disagree on labels (image_id {bad}); they are not the same test set")
    y = merged["label_a"].to_numpy(float)
    codes = pd.factorize(merged[cluster])[0]
    pa, pb = merged["probability_a"].to_numpy(float), merged["probability_b"].to_numpy(float)
    boot = paired_delta_over_repeats(y, codes, [pa], [pb], n_boot, seed, alpha)
    delong = delong_test(y, pa, pb)
    return {"n_images": len(y), "n_patients": int(codes.max()) + 1, "n_positive": int(y.sum()),
            "auroc_a": delong["auroc_a"], "auroc_b": delong["auroc_b"], "delta": boot["delta"],
            "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "bootstrap_p": boot["p_value"],
            "delong_z": delong["z"], "delong_p": delong["p_value"], "n_boot": n_boot, "alpha": alpha}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), np.nan)
    known = np.flatnonzero(np.isfinite(p))
    order = known[np.argsort(p[known], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``a=<csv> b=<csv> [n_boot=N] [seed=S]`` → prints the comparison; 2 on bad input."""
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    if "a" not in args or "b" not in args:
        print("usage: python -m cxrssl.evaluation.paired a=<predictions.csv> b=<predictions.csv> "
              "[n_boot=2000] [seed=0]  (predictions.csv as written by cxrssl evaluate)", file=sys.stderr)
        return 2
    try:
        tables = {k: pd.read_csv(args[k]) for k in ("a", "b")}
        for key, table in tables.items():
            if "split" in table.columns and table["split"].nunique() > 1:
                tables[key] = table[table["split"] == "test"]
        result = compare_predictions(tables["a"], tables["b"], int(args.get("n_boot", 2000)), int(args.get("seed", 0)))
    except (OSError, ValueError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    print(f"AUROC a={result['auroc_a']:.4f}  b={result['auroc_b']:.4f}  on {result['n_images']} images / "
          f"{result['n_patients']} patients ({result['n_positive']} positive)")
    print(f"ΔAUROC (a − b) = {result['delta']:+.4f}  95 % paired patient bootstrap CI "
          f"[{result['ci_low']:+.4f}, {result['ci_high']:+.4f}], bootstrap p = {result['bootstrap_p']:.4g}; "
          f"DeLong z = {result['delong_z']:.3f}, p = {result['delong_p']:.4g} (images as independent)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
