"""Setting effects: how much does a setting (few-shot prompting, instruction tuning, ...) move a task?

The model shifts each task's log-CE trend by ``da[task, setting]`` (intercept at ``c0``) and
``db[task, setting]`` (slope), partially pooled around ``setting_a`` / ``setting_b`` with spread
``sigma_setting_a`` / ``sigma_setting_b`` across tasks. :func:`setting_effects` turns those draws into
quantities a reader can act on, per task and pooled, for every setting against a reference setting:

* ``da``, ``db``: shift of the intercept (log CE at ``10**c0`` FLOPs) and of the slope (per decade);
* ``dlogce``: shift of the typical item's log CE at the chosen compute ``x``: ``da + db * (x - c0)``;
  ``ce_factor = exp(dlogce)`` is its multiplicative effect on per-token cross-entropy;
* ``metric_ref`` / ``metric_setting`` / ``metric_effect``: the expected metric (exact match over the task's
  own answer length by default) of a model on the trend at ``x`` under the reference, under the setting, and
  their difference; ``prob_better`` is the posterior probability that the setting improves the metric;
* ``decades``: the compute-equivalent of the effect, ``dlogce / slope_ref``: how many decades of extra
  training compute (beyond ``x``) the reference setting needs to reach the setting's log CE (and hence
  metric) at ``x``. Positive: the setting is worth that much scale; negative: it costs that much. Where a
  draw's reference slope is not falling, scaling never closes the gap: ``+inf`` (or ``-inf``).

The *pooled* row (task ``"(pooled)"``) uses the population parameters: ``setting_a``, ``setting_b`` and
``mu_b`` (the mean slope) for ``da``, ``db``, ``dlogce``, ``ce_factor`` and ``decades``, at ``x = at`` or the
data's median compute ``c0``; its metric columns (and ``prob_better``) are the average over the fit's tasks
of the per-task metric at each task's ``x``.

Trends compare the *trend* lines (no new-model cell deviation) of the average family (family offsets are
zero-sum, so their mean is 0) unless ``family`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .errors import QueryError
from .fit import FitResult
from .forecast import _py, _select, _task_k, quantile_name, spread_at, trend, warped, warped_slope
from .metrics import METRICS, metric_value

__all__ = ["SettingEffects", "setting_effects", "POOLED", "EFFECT_QUANTITIES"]

#: Task label of the pooled rows.
POOLED = "(pooled)"
#: Quantities summarized per (task, setting), in table order.
EFFECT_QUANTITIES = ("metric_ref", "metric_setting", "metric_effect", "decades", "ce_factor", "dlogce", "da", "db")
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class SettingEffects:
    """Result of :func:`setting_effects`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (task, setting), tasks first and a ``"(pooled)"`` row per setting last. Columns:
        ``task, setting, reference, family, metric, k, log10_compute`` (where the metric and ``decades`` are
        evaluated), then for each quantity in :data:`EFFECT_QUANTITIES` its posterior median and 90%
        interval (``<quantity>_q50``, ``_q05``, ``_q95``), and ``prob_better``.
    draws : xarray.Dataset
        Per draw (``chain, draw, task, setting``; ``task`` includes ``"(pooled)"``): every quantity in
        :data:`EFFECT_QUANTITIES`, plus the coordinate ``log10_compute`` (task).
    reference : str
        The reference setting.
    """

    table: pd.DataFrame
    draws: xr.Dataset
    reference: str

    @property
    def settings(self) -> list[str]:
        return [str(s) for s in self.draws["setting"].values]

    @property
    def tasks(self) -> list[str]:
        """Tasks of the fit (without the pooled label)."""
        return [str(t) for t in self.draws["task"].values if t != POOLED]

    def records(self) -> list[dict]:
        """JSON-ready records of :attr:`table` (NaN and infinities -> None)."""
        return [
            {k: (None if isinstance(v, float) and not np.isfinite(v) else _py(v)) for k, v in row.items()}
            for row in self.table.to_dict("records")
        ]


def _fit_settings(fit: FitResult) -> list[str]:
    settings = list(fit.cells.settings)
    post = fit.posterior
    if len(settings) < 2:
        raise QueryError(
            f"the fit has one setting only ('{settings[0]}'): setting effects need results under at least two "
            "settings (a 'setting' column, e.g. 0-shot and 5-shot)"
        )
    if "da" not in post or "setting_a" not in post:
        raise QueryError("the fit's model has no setting effects (setting_effects = false in its spec); "
                         "refit with a spec that has them")
    return settings


def _quantiles(v: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles over axis 0; where a column holds +-inf, the order statistic (no interpolation towards or
    between infinities, which gives inf or nan)."""
    with np.errstate(invalid="ignore"):
        out = np.quantile(v, list(qs), axis=0, method="linear")
        nearest = np.quantile(v, list(qs), axis=0, method="inverted_cdf")
    return np.where(np.isfinite(v).all(axis=0), out, nearest)


