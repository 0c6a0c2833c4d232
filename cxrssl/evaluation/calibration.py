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
