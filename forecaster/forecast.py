"""Forecasts from a fit: per-draw crossing compute and metric values, summarized in a tidy table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .errors import QueryError
from .fit import FitResult
from .model import accuracy_shows_no_rise, family_task_pairs, family_task_pivots
from .metrics import (
    METRICS, check_threshold, crossing_log10_compute, crossing_log10_compute_two, item_spread,
    metric_value, warp, warp_inverse, warp_slope,
    threshold_log_ce, threshold_log_ce_varying,
)

__all__ = ["Forecast", "forecast", "trend", "family_task_offsets", "latent", "warped", "warped_slope", "spread_at", "metric_curve", "quantile_name", "DEFAULT_QUANTILES",
           "MAX_LOG10_COMPUTE"]

DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Crossings beyond this (log10 FLOPs) count as never reached.
MAX_LOG10_COMPUTE = 35.0


def quantile_name(q: float) -> str:
    pct = q * 100
    return f"q{int(round(pct)):02d}" if abs(pct - round(pct)) < 1e-9 else f"q{pct:g}"


@dataclass
class Forecast:
    """Result of :func:`forecast`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (task, family, setting): quantiles of log10 crossing
        compute (NaN = not reached below 1e35 FLOPs), ``prob_reached_by_budget``,
        ``prob_unreached`` and ``rests_on_prior`` (the task's data show no rise with
        compute, :func:`forecaster.model.accuracy_shows_no_rise`: its crossing follows
        the pooled slope prior, not its own data).
    draws : xarray.Dataset
        Per draw: ``log10_compute`` (crossing, +inf when never) and, with
        ``at``, ``metric_at`` (a new model's expected metric at each compute).
    at_table : pandas.DataFrame or None
        Posterior summary of the metric at the requested compute values.
    """

    table: pd.DataFrame
    draws: xr.Dataset
    at_table: pd.DataFrame | None = None

    def records(self) -> list[dict]:
        """JSON-ready records (NaN -> None); with ``at`` each record gets a ``metric_at`` list."""
        recs = []
        for _, row in self.table.iterrows():
            rec = {k: (None if isinstance(v, float) and not np.isfinite(v) else _py(v)) for k, v in row.items()}
            if self.at_table is not None:
                sub = self.at_table[
                    (self.at_table.task == row.task) & (self.at_table.family == row.family)
                    & (self.at_table.setting == row.setting)
                ]
                rec["metric_at"] = [
                    {k: _py(v) for k, v in r.items() if k not in ("task", "family", "setting", "metric", "k")}
                    for _, r in sub.iterrows()
                ]
            recs.append(rec)
        return recs


def _py(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _select(name: str, requested: Sequence[str] | str | None, known: list[str]) -> list[str]:
    if requested is None or (isinstance(requested, str) and requested == "all"):
        return list(known)
    if isinstance(requested, str):
        requested = [requested]
    for r in requested:
        if r not in known:
            raise QueryError(f"unknown {name} '{r}'; the fit knows: {', '.join(known)}")
    return list(requested)


def trend(fit: FitResult, tasks=None, families=None, settings=None, tokens_per_param: float | None = None
          ) -> xr.Dataset:
    """Per-draw trend of log CE: ``intercept`` (task, family, setting) and ``slope`` (task, setting) plus
    ``slope_family`` (task, family: the pair's own slope offset, zero without it) at ``x - c0``,
    with ``sigma_item`` (task), ``sigma_cell`` (scalar: spread of a new model's cell around the trend, its
    model-level and cell-level deviations together; 0 when the model has neither) and ``guess_rate`` (task:
    the exact-match floor; 0 for fits without one, e.g. saved before it existed).

    With a params/tokens effect (``alloc``) the trend is that of models trained
    with ``tokens_per_param`` tokens per parameter (default: the fitted data's
    median ratio, attribute ``u_path = log10(params / tokens)``); ``alloc`` is the
    change per unit of ``log10(params / tokens)`` off that path. A fit with
    ``trend = "additive"`` has a second line (``intercept2``, ``slope2``, ``alloc2``:
    the tokens term; the first line is the params term) and the trend is the
    ``logaddexp`` of the two: evaluate it with :func:`latent`.

    Parameters
    ----------
    fit : FitResult
        A fit (:func:`forecaster.fit` or :func:`forecaster.load_fit`).
    tasks, families, settings : list of str, optional
        Which to include (default: all of the fit's).
    tokens_per_param : float, optional
        Training tokens per parameter of the models the trend is for (fits with params and tokens only).

    Returns
    -------
    xarray.Dataset
        Per draw (``chain``, ``draw``): the variables above.
    """
    post = fit.posterior
    cells = fit.cells
    tasks = _select("task", tasks, cells.tasks)
    families = _select("family", families, cells.families)
    settings = _select("setting", settings, cells.settings)
    a = post["a"].sel(task=tasks)
    fam = post["a_family"].sel(family=families) if "a_family" in post else xr.zeros_like(
        xr.DataArray(np.zeros(len(families)), coords={"family": families}, dims="family"))
    if "da" in post:
        da = post["da"].sel(task=tasks, setting=settings)
        db = post["db"].sel(task=tasks, setting=settings)
    else:
        zero = xr.DataArray(np.zeros((len(tasks), len(settings))), coords={"task": tasks, "setting": settings},
                            dims=("task", "setting"))
        da = db = zero
    intercept = a + fam + da
    u0 = float(fit.cells.u0)
    if tokens_per_param is not None and not (tokens_per_param > 0 and np.isfinite(tokens_per_param)):
        raise QueryError(f"--tokens-per-param must be a finite number > 0, got {tokens_per_param:g}")
    if tokens_per_param is not None and not np.isfinite(u0):
        raise QueryError("--tokens-per-param needs a fit on data with params and tokens; this one has compute only")
    u_asked = u0 if tokens_per_param is None else -float(np.log10(tokens_per_param))
    second = {}
    if "b_params" in post:  # trend = "additive" (forecaster.model.additive_trend)
        # two lines in x - c0 along the path u = u_path (decades of params and of tokens both move by half a
        # decade per decade of compute); "alloc": each line's change per unit of u off that path
        u_path = u_asked
        du = u_path - u0
        share = post["trend_share"].sel(task=tasks)
        bp = post["b_params"].sel(task=tasks) + db
        bt = post["b_tokens"].sel(task=tasks) + db
        level = intercept
        intercept = level - np.logaddexp(0.0, -share) + bp * (du / 2.0)
        slope, alloc = bp / 2.0, bp / 2.0
        second = {
            "intercept2": (level - np.logaddexp(0.0, share) - bt * (du / 2.0)).transpose(
                "chain", "draw", "task", "family", "setting"),
            "slope2": (bt / 2.0).transpose("chain", "draw", "task", "setting"),
            "alloc2": (-bt / 2.0).transpose("chain", "draw", "task", "setting"),
        }
    elif "alloc" in post:
        alloc = post["alloc"].sel(task=tasks)
        u_path = u_asked
        intercept = intercept + alloc * (u_path - u0)
        slope = post["b"].sel(task=tasks) + db
    else:
        alloc = xr.zeros_like(a)
        u_path = u0
        slope = post["b"].sel(task=tasks) + db
    ft_a, ft_b = family_task_offsets(fit, tasks, families)  # intercept at c0 (the slope pivots elsewhere)
    intercept = (intercept + ft_a).transpose("chain", "draw", "task", "family", "setting")
    slope = slope.transpose("chain", "draw", "task", "setting")
    sigma_item = post["sigma_item"].sel(task=tasks)
    sigma_cell = post["sigma_cell"] if "sigma_cell" in post else xr.zeros_like(post["a"].isel(task=0, drop=True))
    if "sigma_model" in post:  # a new model deviates as a whole and in each cell
        sigma_cell = np.sqrt(sigma_cell**2 + post["sigma_model"] ** 2)
    spread_slope = post["spread_slope"].sel(task=tasks) if "spread_slope" in post else xr.zeros_like(sigma_item)
    ref = xr.DataArray([float(cells.spread_ref[cells.tasks.index(t)]) for t in tasks], coords={"task": tasks},
                       dims="task")
    guess = post["guess_rate"].sel(task=tasks) if "guess_rate" in post else xr.zeros_like(sigma_item)
    if "bend_c" in post:  # each task's warp of log compute (bend in forecaster.model)
        second["bend_c"] = post["bend_c"].sel(task=tasks).transpose("chain", "draw", "task", "bend_knot")
    return xr.Dataset({"intercept": intercept, "slope": slope, "slope_family": ft_b.transpose("chain", "draw", "task", "family"),
                       "sigma_item": sigma_item, "sigma_cell": sigma_cell,
                       "spread_slope": spread_slope, "spread_ref": xr.zeros_like(sigma_item) + ref, "alloc": alloc,
                       "guess_rate": guess, **second},
                      attrs={"c0": cells.c0, "u0": u0, "u_path": u_path,
                             "bend_spacing": float(fit.structure.bend_spacing) if "bend_c" in post else np.nan})


def family_task_offsets(fit: FitResult, tasks: list[str], families: list[str]) -> tuple[xr.DataArray, xr.DataArray]:
    """Per draw, each (task, family) pair's offsets of the intercept at ``c0`` and of the slope
    (``family_task_effects``; zeros without them). The model's slope offset pivots on the pair's mean compute,
    so the intercept at ``c0`` moves by ``-b_ft * (pivot - c0)``. A pair without data gets draws from its prior
    (seeded: the same fit gives the same trend)."""
    post = fit.posterior
    shape = (post.sizes["chain"], post.sizes["draw"], len(tasks), len(families))
    mat_a, mat_b = np.zeros(shape), np.zeros(shape)
    if "family_task_b" in post:
        _, pair_task, pair_fam = family_task_pairs(fit.cells)
        seen = {(fit.cells.tasks[a], fit.cells.families[b]): i for i, (a, b) in enumerate(zip(pair_task, pair_fam))}
        vb = post["family_task_b"].transpose("chain", "draw", "pair").values
        va = post["family_task_a"].transpose("chain", "draw", "pair").values if "family_task_a" in post else None
        dpiv = family_task_pivots(fit.cells) - fit.cells.c0
        if "bend_c" in post:  # the pair's slope pivots on its mean compute, warped by its task's bend
            bc = post["bend_c"].transpose("chain", "draw", "task", "bend_knot").values[:, :, pair_task, :]
            dpiv = warp(dpiv, bc, fit.structure.bend_spacing)
        va_c0 = (0.0 if va is None else va) - vb * dpiv
        sb = post["sigma_family_task_b"].values
        sa = post["sigma_family_task_a"].values if va is not None else None
        rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(1)
        for ti, t in enumerate(tasks):
            for fi, f in enumerate(families):
                i = seen.get((t, f))
                if i is not None:
                    mat_a[:, :, ti, fi], mat_b[:, :, ti, fi] = va_c0[..., i], vb[..., i]
                else:  # never seen: offsets from their prior, the slope pivoting on c0
                    mat_b[:, :, ti, fi] = sb * rng_b.standard_normal(shape[:2])
                    if sa is not None:
                        mat_a[:, :, ti, fi] = sa * rng_a.standard_normal(shape[:2])
    coords = {"chain": post["chain"], "draw": post["draw"], "task": tasks, "family": families}
    dims = ("chain", "draw", "task", "family")
    return xr.DataArray(mat_a, dims=dims, coords=coords), xr.DataArray(mat_b, dims=dims, coords=coords)


def latent(tr: xr.Dataset, dx, du=0.0) -> xr.DataArray:
    """Per-draw log CE of the typical item on the trend ``tr`` at ``dx = log10 C - c0`` and ``du = log10(params
    / tokens) - u_path`` (off the trend's tokens-per-param path): ``intercept + (slope + slope_family) * dx +
    alloc * du``, ``dx`` warped by the task's bend (:func:`warped`), and with an additive trend the log of the sum of that term and the second (``intercept2``, ...)."""
    slope = tr["slope"] + tr["slope_family"] if "slope_family" in tr else tr["slope"]
    lc = tr["intercept"] + slope * warped(tr, dx) + tr["alloc"] * du
    if "slope2" in tr:
        lc = np.logaddexp(lc, tr["intercept2"] + tr["slope2"] * dx + tr["alloc2"] * du)
    return lc


def warped(tr: xr.Dataset, dx):
    """Per draw, log compute from ``c0`` as each task's line sees it: ``dx`` warped by the task's bend (``dx``
    itself for a trend without one); :func:`forecaster.metrics.warp` over xarray."""
    if "bend_c" not in tr:
        return dx
    dx = dx if isinstance(dx, xr.DataArray) else xr.DataArray(dx)
    return xr.apply_ufunc(warp, dx, tr["bend_c"], tr.attrs["bend_spacing"], input_core_dims=[[], ["bend_knot"], []])


def warped_slope(tr: xr.Dataset, dx):
    """Per draw, the warp's slope at ``dx`` (1 for a trend without a bend): the line's local slope per decade
    is its slope times this."""
    if "bend_c" not in tr:
        return 1.0
    dx = dx if isinstance(dx, xr.DataArray) else xr.DataArray(dx)
    return xr.apply_ufunc(warp_slope, dx, tr["bend_c"], tr.attrs["bend_spacing"],
                          input_core_dims=[[], ["bend_knot"], []])


def spread_at(tr: xr.Dataset, log_ce: xr.DataArray) -> xr.DataArray:
    """Per-draw item spread of cells whose typical item has ``log_ce`` (see :func:`forecaster.metrics.item_spread`)."""
    return item_spread(log_ce, tr["sigma_item"], tr["spread_slope"], tr["spread_ref"])


def _threshold(tr: xr.Dataset, task: str, metric: str, threshold: float, k: float, n: int) -> np.ndarray:
    """Per draw (chain, draw): log CE of the typical item at which the metric reaches ``threshold``."""
    sig = tr["sigma_item"].sel(task=task).values
    gam = tr["spread_slope"].sel(task=task).values
    g = tr["guess_rate"].sel(task=task).values
    if not np.any(gam):
        return threshold_log_ce(sig, metric, threshold, k, n, floor=g)  # constant spread, no floor: one lookup table
    return threshold_log_ce_varying(sig, gam, tr["spread_ref"].sel(task=task).values, metric, threshold, k, n,
                                    floor=g)


def _task_k(fit: FitResult, tasks: list[str], k: float | None) -> xr.DataArray:
    if k is None:
        vals = [float(fit.cells.task_k[fit.cells.tasks.index(t)]) for t in tasks]
    else:
        if not k >= 1:
            raise QueryError(f"--k must be >= 1 token, got {k:g}")
        vals = [float(k)] * len(tasks)
    return xr.DataArray(vals, coords={"task": tasks}, dims="task")


def forecast(
    fit: FitResult,
    *,
    metric: str = "exact_match",
    threshold: float = 0.5,
    k: float | None = None,
    n: int = 1,
    tasks: Sequence[str] | str | None = None,
    families: Sequence[str] | str | None = None,
    settings: Sequence[str] | str | None = None,
    budget: float | None = None,
    at: Sequence[float] | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    seed: int = 0,
    tokens_per_param: float | None = None,
) -> Forecast:
    """Posterior of the compute at which ``metric`` reaches ``threshold``.

    Parameters
    ----------
    fit : FitResult
    metric : {"exact_match", "token_accuracy", "edit_distance", "pass_at_n"}
    threshold : float
        Level to reach (for ``edit_distance``: at most this many wrong tokens).
    k : float, optional
        Answer length in tokens (default: each task's mean answer length).
    n : int
        Samples for ``pass_at_n``.
    tasks, families, settings : str or list, optional
        Restrict the forecast (default: all).
    budget : float, optional
        Compute budget (FLOPs) for ``prob_reached_by_budget``.
    at : list of float, optional
        Compute values (FLOPs) at which to report the metric's posterior.
    quantiles : list of float
        Quantiles of log10 crossing compute to report.
    seed : int
        Seed for a new model's deviation from the trend in ``at``.
    tokens_per_param : float, optional
        Forecast models trained with this many tokens per parameter (only with
        a params/tokens effect; default: the fitted data's median ratio).

    Returns
    -------
    Forecast
    """
    if metric not in METRICS:
        raise QueryError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if int(n) < 1:
        raise QueryError(f"--n must be >= 1 sample, got {n}")
    for q in quantiles:
        if not 0 < q < 1:
            raise QueryError(f"quantile {q:g} is outside (0, 1); give e.g. 0.05,0.5,0.95")
    if budget is not None and not (budget > 0 and np.isfinite(budget)):
        raise QueryError(f"--budget must be a finite number of FLOPs > 0, got {budget:g}")
    tr = trend(fit, tasks, families, settings, tokens_per_param)
    tasks_l = list(tr["task"].values)
    kk = _task_k(fit, tasks_l, k)
    c0 = fit.cells.c0

    cross = []
    for t in tasks_l:
        kt = float(kk.sel(task=t))
        check_threshold(metric, threshold, kt)
        mu_star = _threshold(tr, t, metric, threshold, kt, int(n))  # (chain, draw)
        if "slope2" in tr:
            x = crossing_log10_compute_two(
                tr["intercept"].sel(task=t).values, tr["slope"].sel(task=t).values[..., None, :],
                tr["intercept2"].sel(task=t).values, tr["slope2"].sel(task=t).values[..., None, :],
                mu_star[..., None, None], c0, MAX_LOG10_COMPUTE,
            )
        else:
            x = crossing_log10_compute(
                tr["intercept"].sel(task=t).values,
                tr["slope"].sel(task=t).values[..., None, :] + tr["slope_family"].sel(task=t).values[..., :, None],
                mu_star[..., None, None], c0,
            )
            if "bend_c" in tr:  # the line crosses at warped log compute x - c0: unwarp it (the warp increases)
                x = c0 + warp_inverse(x - c0, tr["bend_c"].sel(task=t).values[:, :, None, None, :],
                                      tr.attrs["bend_spacing"])
        cross.append(x)
    log10_c = xr.DataArray(
        np.stack(cross, axis=2), dims=("chain", "draw", "task", "family", "setting"),
        coords={"chain": tr["chain"], "draw": tr["draw"], "task": tasks_l, "family": tr["family"].values,
                "setting": tr["setting"].values},
        name="log10_compute",
    )
    flat = log10_c.stack(sample=("chain", "draw")).transpose("task", "family", "setting", "sample").values
    unreached = ~(flat <= MAX_LOG10_COMPUTE)
    capped = np.where(unreached, np.inf, flat)
    with np.errstate(invalid="ignore"):
        qs = np.quantile(capped, list(quantiles), axis=-1, method="linear")  # inf where beyond range
    rows = []
    no_rise = dict(zip(fit.cells.tasks, accuracy_shows_no_rise(fit.cells)))
    for ti, t in enumerate(tasks_l):
        for fi, f in enumerate(tr["family"].values):
            for si, s in enumerate(tr["setting"].values):
                row = {"task": t, "family": str(f), "setting": str(s), "metric": metric,
                       "k": float(kk.sel(task=t)), "threshold": float(threshold)}
                for qi, q in enumerate(quantiles):
                    v = qs[qi, ti, fi, si]
                    row[f"log10_compute_{quantile_name(q)}"] = float(v) if np.isfinite(v) else np.nan
                cell = capped[ti, fi, si]
                row["prob_reached_by_budget"] = (
                    float(np.mean(cell <= np.log10(budget))) if budget is not None else np.nan
                )
                row["prob_unreached"] = float(np.mean(unreached[ti, fi, si]))
                row["rests_on_prior"] = bool(no_rise[t])  # the task's data show no rise: the slope is the prior's
                rows.append(row)
    table = pd.DataFrame(rows)
    draws = xr.Dataset({"log10_compute": log10_c},
                       attrs={"metric": metric, "threshold": threshold, "c0": c0, "n": int(n),
                              "tokens_per_param": float(10.0 ** -tr.attrs["u_path"]) if np.isfinite(tr.attrs["u_path"])
                              else np.nan})

    at_table = None
    if at:
        at_vals = np.asarray(list(at), float)
        if not np.all((at_vals > 0) & np.isfinite(at_vals)):
            raise QueryError("--at values must be finite numbers of FLOPs > 0, e.g. --at 1e23,1e24")
        rng = np.random.default_rng(seed)
        xs = xr.DataArray(np.log10(at_vals) - c0, coords={"compute": at_vals}, dims="compute")
        dev = xr.DataArray(rng.standard_normal(tr["sigma_cell"].shape), dims=tr["sigma_cell"].dims) * tr["sigma_cell"]
        lc = latent(tr, xs) + dev
        sg = spread_at(tr, lc)
        vals = []
        order = ("chain", "draw", "family", "setting", "compute")
        for t in tasks_l:
            v = metric_value(
                lc.sel(task=t).transpose(*order).values, sg.sel(task=t).transpose(*order).values,
                metric, float(kk.sel(task=t)), int(n),
                floor=tr["guess_rate"].sel(task=t).values[:, :, None, None, None],
            )
            vals.append(v)
        metric_at = xr.DataArray(
            np.stack(vals, axis=2), dims=("chain", "draw", "task", "family", "setting", "compute"),
            coords={**{d: log10_c[d] for d in log10_c.dims}, "compute": at_vals}, name="metric_at",
        )
        draws["metric_at"] = metric_at
        s = metric_at.stack(sample=("chain", "draw"))
        summ = xr.Dataset({"mean": s.mean("sample")})
        for q in quantiles:
            summ[quantile_name(q)] = s.quantile(q, dim="sample").drop_vars("quantile")
        at_table = summ.to_dataframe().reset_index()
        at_table.insert(3, "metric", metric)
        at_table.insert(4, "k", at_table["task"].map({t: float(kk.sel(task=t)) for t in tasks_l}))
    return Forecast(table=table, draws=draws, at_table=at_table)


def metric_curve(fit: FitResult, task: str, family: str, setting: str, metric: str, log10_grid: np.ndarray,
                 k: float | None = None, n: int = 1, tokens_per_param: float | None = None) -> xr.DataArray:
    """Per-draw expected metric on the trend (no new-model deviation) over a grid of log10 compute.

    Parameters
    ----------
    fit : FitResult
        A fit.
    task, family, setting : str
        The combination to evaluate.
    metric : str
        ``exact_match``, ``token_accuracy``, ``edit_distance`` or ``pass_at_n``.
    log10_grid : array_like
        log10 training compute (FLOPs) to evaluate at.
    k : float, optional
        Answer length in tokens (default: the task's, from the data).
    n : int
        Samples for ``pass_at_n``.
    tokens_per_param : float, optional
        As in :func:`trend`.

    Returns
    -------
    xarray.DataArray
        The metric, dims (``chain``, ``draw``, ``log10_compute``).
    """
    tr = trend(fit, [task], [family], [setting], tokens_per_param)
    kt = float(_task_k(fit, [task], k).values[0])
    grid = xr.DataArray(np.asarray(log10_grid, float) - fit.cells.c0, dims="log10_compute")
    lc = latent(tr.isel(task=0, family=0, setting=0), grid).transpose("chain", "draw", "log10_compute").values
    t0 = tr.isel(task=0)
    sg = item_spread(lc, t0["sigma_item"].values[..., None], t0["spread_slope"].values[..., None],
                     t0["spread_ref"].values[..., None])
    v = metric_value(lc, sg, metric, kt, int(n), floor=t0["guess_rate"].values[..., None])
    return xr.DataArray(v, dims=("chain", "draw", "log10_compute"),
                        coords={"log10_compute": np.asarray(log10_grid)}, name=metric)