def _decades(dlogce: np.ndarray, slope_ref: np.ndarray) -> np.ndarray:
    """Extra decades of compute the reference needs to match a log-CE shift ``dlogce`` (see module docstring)."""
    dlogce, slope_ref = np.broadcast_arrays(dlogce, slope_ref)
    out = np.zeros(dlogce.shape)
    falling = slope_ref < 0
    out[falling] = dlogce[falling] / slope_ref[falling]
    flat = ~falling
    out[flat & (dlogce < 0)] = np.inf
    out[flat & (dlogce > 0)] = -np.inf
    return out


def setting_effects(
    fit: FitResult,
    *,
    reference: str | None = None,
    settings: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    family: str | None = None,
    metric: str = "exact_match",
    k: float | None = None,
    n: int = 1,
    at: float | None = None,
) -> SettingEffects:
    """Posterior of each setting's effect against a reference setting, per task and pooled.

    Parameters
    ----------
    fit : FitResult
        A fit with at least two settings.
    reference : str, optional
        The setting effects are measured against (default: the fit's reference setting, e.g. ``0-shot``).
    settings : str or list, optional
        Settings to report (default: every setting but the reference).
    tasks : str or list, optional
        Tasks to report (default: all). The pooled metric averages over these.
    family : str, optional
        Evaluate the metric for this family's trend (default: the average family).
    metric : {"exact_match", "token_accuracy", "edit_distance", "pass_at_n"}
        Metric whose change is reported (``metric_effect``).
    k : float, optional
        Answer length in tokens (default: each task's own mean answer length).
    n : int
        Samples for ``pass_at_n``.
    at : float, optional
        Training compute (FLOPs) at which the metric, ``dlogce`` and ``decades`` are evaluated (default: each
        task's median observed compute; the pooled row uses the data's median ``10**c0``).

    Returns
    -------
    SettingEffects

    Raises
    ------
    forecaster.errors.QueryError
        The fit has one setting (or no setting effects), or a reference/setting/task/family/metric it does
        not know, or an invalid ``at``/``k``/``n``.
    """
    if "b_params" in fit.posterior:
        raise QueryError('setting effects are measured on the log-linear trend; this fit has trend = "additive" '
                         '(two power laws): refit with the default model to compare settings')
    known = _fit_settings(fit)
    ref = known[0] if reference is None else reference
    if ref not in known:
        raise QueryError(f"unknown reference setting '{ref}'; the fit knows: {', '.join(known)}")
    if settings is None:
        chosen = [s for s in known if s != ref]
    else:
        chosen = _select("setting", settings, known)
        if ref in chosen:
            raise QueryError(f"setting '{ref}' is the reference; its effect against itself is 0 — choose others")
    if metric not in METRICS:
        raise QueryError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if int(n) < 1:
        raise QueryError(f"--n must be >= 1 sample, got {n}")
    if at is not None and not (np.isfinite(at) and at > 0):
        raise QueryError(f"--at must be a compute > 0 FLOPs, e.g. 1e22; got {at:g}")
    families = None if family is None else [family]
    tr = trend(fit, tasks, families, [ref, *chosen])
    task_l = [str(t) for t in tr["task"].values]
    kk = _task_k(fit, task_l, k)
    c0 = float(fit.cells.c0)
    cells = fit.cells

    # where each task is evaluated: `at`, else the median log10 compute of the task's observed cells
    if at is not None:
        x_task = np.full(len(task_l), np.log10(at))
        x_pool = float(np.log10(at))
    else:
        x_task = np.array([float(np.median(cells.cell_x[cells.cell_task == cells.tasks.index(t)])) for t in task_l])
        x_pool = c0
    x = xr.DataArray(x_task, coords={"task": task_l}, dims="task")

    intercept = tr["intercept"].mean("family")  # zero-sum family offsets: the mean is the average family
    slope = tr["slope"] + tr["slope_family"].mean("family")  # the average family's slope
    ref_i, ref_s = intercept.sel(setting=ref, drop=True), slope.sel(setting=ref, drop=True)
    set_i, set_s = intercept.sel(setting=chosen), slope.sel(setting=chosen)
    da = set_i - ref_i
    db = set_s - ref_s
    tau = warped(tr, x - c0)  # log compute as the task's (bent) line sees it
    dlogce = da + db * tau
    mu_ref = ref_i + ref_s * tau
    mu_set = set_i + set_s * tau
    ref_s = ref_s * warped_slope(tr, x - c0)  # the local slope, for the decades a setting's shift is worth

    sig_ref, sig_set = _spread(tr, mu_ref), _spread(tr, mu_set)
    m_ref = np.stack([
        metric_value(mu_ref.sel(task=t).transpose("chain", "draw").values,
                     sig_ref.sel(task=t).transpose("chain", "draw").values, metric, float(kk.sel(task=t)), int(n),
                     floor=tr["guess_rate"].sel(task=t).transpose("chain", "draw").values)
        for t in task_l], axis=-1)  # chain, draw, task
    m_set = np.stack([
        metric_value(mu_set.sel(task=t).transpose("chain", "draw", "setting").values,
                     sig_set.sel(task=t).transpose("chain", "draw", "setting").values, metric,
                     float(kk.sel(task=t)), int(n), floor=tr["guess_rate"].sel(task=t).values[..., None])
        for t in task_l], axis=-2)  # chain, draw, task, setting
    m_ref = np.broadcast_to(m_ref[..., None], m_set.shape)
    sign = 1.0 if METRICS[metric] else -1.0

    dims = ("chain", "draw", "task", "setting")

    def arr(v: xr.DataArray) -> np.ndarray:
        return v.transpose(*dims).values

    per_task = {
        "da": arr(da), "db": arr(db), "dlogce": arr(dlogce), "ce_factor": np.exp(arr(dlogce)),
        "metric_ref": m_ref, "metric_setting": m_set, "metric_effect": m_set - m_ref,
        "decades": _decades(arr(dlogce), ref_s.transpose("chain", "draw", "task").values[..., None]),
    }

    # pooled: population parameters; metric averaged over the tasks
    post = fit.posterior

    def pooled_shift(name: str) -> xr.DataArray:
        eff = post[name].rename(setting_effect="setting")
        zero = xr.zeros_like(eff.isel(setting=0, drop=True)).expand_dims(setting=[known[0]])
        full = xr.concat([zero, eff], dim="setting").sel(setting=[ref, *chosen])
        return full.sel(setting=chosen) - full.sel(setting=ref, drop=True)

    pa, pb = pooled_shift("setting_a"), pooled_shift("setting_b")
    # population mean slope (with a single task the model has no population level: that task's slope)
    mean_slope = post["mu_b"] if "mu_b" in post else post["b"].mean("task")
    ref_slope_pool = mean_slope + _setting_slope(post, known, ref)
    p_dlogce = (pa + pb * (x_pool - c0)).transpose("chain", "draw", "setting").values
    pooled = {
        "da": pa.transpose("chain", "draw", "setting").values, "db": pb.transpose("chain", "draw", "setting").values,
        "dlogce": p_dlogce, "ce_factor": np.exp(p_dlogce),
        "metric_ref": m_ref.mean(axis=2), "metric_setting": m_set.mean(axis=2),
        "metric_effect": (m_set - m_ref).mean(axis=2),
        "decades": _decades(p_dlogce, ref_slope_pool.values[..., None]),
    }

    all_tasks = [*task_l, POOLED]
    coords = {"chain": tr["chain"].values, "draw": tr["draw"].values, "task": all_tasks, "setting": chosen,
              "log10_compute": ("task", np.append(x_task, x_pool))}
    draws = xr.Dataset(
        {q: (dims, np.concatenate([per_task[q], pooled[q][:, :, None, :]], axis=2)) for q in EFFECT_QUANTITIES},
        coords=coords,
        attrs={"reference": ref, "metric": metric, "c0": c0, "n": int(n), "family": family or "(average)",
               "at": None if at is None else float(at)},
    )

    # table
    flat = {q: draws[q].values.reshape(-1, len(all_tasks), len(chosen)) for q in EFFECT_QUANTITIES}
    qs = (0.5, 0.05, 0.95)
    summ = {q: _quantiles(v, qs) for q, v in flat.items()}
    better = sign * flat["metric_effect"] > 0
    k_of = {t: float(kk.sel(task=t)) for t in task_l}
    rows = []
    for si, s in enumerate(chosen):
        for ti, t in enumerate(all_tasks):
            row = {"task": t, "setting": s, "reference": ref, "family": family or "(average)", "metric": metric,
                   "k": k_of.get(t, np.nan), "log10_compute": float(coords["log10_compute"][1][ti])}
            for q in EFFECT_QUANTITIES:
                for qi, qv in enumerate(qs):
                    row[f"{q}_{quantile_name(qv)}"] = float(summ[q][qi, ti, si])
            row["prob_better"] = float(np.mean(better[:, ti, si]))
            rows.append(row)
    table = pd.DataFrame(rows)
    return SettingEffects(table=table, draws=draws, reference=ref)


def _spread(tr: xr.Dataset, log_ce: xr.DataArray) -> xr.DataArray:
    """Per-draw item spread at typical-item log CE ``log_ce`` (:func:`forecaster.forecast.spread_at`)."""
    return xr.broadcast(spread_at(tr, log_ce), log_ce)[0]


def _setting_slope(post: xr.Dataset, known: list[str], setting: str) -> xr.DataArray | float:
    """Pooled slope shift of ``setting`` (0 for the fit's reference setting)."""
    if setting == known[0]:
        return 0.0
    return post["setting_b"].sel(setting_effect=setting, drop=True)
