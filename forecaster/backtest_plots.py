"""Figures of a backtest (:class:`forecaster.backtest.BacktestResult`): calibration and predictions.

* :func:`plot_calibration`: nominal vs empirical coverage of the central
  50/80/90% predictive intervals, one line per method, with the diagonal.
* :func:`plot_predictions`: per method, the predicted median with its 50% and
  90% intervals against the observed held-out accuracy, with the diagonal.
* :func:`plot_backtest`: both in one figure (what ``forecaster backtest --plot`` saves).

Matplotlib ``Figure`` objects without pyplot (no global state, no display).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_calibration", "plot_predictions", "plot_backtest"]

COLORS = {"forecaster": "#1f77b4", "logistic": "#d62728", "unpooled": "#2ca02c"}
LEVELS = (50, 80, 90)


def _calibration(ax, result) -> None:
    ax.plot([0, 100], [0, 100], color="0.6", lw=1, ls="--", label="ideal")
    for _, r in result.scores.iterrows():
        emp = [r[f"coverage{lv}"] for lv in LEVELS]
        if any(v is None or not np.isfinite(v) for v in emp):
            continue
        ax.plot(LEVELS, np.array(emp) * 100, "o-", color=COLORS.get(r["method"], None),
                label=f"{r['method']} ({int(r['n_points'])} pts)")
    ax.set_xlim(40, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("nominal coverage of central interval (%)")
    ax.set_ylabel("held-out values inside (%)")
    ax.set_title("calibration")
    ax.legend(fontsize=8, loc="upper left")


def _predictions(ax, result, method: str) -> None:
    p = result.points[result.points["method"] == method]
    obs = p["observed"].to_numpy(float)
    med = p["pred_q50"].to_numpy(float)
    c = COLORS.get(method, "k")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.vlines(obs, p["pred_q05"], p["pred_q95"], color=c, alpha=0.3, lw=1, label="90% interval")
    ax.vlines(obs, p["pred_q25"], p["pred_q75"], color=c, alpha=0.7, lw=2.5, label="50% interval")
    ax.plot(obs, med, "o", ms=3, color=c, label="median")
    thr = result.threshold
    ax.axhline(thr, color="0.8", lw=0.8)
    ax.axvline(thr, color="0.8", lw=0.8)
    s = result.scores[result.scores["method"] == method]
    title = method
    if len(s) and s["coverage90"].notna().all():
        r = s.iloc[0]
        title += f": 90% cov {r['coverage90']:.2f}, CRPS {r['crps']:.1f} pp"
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("observed held-out accuracy")
    ax.set_ylabel("predicted")
    ax.legend(fontsize=7, loc="upper left")


def plot_calibration(result) -> Figure:
    """Nominal vs empirical coverage (50/80/90%) per method."""
    fig = Figure(figsize=(4.5, 4))
    FigureCanvasAgg(fig)
    _calibration(fig.add_subplot(1, 1, 1), result)
    fig.tight_layout()
    return fig


def plot_predictions(result) -> Figure:
    """Predicted median and 50/90% intervals vs observed, one panel per method."""
    methods = list(result.methods)
    fig = Figure(figsize=(4 * len(methods), 4))
    FigureCanvasAgg(fig)
    for i, m in enumerate(methods):
        _predictions(fig.add_subplot(1, len(methods), i + 1), result, m)
    fig.tight_layout()
    return fig


def plot_backtest(result) -> Figure:
    """Calibration panel followed by one predicted-vs-observed panel per method."""
    methods = list(result.methods)
    n = 1 + len(methods)
    fig = Figure(figsize=(4 * n, 4))
    FigureCanvasAgg(fig)
    _calibration(fig.add_subplot(1, n, 1), result)
    for i, m in enumerate(methods):
        _predictions(fig.add_subplot(1, n, i + 2), result, m)
    labels = "; ".join(s["label"] for s in result.splits)
    fig.suptitle(f"backtest ({labels})", fontsize=10)
    fig.tight_layout()
    return fig
