"""Forecast plots: a metric panel (observed scores, posterior bands, threshold, crossing density) above the
smooth per-token log cross-entropy panel it is derived from.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, Agg canvas), so they are
safe headless and in threads; save them with ``fig.savefig(path)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.stats import beta as beta_dist

from .effects import SettingEffects
from .errors import QueryError
from .fit import FitResult
from .forecast import MAX_LOG10_COMPUTE, Forecast, forecast, latent, metric_curve, trend
from .metrics import METRICS, item_spread
from .model import accuracy_shows_no_rise

__all__ = ["plot_forecast", "plot_crossing", "plot_setting_effects", "MAX_PLOT_DRAWS"]

#: Posterior draws used for the bands (thinned evenly beyond this).
MAX_PLOT_DRAWS = 1000
#: Tasks per row of the ``task="all"`` grid before it wraps.
GRID_COLUMNS = 4
GRID_POINTS = 120
OBS_INTERVAL = 0.90  # Jeffreys interval of observed exact match

_C_FIT = "C0"
_C_OBS = "black"
_C_AGG = "C1"
_C_CELL = "0.55"
_C_THRESH = "C3"
_C_CROSS = "C2"


# --------------------------------------------------------------------------- helpers


def _pick(name: str, value: str | None, known: list[str]) -> str:
    if value is None:
        return known[0]
    if value not in known:
        raise QueryError(f"unknown {name} '{value}'; the fit knows: {', '.join(known)}")
    return value


def _thin(fit: FitResult, max_draws: int = MAX_PLOT_DRAWS) -> FitResult:
    """The fit with at most ``max_draws`` posterior draws (evenly spaced within each chain)."""
    post = fit.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    if total <= max_draws:
        return fit
    step = math.ceil(total / max_draws)
    keep = [v for v in post.data_vars if v != "mu_cell" and not v.endswith(("_z", "_c"))]
    thinned = post[keep].isel(draw=slice(None, None, step))
    tree = xr.DataTree(children={"posterior": xr.DataTree(thinned)})
    return dataclasses.replace(fit, tree=tree)


def _metric_label(metric: str, k: float, n: int) -> str:
    if metric == "exact_match":
        return f"exact match (k={k:g} tokens)"
    if metric == "token_accuracy":
        return "token accuracy (per-token)"
    if metric == "edit_distance":
        return f"expected wrong tokens (of k={k:g})"
    if metric == "pass_at_n":
        return f"pass@{n} (k={k:g} tokens)"
    return metric


def _pow10(x: float) -> str:
    return f"$10^{{{x:.1f}}}$"


def _jeffreys(correct: np.ndarray, n: np.ndarray, level: float = OBS_INTERVAL) -> tuple[np.ndarray, np.ndarray]:
    a = (1 - level) / 2
    lo = np.where(correct > 0, beta_dist.ppf(a, correct + 0.5, n - correct + 0.5), 0.0)
    hi = np.where(correct < n, beta_dist.ppf(1 - a, correct + 0.5, n - correct + 0.5), 1.0)
    return lo, hi


def _bands(values: np.ndarray) -> dict[str, np.ndarray]:
    """Quantiles over the sample axes (all but the last) of ``values`` (chain, draw, grid)."""
    flat = values.reshape(-1, values.shape[-1])
    q = np.quantile(flat, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    return dict(zip(("q05", "q25", "q50", "q75", "q95"), q))


def _draw_bands(ax, x: np.ndarray, b: dict[str, np.ndarray], color: str, label_median: str) -> None:
    ax.fill_between(x, b["q05"], b["q95"], color=color, alpha=0.15, lw=0, label="90% interval")
    ax.fill_between(x, b["q25"], b["q75"], color=color, alpha=0.3, lw=0, label="50% interval")
    ax.plot(x, b["q50"], color=color, lw=2, label=label_median)


# --------------------------------------------------------------------------- panels


def _cell_mask(fit: FitResult, task: str, family: str, setting: str) -> np.ndarray:
    c = fit.cells
    return (
        (c.cell_task == c.tasks.index(task))
        & (c.cell_family == c.families.index(family))
        & (c.cell_setting == c.settings.index(setting))
    )


def _compute_grid(fit: FitResult, mask: np.ndarray, extend_decades: float, crossing_hi: float = np.nan) -> np.ndarray:
    """log10 compute from the smallest observed to ``extend_decades`` past the largest, and further when the 90%
    interval of the crossing (``crossing_hi``, its 95th percentile) lies beyond that."""
    xs = fit.cells.cell_x[mask] if mask.any() else fit.cells.cell_x
    lo, hi = float(np.min(xs)) - 0.1, float(np.max(xs)) + max(float(extend_decades), 0.0)  # margin for the marker
    if np.isfinite(crossing_hi) and crossing_hi + 0.25 > hi:
        hi = min(crossing_hi + 0.25, MAX_LOG10_COMPUTE)
    if hi - lo < 0.5:
        lo, hi = lo - 0.25, hi + 0.25
    return np.linspace(lo, hi, GRID_POINTS)


def _crossing(fit, task, family, setting, metric, k, n, threshold):
    """Crossing draws (log10 FLOPs) and the forecast table row for one cell; ``None`` without a threshold."""
    if threshold is None:
        return None
    fc = forecast(fit, metric=metric, threshold=threshold, k=k, n=n, tasks=[task], families=[family],
                  settings=[setting], quantiles=(0.05, 0.5, 0.95))
    draws = fc.draws["log10_compute"].sel(task=task, family=family, setting=setting).values.ravel()
    return draws, fc.table.iloc[0]


def _metric_panel(ax, fit, thin, task, family, setting, metric, k, n, threshold, grid, mask, crossing):
    c = fit.cells
    task_k = float(c.task_k[c.tasks.index(task)])
    kk = task_k if k is None else float(k)
    higher_better = METRICS[metric]
    compute = 10.0**grid

    curve = metric_curve(thin, task, family, setting, metric, grid, k=k, n=n).values
    _draw_bands(ax, compute, _bands(curve), _C_FIT, "posterior median\n(the trend: a typical model)")

    # observed exact match where the curve and the data measure the same thing
    same_metric = metric == "exact_match" or (metric == "pass_at_n" and int(n) == 1)
    same_k = k is None or abs(float(k) - task_k) < 1e-9
    if same_metric and same_k:
        obs = mask & (c.em_n > 0)
        if obs.any():
            nn, cc = c.em_n[obs], c.em_correct[obs]
            p = cc / nn
            lo, hi = _jeffreys(cc, nn)
            ax.errorbar(
                10.0 ** c.cell_x[obs], p, yerr=[p - lo, hi - p], fmt="o", color=_C_OBS, ms=4, capsize=2, lw=1,
                zorder=5, label=f"observed\n({OBS_INTERVAL:.0%} Jeffreys interval)",
            )

    if threshold is not None:
        ax.axhline(threshold, color=_C_THRESH, ls="--", lw=1.2, label=f"threshold {threshold:g}")

    ax.set_xscale("log")
    ax.set_xlim(compute[0], compute[-1])
    top = kk if metric == "edit_distance" else 1.0
    ax.set_ylim(-0.02 * top, 1.02 * top)
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel(_metric_label(metric, kk, int(n)))
    ax.grid(True, which="major", alpha=0.3)

    handles, labels = ax.get_legend_handles_labels()
    if crossing is not None:
        draws, row = crossing
        finite = draws[np.isfinite(draws) & (draws <= MAX_LOG10_COMPUTE)]
        shown = finite[(finite >= grid[0]) & (finite <= grid[-1])]
        if shown.size:
            twin = ax.twinx()
            edges = np.linspace(grid[0], grid[-1], 61)
            counts, _ = np.histogram(shown, bins=edges)
            dens = counts / max(draws.size, 1)
            twin.stairs(dens, 10.0**edges, fill=True, color=_C_CROSS, alpha=0.45, lw=0)
            twin.set_ylim(0, dens.max() / 0.2)  # occupy the lower ~20% of the panel
            twin.set_yticks([])
            twin.set_xscale("log")
            twin.set_xlim(compute[0], compute[-1])
            twin.spines["right"].set_visible(False)
        handles.append(Patch(color=_C_CROSS, alpha=0.45))
        labels.append("posterior of the compute\nwhere the threshold is reached")
        ax.text(0.02 if higher_better else 0.98, 0.97, _crossing_text(row, draws), transform=ax.transAxes,
                va="top", ha="left" if higher_better else "right", fontsize="x-small",
                bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", alpha=0.9), zorder=10)
    return handles, labels


def _crossing_text(row, draws: np.ndarray) -> str:
    p_un = float(row["prob_unreached"])
    med, lo, hi = (row[f"log10_compute_{q}"] for q in ("q50", "q05", "q95"))
    already = float(np.mean(draws == -np.inf)) if draws.size else 0.0
    head = "threshold crossing:"
    if np.isfinite(med):
        lines = [f"{head} median {_pow10(med)} FLOPs"]
        lo_s = _pow10(lo) if np.isfinite(lo) else "—"
        hi_s = _pow10(hi) if np.isfinite(hi) else f"> $10^{{{MAX_LOG10_COMPUTE:.0f}}}$"
        lines.append(f"90% interval [{lo_s}, {hi_s}]")
    elif already >= 0.5:
        lines = [f"{head} already reached ({already:.0%} of draws)"]
    else:
        lines = [f"{head} median not reached below $10^{{{MAX_LOG10_COMPUTE:.0f}}}$"]
    if p_un > 0:
        lines.append(f"not reached by $10^{{{MAX_LOG10_COMPUTE:.0f}}}$: {p_un:.0%} of draws")
    return "\n".join(lines)


def _logce_panel(ax, fit, thin, task, family, setting, grid, mask):
    c = fit.cells
    compute = 10.0**grid
    tr = trend(thin, [task], [family], [setting]).isel(task=0, family=0, setting=0)
    lc = latent(tr, xr.DataArray(grid - c.c0, dims="x")).transpose("chain", "draw", "x").values
    _draw_bands(ax, compute, _bands(lc), _C_FIT, "trend median\n(typical item)")

    item = mask & (c.item_n > 0) & np.isfinite(c.item_mean)
    if item.any():
        ax.plot(10.0 ** c.cell_x[item], c.item_mean[item], "o", color=_C_OBS, ms=4, zorder=5,
                label="observed:\nmean log CE over items")
    agg = mask & ~item & np.isfinite(c.ce_obs) & (c.ce_obs > 0)
    if agg.any():
        t0 = trend(fit, [task], [family], [setting]).isel(task=0)
        mc = fit.posterior["mu_cell"].values[..., agg]  # each cell's item spread follows its fitted log CE
        sg = item_spread(mc, t0["sigma_item"].values[..., None], t0["spread_slope"].values[..., None],
                         t0["spread_ref"].values[..., None])
        sig = np.median(sg.reshape(-1, int(agg.sum())), axis=0)
        ax.plot(10.0 ** c.cell_x[agg], np.log(c.ce_obs[agg]) - sig**2 / 2, "s", color=_C_AGG, ms=4, zorder=5,
                label="observed: log(mean CE) − σ²/2\n(aggregate CE, σ = item spread)")
    rest = mask & ~item & ~agg
    post = fit.posterior
    if rest.any() and "mu_cell" in post:
        mc = post["mu_cell"].values[..., rest].reshape(-1, int(rest.sum()))
        q = np.quantile(mc, [0.05, 0.5, 0.95], axis=0)
        ax.errorbar(10.0 ** c.cell_x[rest], q[1], yerr=[q[1] - q[0], q[2] - q[1]], fmt="D", mfc="white",
                    color=_C_CELL, ms=4, capsize=2, lw=1, zorder=4, label="fitted cell, 90% interval\n(no CE data; from scores)")

    ax.set_xscale("log")
    ax.set_xlim(compute[0], compute[-1])
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("log per-token CE (nats)")
    ax.grid(True, which="major", alpha=0.3)
    return ax.get_legend_handles_labels()


def _validate_query(fit: FitResult, metric: str, n: int, k: float | None) -> None:
    if metric not in METRICS:
        raise QueryError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if int(n) < 1:
        raise QueryError(f"--n must be >= 1 sample, got {n}")
    if k is not None and not k >= 1:
        raise QueryError(f"--k must be >= 1 token, got {k:g}")


# --------------------------------------------------------------------------- public


def plot_forecast(
    fit: FitResult,
    task: str,
    *,
    family: str | None = None,
    setting: str | None = None,
    metric: str = "exact_match",
    k: float | None = None,
    n: int = 1,
    threshold: float | None = None,
    extend_decades: float = 3.0,
) -> Figure:
    """Plot one task's forecast (or every task's with ``task="all"``) for one family and setting.

    Top panel: the metric against compute (log axis) with observed exact match
    (when the metric is exact match at the task's own answer length, 90%
    Jeffreys intervals), the posterior median and 50%/90% bands of a new
    model's expected metric on the trend, the threshold and, along the bottom,
    the posterior density of the compute at which it is reached. Bottom panel:
    the log per-token cross-entropy of the typical item the metric is derived
    from, with the observed per-cell values.

    Parameters
    ----------
    fit : FitResult
    task : str
        A task of the fit, or ``"all"`` for a grid with one column per task.
    family, setting : str, optional
        Default: the first family and the reference setting of the fit.
    metric : {"exact_match", "token_accuracy", "edit_distance", "pass_at_n"}
    k : float, optional
        Answer length in tokens (default: each task's own).
    n : int
        Samples for ``pass_at_n``.
    threshold : float, optional
        Level to reach; without it no threshold line or crossing density is drawn.
    extend_decades : float
        How far past the largest observed compute the curves run (further when needed to show the 90% interval
        of the crossing compute, up to 1e35 FLOPs).

    Returns
    -------
    matplotlib.figure.Figure
    """
    cells = fit.cells
    if task == "all":
        tasks = list(cells.tasks)
    else:
        tasks = [_pick("task", task, list(cells.tasks))]
    family = _pick("family", family, list(cells.families))
    setting = _pick("setting", setting, list(cells.settings))
    _validate_query(fit, metric, n, k)

    thin = _thin(fit)
    no_rise = accuracy_shows_no_rise(cells)
    ncol = min(len(tasks), GRID_COLUMNS)
    nblock = math.ceil(len(tasks) / ncol)
    width = 8.6 if len(tasks) == 1 else 4.0 * ncol + 2.4
    fig = Figure(figsize=(width, 7.0 * nblock), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2 * nblock, ncol, height_ratios=[1.25, 1.0] * nblock)
    top_legend: dict = {}
    bot_legend: dict = {}
    legend_axes = []  # right-most panels of the first block carry the legends (entries from every panel)
    for i, t in enumerate(tasks):
        r, col = divmod(i, ncol)
        ax_top = fig.add_subplot(gs[2 * r, col])
        ax_bot = fig.add_subplot(gs[2 * r + 1, col], sharex=ax_top)
        mask = _cell_mask(fit, t, family, setting)
        crossing = _crossing(fit, t, family, setting, metric, k, n, threshold)
        q95 = float(crossing[1]["log10_compute_q95"]) if crossing is not None else np.nan
        grid = _compute_grid(fit, mask, extend_decades, q95)
        for store, (hs, ls) in (
            (top_legend, _metric_panel(ax_top, fit, thin, t, family, setting, metric, k, n, threshold, grid, mask,
                                       crossing)),
            (bot_legend, _logce_panel(ax_bot, fit, thin, t, family, setting, grid, mask)),
        ):
            for h, lab in zip(hs, ls):
                store.setdefault(lab, h)
        if col == ncol - 1 or i == len(tasks) - 1:
            legend_axes.append((ax_top, ax_bot))
        if len(tasks) == 1:
            ax_top.set_title(f"{t} — {family}, {setting}")
        else:
            ax_top.set_title(t)
        if no_rise[cells.tasks.index(t)]:
            ax_top.text(0.02, 0.97, "no rise in the training data:\nthis forecast rests on the prior",
                        transform=ax_top.transAxes, va="top", fontsize="small", color="#d62728")
    ax_top, ax_bot = legend_axes[0]
    for ax, entries in ((ax_top, top_legend), (ax_bot, bot_legend)):
        ax.legend(list(entries.values()), list(entries.keys()), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  fontsize="small", frameon=False)
    if len(tasks) > 1:
        fig.suptitle(f"all tasks — {family}, {setting}")
    return fig


def plot_crossing(result: Forecast, *, max_log10: float = MAX_LOG10_COMPUTE) -> Figure:
    """Posterior densities of the crossing compute, one row per (task, family, setting) of a forecast."""
    lc = result.draws["log10_compute"]
    rows = result.table
    fig = Figure(figsize=(6.4, 0.9 + 0.55 * max(len(rows), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite_all = lc.values[np.isfinite(lc.values) & (lc.values <= max_log10)]
    if finite_all.size:
        lo, hi = np.quantile(finite_all, [0.01, 0.99])
    else:
        lo, hi = 18.0, 30.0
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 61)
    labels = []
    for i, (_, row) in enumerate(rows.iterrows()):
        d = lc.sel(task=row.task, family=row.family, setting=row.setting).values.ravel()
        f = d[np.isfinite(d) & (d <= max_log10)]
        h, edges = np.histogram(f, bins=bins)  # draws outside the range are left out
        if h.max() > 0:
            ax.stairs(i + 0.9 - 0.85 * h / h.max(), 10.0**edges, baseline=i + 0.9, fill=True, alpha=0.6,
                      color=f"C{i % 10}")
        med = row.get("log10_compute_q50", np.nan)
        if np.isfinite(med):
            ax.plot([10.0**med] * 2, [i + 0.9, i + 0.05], color="black", lw=1)
        labels.append(f"{row.task}\n{row.family}, {row.setting}  (unreached {row.prob_unreached:.0%})")
    ax.set_xscale("log")
    ax.set_xlim(10.0**lo, 10.0**hi)
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize="x-small")
    ax.set_ylim(max(len(labels), 1), 0)  # first row on top
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("training compute at which the threshold is reached (FLOPs)")
    attrs = result.draws.attrs
    ax.set_title(f"{attrs.get('metric', '')} ≥ {attrs.get('threshold', '')}" if attrs.get("metric") != "edit_distance"
                 else f"edit distance ≤ {attrs.get('threshold', '')}")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def _forest_row(ax, y: float, v: np.ndarray, color: str, lim: tuple[float, float] | None = None) -> None:
    """Median dot, 50% (thick) and 90% (thin) interval of the draws ``v`` at height ``y``; clipped to ``lim``
    with an arrow marker where an interval runs beyond the axis (or to infinity)."""
    with np.errstate(invalid="ignore"):
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95], method="inverted_cdf")
    clip = (lambda z: z) if lim is None else (lambda z: float(np.clip(z, lim[0], lim[1])))
    ax.plot([clip(q[0]), clip(q[4])], [y, y], color=color, lw=1.2, solid_capstyle="butt")
    ax.plot([clip(q[1]), clip(q[3])], [y, y], color=color, lw=4.0, solid_capstyle="butt")
    ax.plot([clip(q[2])], [y], "o", color=color, ms=5, mec="white", mew=0.8, zorder=3)
    if lim is not None:
        if q[4] > lim[1]:
            ax.plot([lim[1]], [y], ">", color=color, ms=5, clip_on=False)
        if q[0] < lim[0]:
            ax.plot([lim[0]], [y], "<", color=color, ms=5, clip_on=False)


def plot_setting_effects(effects: SettingEffects, *, decades: bool = True, sort: bool = True, max_decades: float = 6.0) -> Figure:
    """Forest plot of setting effects (see :func:`forecaster.effects.setting_effects`).

    One panel per non-reference setting: each task's change in the metric (setting minus reference, at the
    row's compute; percentage points for metrics in [0, 1]) with its posterior median, 50% (thick) and 90%
    (thin) interval and the probability that the setting is better, and a pooled row (the average over
    tasks) at the bottom. With ``decades``, a second panel per setting shows the compute-equivalent of the
    effect: the decades of extra training compute the reference setting would need to match it (the axis fits
    the 90% intervals, at most +-``max_decades``; arrows mark intervals that run beyond, including to "never").

    Parameters
    ----------
    effects : SettingEffects
    decades : bool
        Add the compute-equivalent panels.
    sort : bool
        Order tasks by the median effect in the first setting (largest on top); else the fit's order.
    max_decades : float
        Largest half-width of the compute-equivalent axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .effects import POOLED

    draws = effects.draws
    settings = [str(s) for s in draws["setting"].values]
    tasks = [str(t) for t in draws["task"].values if t != POOLED]
    metric = str(draws.attrs.get("metric", "exact_match"))
    as_pct = metric != "edit_distance"
    scale = 100.0 if as_pct else 1.0
    eff = draws["metric_effect"]
    flat = lambda da: da.values.reshape(-1)  # noqa: E731
    if sort:
        med = {t: float(np.median(eff.sel(task=t, setting=settings[0]).values)) for t in tasks}
        tasks = sorted(tasks, key=lambda t: -med[t] if METRICS.get(metric, True) else med[t])
    rows = [*tasks, POOLED]
    ys = {t: i for i, t in enumerate(rows)}
    ys[POOLED] = len(tasks) + 0.4  # a little gap above the pooled row
    ncol = len(settings) * (2 if decades else 1)
    if decades:  # one axis range for every setting, fitted to the 90% intervals, at most +-max_decades
        dec = draws["decades"].values
        with np.errstate(invalid="ignore"):
            ends = np.quantile(dec.reshape(-1, dec.shape[-2] * dec.shape[-1]), [0.05, 0.95], axis=0,
                               method="inverted_cdf")
        ends = ends[np.isfinite(ends)]
        lo_d = float(max(-max_decades, min(-0.25, 1.1 * ends.min()))) if ends.size else -max_decades
        hi_d = float(min(max_decades, max(0.25, 1.1 * ends.max()))) if ends.size else max_decades
        pad = 0.03 * (hi_d - lo_d)
    width_ratios = [1.6, 1.0] * len(settings) if decades else [1.0] * len(settings)
    fig = Figure(figsize=(2.4 + 3.3 * ncol * (0.8 if decades else 1.0), 1.3 + 0.27 * len(rows)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncol, sharey=True, gridspec_kw={"width_ratios": width_ratios}, squeeze=False)[0]
    kind = {"exact_match": "exact match", "token_accuracy": "token accuracy", "pass_at_n": "pass@n",
            "edit_distance": "expected wrong tokens"}.get(metric, metric)
    for si, s in enumerate(settings):
        ax = axes[si * (2 if decades else 1)]
        for t in rows:
            color = "black" if t == POOLED else _C_FIT
            _forest_row(ax, ys[t], scale * flat(eff.sel(task=t, setting=s)), color)
            p = float(effects.table.loc[(effects.table.task == t) & (effects.table.setting == s), "prob_better"].iloc[0])
            ax.annotate(f"P={p:.2f}", (1.0, ys[t]), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize="x-small", color="0.35",
                        annotation_clip=False)
        ax.axvline(0.0, color="0.4", lw=0.8, ls="--")
        ax.axhline(len(tasks) - 0.3, color="0.7", lw=0.6)
        ax.set_title(f"{s} vs {effects.reference}", fontsize="medium")
        ax.set_xlabel(f"Δ {kind}" + (" (% points)" if as_pct else ""))
        ax.grid(True, axis="x", alpha=0.3)
        if decades:
            axd = axes[si * 2 + 1]
            for t in rows:
                color = "black" if t == POOLED else _C_CROSS
                _forest_row(axd, ys[t], flat(draws["decades"].sel(task=t, setting=s)), color, lim=(lo_d, hi_d))
            axd.axvline(0.0, color="0.4", lw=0.8, ls="--")
            axd.axhline(len(tasks) - 0.3, color="0.7", lw=0.6)
            axd.set_xlim(lo_d - pad, hi_d + pad)
            axd.set_xlabel("compute-equiv. (decades)")
            axd.set_title(f"extra compute {effects.reference} needs", fontsize="small")
            axd.grid(True, axis="x", alpha=0.3)
    effect_axes = axes[:: 2 if decades else 1]
    lo = min(a.get_xlim()[0] for a in effect_axes)
    hi = max(a.get_xlim()[1] for a in effect_axes)
    for a in effect_axes:  # one scale for every setting's effect panel
        a.set_xlim(lo, hi)
    ax0 = axes[0]
    ax0.set_yticks([ys[t] for t in rows], [*tasks, "pooled (mean over tasks;\ndecades: population)"],
                   fontsize="small")
    ax0.set_ylim(ys[POOLED] + 0.8, -0.8)
    ax0.tick_params(axis="y", length=0)
    fam = draws.attrs.get("family", "(average)")
    at = draws.attrs.get("at")
    where = f"at {at:.3g} FLOPs" if at else "at each task's median observed compute"
    fig.suptitle(f"setting effects on {kind} — median, 50% and 90% intervals; {where}; family {fam}",
                 fontsize="small")
    return fig
