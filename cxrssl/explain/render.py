"""Figures: attribution overlays on the film, one row per image, one gallery per outcome group.

Unsigned maps (ReLU'd Grad-CAM, |saliency|) use a sequential colour map from 0; signed maps use a
diverging map centred at 0 with symmetric limits, as in the original's supplementary figure. Limits
are the 99th percentile of |map| per panel so a few extreme pixels do not wash the map out.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"


MASK_LEGEND = "green outline = heart mask (ground truth)"
SCALE_NOTE = "colours scaled per panel to the 99th percentile of |attribution|"


def _limits(attr: np.ndarray, signed: bool) -> tuple[float, float]:
    top = float(np.nanpercentile(np.abs(attr), 99)) or float(np.nanmax(np.abs(attr))) or 1.0
    return (-top, top) if signed else (min(0.0, float(np.nanmin(attr))), top)


def normalised(attr: np.ndarray, signed: bool) -> np.ndarray:
    """The map divided by its 99th percentile of |value| and clipped: [-1, 1] signed, [0, 1] not, so
    every panel shares one labelled colour bar and no "1e-2" offset appears."""
    top = _limits(attr, signed)[1]
    return np.clip(np.asarray(attr, dtype=np.float32) / top, -1.0 if signed else 0.0, 1.0)


def colour_bar(fig, handle, ax, signed: bool, fontsize: int = 9):
    """A horizontal colour bar under `ax` whose ends say what the colours mean (an inset axis:
    no layout engine, which would cost seconds per figure)."""
    cax = ax.inset_axes([0.1, -0.16, 0.8, 0.05])
    bar = fig.colorbar(handle, cax=cax, orientation="horizontal")
    if signed:
        bar.set_ticks([-1, 0, 1], labels=["against", "0", "for"])
        bar.set_label("red: for cardiomegaly, blue: against", fontsize=fontsize)
    else:
        bar.set_ticks([0, 0.5, 1], labels=["0", "0.5", "max"])
        bar.set_label("attribution (unsigned)", fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize, length=2, pad=1)
    return bar


def draw_overlay(ax, image: np.ndarray, attr: np.ndarray | None, *, signed: bool = False,
                 mask: np.ndarray | None = None, title: str = "", alpha: float = 0.55, colorbar: bool = False,
                 fontsize: int = 10):
    """Film in grey, the normalised map on top (None draws the film alone), heart mask in green.
    Returns the map's image handle (for a shared colour bar)."""
    from cxrssl.explain.localisation import has_mask

    ax.imshow(np.squeeze(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    handle = None
    if attr is not None:
        handle = ax.imshow(normalised(attr, signed), cmap=DIVERGING_CMAP if signed else SEQUENTIAL_CMAP,
                           vmin=-1.0 if signed else 0.0, vmax=1.0, alpha=alpha, interpolation="nearest")
        if colorbar:
            colour_bar(ax.figure, handle, ax, signed, fontsize=fontsize)
    if mask is not None and has_mask(mask):
        ax.contour(np.squeeze(mask), levels=[0.5], colors="lime", linewidths=1.2)
    if title:
        ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])
    return handle


def render_grid(images: np.ndarray, attributions: Mapping[str, np.ndarray], out_path: str | Path, *,
                signed: Mapping[str, bool], titles: Sequence[str], masks: Sequence[np.ndarray | None] | None = None,
                suptitle: str = "", panel_size: float = 2.6) -> Path:
    """Rows = images (id, label, probability at the left), columns = the film + one overlay per
    method (name on top), a labelled colour bar under each method column and a legend line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(attributions)
    n_rows, n_cols = len(images), len(methods) + 1
    width, height = panel_size * n_cols + 0.8, panel_size * 1.1 * n_rows + 1.7
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.1 / width, top=1 - 0.95 / height, bottom=0.75 / height,
                        wspace=0.12, hspace=0.12)
    handles: dict[str, object] = {}
    for row in range(n_rows):
        mask = masks[row] if masks is not None else None
        draw_overlay(axes[row, 0], images[row], None, mask=mask, title="film" if row == 0 else "")
        axes[row, 0].set_ylabel(titles[row].replace(" · ", "\n", 1), fontsize=10)
        for col, method in enumerate(methods, start=1):
            handles[method] = draw_overlay(axes[row, col], images[row], attributions[method][row],
                                           signed=signed[method], mask=mask,
                                           title=method.replace("_", " ") if row == 0 else "")
    for col, method in enumerate(methods, start=1):
        if handles.get(method) is not None:
            colour_bar(fig, handles[method], axes[-1, col], signed[method])
    axes[-1, 0].set_xlabel(MASK_LEGEND.replace(" = ", " =\n"), fontsize=9, color="green")
    heading = f"{suptitle}: " if suptitle else ""
    legend = textwrap.fill(f"{MASK_LEGEND}; {SCALE_NOTE}", width=max(40, int(width * 11)))
    fig.suptitle(f"{heading.rstrip(': ')}\n{legend}" if heading else legend, fontsize=11, y=1 - 0.1 / height,
                 va="top")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
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
