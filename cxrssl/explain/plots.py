"""Summary figures of an explain run: the cascading-randomisation curve of every method.

Drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot state), at sizes and fonts that
read at 100 % zoom.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_sanity_levels(levels: pd.DataFrame, out_path: str | Path) -> Path:
    """One panel per method: median Spearman ρ(trained, randomised map) as the cascade re-initialises
    the network from the head down ("all" = everything), against the closest model-independent
    reference (dashed): a curve that ends below the dashed line passes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(levels["method"]))
    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, method in zip(axes.ravel(), methods):
        frame = levels[levels["method"] == method]
        x = range(len(frame))
        ax.plot(x, frame["spearman"].abs(), "o-", label="|ρ| of maps")
        ax.plot(x, frame["spearman_abs"], "s--", label="ρ of |maps|")
        ref = float(frame["similarity_reference"].iloc[0])
        ax.axhline(ref, color="crimson", ls=":", lw=1.5, label=f"reference: {frame['reference'].iloc[0]} ({ref:.2f})")
        ax.set_xticks(list(x), [str(v).replace("encoder.net.", "") for v in frame["level"]], rotation=30,
                      ha="right", fontsize=9)
        ax.set_ylim(min(-0.02, float(frame["spearman_abs"].min()) - 0.05), 1.02)  # ρ of |maps| can be < 0
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(method, fontsize=11)
        ax.set_ylabel("similarity to trained map", fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(methods):]:
        ax.set_axis_off()
    fig.suptitle("Cascading randomisation (Adebayo et al. 2018): re-initialised from the head (left) "
                 "to the whole model (right)", fontsize=11)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return out_path
