"""Figures: attribution overlays on the film, one row per image, one gallery per outcome group.

Unsigned maps (ReLU'd Grad-CAM, |saliency|) use a sequential colour map from 0; signed maps use a
diverging map centred at 0 with symmetric limits, as in the original's supplementary figure. Limits
are the 99th percentile of |map| per panel so a few extreme pixels do not wash the map out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"


def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # headless by default; leave a notebook's backend alone
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _limits(attr: np.ndarray, signed: bool) -> tuple[float, float]:
    top = float(np.nanpercentile(np.abs(attr), 99)) or float(np.nanmax(np.abs(attr))) or 1.0
    return (-top, top) if signed else (min(0.0, float(np.nanmin(attr))), top)


def draw_overlay(ax, image: np.ndarray, attr: np.ndarray | None, *, signed: bool = False,
                 mask: np.ndarray | None = None, title: str = "", alpha: float = 0.55, colorbar: bool = True):
    """Film in grey, the map on top (None draws the film alone), heart-mask contour in green."""
    from cxrssl.explain.localisation import has_mask

    ax.imshow(np.squeeze(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    handle = None
    if attr is not None:
        low, high = _limits(attr, signed)
        handle = ax.imshow(attr, cmap=DIVERGING_CMAP if signed else SEQUENTIAL_CMAP, vmin=low, vmax=high, alpha=alpha,
                           interpolation="nearest")
        if colorbar:  # an inset axis: much cheaper than letting colorbar() re-grid the figure
            bar = ax.figure.colorbar(handle, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))
            bar.ax.tick_params(labelsize=5, length=2, pad=1)
            bar.formatter.set_powerlimits((-2, 2))
            bar.ax.yaxis.get_offset_text().set_fontsize(5)
    if mask is not None and has_mask(mask):
        ax.contour(np.squeeze(mask), levels=[0.5], colors="lime", linewidths=0.8)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()
    return handle


def render_grid(images: np.ndarray, attributions: Mapping[str, np.ndarray], out_path: str | Path, *,
                signed: Mapping[str, bool], titles: Sequence[str], masks: Sequence[np.ndarray | None] | None = None,
                suptitle: str = "", panel_size: float = 2.2) -> Path:
    """Rows = images, columns = original + one overlay per method. Returns the PNG path."""
    plt = _pyplot()
    methods = list(attributions)
    n_rows, n_cols = len(images), len(methods) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size * n_cols * 1.25, panel_size * n_rows + 0.5),
                             squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.95, bottom=0.02, top=1 - 0.5 / (panel_size * n_rows + 0.5),
                        wspace=0.35, hspace=0.2)
    for row in range(n_rows):
        mask = masks[row] if masks is not None else None
        draw_overlay(axes[row, 0], images[row], None, mask=mask, title=titles[row])
        for col, method in enumerate(methods, start=1):
            draw_overlay(axes[row, col], images[row], attributions[method][row], signed=signed[method], mask=mask,
                         title=method if row == 0 else "")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def render_image_row(image: np.ndarray, attributions: Mapping[str, np.ndarray], out_path: str | Path, *,
                     signed: Mapping[str, bool], title: str, mask: np.ndarray | None = None) -> Path:
    """One film: original + every method side by side (`attributions[m]` is (H, W))."""
    return render_grid(np.asarray(image)[None], {m: np.asarray(a)[None] for m, a in attributions.items()}, out_path,
                       signed=signed, titles=[title], masks=[mask])


def image_title(image_id: str, label: float | None, probability: float | None) -> str:
    """"id · label 1 · p=0.93" (missing fields shown as "?")."""
    def fmt(value, spec: str) -> str:
        return "?" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)

    return f"{image_id} · label {fmt(label, '.0f')} · p={fmt(probability, '.2f')}"
