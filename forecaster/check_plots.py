"""Figure of a posterior predictive check (:class:`forecaster.check.Check`): observed against replicated
data per task and quantity, and the PIT histogram. A matplotlib ``Figure`` without pyplot."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_check"]

#: Cell-level quantities drawn against compute (the item-group sums of squares are in the table only).
_SHOWN = ("accuracy", "mean log CE", "log mean CE")


def plot_check(result, max_panels: int = 24) -> Figure:
    """Per (task, quantity): each cell's observed value (dot; red outside its replicated 90% interval) and the
    replicated 50% and 90% intervals against log10 compute; last panel: the PIT histogram of all
    observations (flat when the model is calibrated to its own data)."""
    pts = result.points[result.points["quantity"].isin(_SHOWN)]
    groups = list(pts.groupby(["task", "quantity"], sort=True))[:max_panels]
    n = len(groups) + 1
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, ((task, quantity), g) in zip(axes, groups):
        g = g.sort_values("log10_compute")
        x = g["log10_compute"].to_numpy(float)
        jitter = np.where(g["family"].astype("category").cat.codes.to_numpy() % 2 == 0, -0.02, 0.02)
        ax.vlines(x + jitter, g["rep_q05"], g["rep_q95"], color="#1f77b4", alpha=0.3, lw=1, label="replicated 90%")
        ax.vlines(x + jitter, g["rep_q25"], g["rep_q75"], color="#1f77b4", alpha=0.8, lw=2.5, label="replicated 50%")
        y = g["observed"].to_numpy(float)
        out = (y < g["rep_q05"].to_numpy(float)) | (y > g["rep_q95"].to_numpy(float))
        ax.plot((x + jitter)[~out], y[~out], "o", ms=3, color="k", label="observed")
        if out.any():
            ax.plot((x + jitter)[out], y[out], "o", ms=4, color="#d62728", label="outside 90%")
        inside = 1.0 - out.mean()
        ax.set_title(f"{task}: {quantity} ({100 * inside:.0f}% in 90%)", fontsize=9)
        ax.set_xlabel("log10 compute (FLOPs)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="best")
    ax = axes[len(groups)]
    pit = result.points["pit"].to_numpy(float)
    ax.hist(pit, bins=10, range=(0, 1), color="0.5", edgecolor="white")
    ax.axhline(len(pit) / 10, color="k", lw=1, ls="--")
    ax.set_title(f"PIT, all {len(pit)} observations", fontsize=9)
    ax.set_xlabel("PIT (share of replicates below observed)", fontsize=8)
    ax.tick_params(labelsize=7)
    for extra in axes[n:]:
        extra.set_visible(False)
    fig.suptitle("posterior predictive check", fontsize=10)
    return fig
