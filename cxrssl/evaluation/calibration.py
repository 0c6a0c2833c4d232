"""Expected calibration error and reliability-diagram bins.

A short NumPy version of torchmetrics' ``BinaryCalibrationError(n_bins, norm="l1")`` (the tests
check they agree) so that evaluation needs no torch import and the bootstrap can evaluate a
whole matrix of resample weights at once. Binning follows torchmetrics exactly: equal-width
bins ``[k/n, (k+1)/n)`` from ``linspace(0, 1, n_bins + 1)``, with probability exactly 1.0 in a
bin of its own; ECE = Σ_bins (bin weight / total) · |mean label − mean probability|.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def bin_index(probs: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Bin of each probability, in ``0 .. n_bins`` (``n_bins`` only for p == 1.0)."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges, np.asarray(probs, dtype=float), side="right") - 1


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10,
                               weights: np.ndarray | None = None) -> np.ndarray | float:
    """L1 ECE of positive-class probabilities against 0/1 labels.

    ``weights`` (optional) is ``(n_images,)`` or ``(n_resamples, n_images)`` of non-negative
    multiplicities (bootstrap counts); a 2-D input returns one ECE per row.
    """
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    onehot = np.zeros((len(p), n_bins + 1))
    onehot[np.arange(len(p)), bin_index(p, n_bins)] = 1.0
    w = np.ones((1, len(p))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    count = w @ onehot
    gap = np.abs(w @ (onehot * y[:, None]) - w @ (onehot * p[:, None]))
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = gap.sum(axis=1) / count.sum(axis=1)
    return float(ece[0]) if weights is None or np.ndim(weights) == 1 else ece


def reliability_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Per-bin count, mean probability and observed positive fraction (for the diagram)."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    idx = np.minimum(bin_index(p, n_bins), n_bins - 1)  # fold p == 1.0 into the top bin for display
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    frame = pd.DataFrame({"bin": idx, "p": p, "y": y}).groupby("bin")
    table = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:]})
    table["count"] = frame.size().reindex(range(n_bins), fill_value=0).to_numpy()
    table["mean_probability"] = frame["p"].mean().reindex(range(n_bins)).to_numpy()
    table["fraction_positive"] = frame["y"].mean().reindex(range(n_bins)).to_numpy()
    return table


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calibration_slope_intercept(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Cox's calibration slope (logistic regression of the label on logit(p); 1 = ideal, < 1 =
    over-confident) and calibration-in-the-large (intercept with logit(p) as an offset; 0 = ideal,
    < 0 = predictions too high). Unpenalised maximum likelihood (scikit-learn, C=inf)."""
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    y, z = np.asarray(labels, dtype=float), _logit(probs)
    if len(np.unique(y)) < 2:
        return {"calibration_slope": float("nan"), "calibration_intercept": float("nan")}
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(z[:, None], y.astype(int))

    def nll(a: float) -> float:
        q = 1 / (1 + np.exp(-(a + z)))
        return -np.sum(y * np.log(np.clip(q, 1e-12, 1)) + (1 - y) * np.log(np.clip(1 - q, 1e-12, 1)))

    intercept = minimize_scalar(nll, bounds=(-20, 20), method="bounded").x
    return {"calibration_slope": float(fit.coef_[0, 0]), "calibration_intercept": float(intercept)}


RECALIBRATION_METHODS = ("none", "temperature", "platt")


def fit_recalibration(labels: np.ndarray, probs: np.ndarray, method: str):
    """A monotone map p → p' fitted on *validation* predictions (never on the evaluated split):
    ``temperature`` divides the logit by one scalar T (Guo et al. 2017), ``platt`` fits
    sigmoid(a·logit + b) (Platt 1999), ``none`` is the identity. Returns (function, parameters)."""
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    if method not in RECALIBRATION_METHODS:
        raise ValueError(f"evaluate.recalibrate={method!r}: choose one of {list(RECALIBRATION_METHODS)}")
    if method == "none":
        return (lambda p: np.asarray(p, dtype=float)), {}
    y, z = np.asarray(labels, dtype=float), _logit(probs)
    if len(np.unique(y)) < 2:
        raise ValueError("recalibration needs both classes in the validation split")
    if method == "temperature":
        def nll(log_t: float) -> float:
            q = np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), 1e-12, 1 - 1e-12)
            return -np.sum(y * np.log(q) + (1 - y) * np.log(1 - q))

        t = float(np.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded").x))
        return (lambda p: 1 / (1 + np.exp(-_logit(p) / t))), {"temperature": t}
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(z[:, None], y.astype(int))
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return (lambda p: 1 / (1 + np.exp(-(a * _logit(p) + b)))), {"platt_a": a, "platt_b": b}


def net_benefit(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Decision-curve data (Vickers & Elkin 2006): at each threshold probability t, the model's net
    benefit TP/n − FP/n · t/(1−t), against treating everyone (prevalence − (1−prevalence) · t/(1−t))
    and no one (0). Columns: threshold, net_benefit_model, net_benefit_all, net_benefit_none."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    t = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, dtype=float)
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("net_benefit thresholds must lie strictly between 0 and 1")
    n, prevalence = len(y), y.mean()
    called = p[None, :] >= t[:, None]
    tp = (called & (y[None, :] == 1)).sum(axis=1) / n
    fp = (called & (y[None, :] == 0)).sum(axis=1) / n
    odds = t / (1 - t)
    return pd.DataFrame({"threshold": t, "net_benefit_model": tp - fp * odds,
                         "net_benefit_all": prevalence - (1 - prevalence) * odds,
                         "net_benefit_none": np.zeros_like(t)})


def recalibrate_predictions(val: pd.DataFrame, evaluated: pd.DataFrame, method: str, rule: str):
    """Fit ``method`` on the validation predictions, apply it to both tables, and re-choose the
    threshold by ``rule`` on the recalibrated validation probabilities (a threshold chosen on the
    old scale would no longer mean the same operating point). Returns (evaluated table with
    recalibrated ``probability``, threshold, info)."""
    from cxrssl.evaluation.thresholds import choose_threshold

    val = val.dropna(subset=["label"])
    transform, params = fit_recalibration(val["label"].to_numpy(float), val["probability"].to_numpy(float), method)
    out = evaluated.copy()
    out["probability_raw"] = out["probability"]
    out["probability"] = transform(out["probability"].to_numpy(float))
    val_p = transform(val["probability"].to_numpy(float))
    threshold = choose_threshold(val["label"].to_numpy(float), val_p, rule, split="val")
    before = calibration_slope_intercept(val["label"], val["probability"])
    return out, float(threshold), {"method": method, "rule": rule, **params,
                                   "val_slope_before": before["calibration_slope"], "n_val": len(val)}
