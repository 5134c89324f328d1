"""Pure model builder: sufficient statistics + spec in, ``pm.Model`` out (no I/O, sampling or plotting).

See ``models/default.toml`` for the model in words. Variables kept for the
forecast stage (per draw):

* ``a`` (task), ``b`` (task): task intercept and slope of log CE vs ``x - c0``; with ``trend = "additive"``
  ``a`` is the level at the reference, and ``b`` is replaced by ``b_params``, ``b_tokens`` (task: slopes of the
  params and tokens terms per decade of each) and ``trend_share`` (task: log-odds of the params term at the
  reference), see :func:`additive_trend`;
* ``a_family`` (family): family offsets (absent with one family);
* ``family_task_b``, ``family_task_a`` (pair): each (task, family) pair's slope and intercept around the task's
  (``family_task_effects``; mean zero over a task's families; the intercept only without model deviations;
  the slope pivots on the mean of the pair's computes, :func:`family_task_pivots`);
* ``da``, ``db`` (task, setting): setting effects (reference setting = 0; absent with one setting);
* ``sigma_item`` (task): spread of log CE across items at one model (where the task's typical item is at its
  median observed log CE, ``cells.spread_ref``);
* ``spread_slope`` (task): growth of that spread as the task is learned (absent when switched off;
  :func:`forecaster.metrics.item_spread`);
* ``alloc`` (task): effect of log10(params / tokens) at fixed compute (absent without params and tokens;
  :func:`use_allocation`);
* ``sigma_model``: spread of a model's (all its checkpoints') deviation from the trend (absent when off);
* ``sigma_cell``: spread of a new model's cell around the trend (absent when switched off);
* ``guess_rate`` (task): exact-match floor ``g``, observed accuracy ``g + (1 - g) * p`` (absent when switched
  off; 0 for tasks without it, :func:`floor_tasks`);
* ``mu_cell`` (cell): fitted log CE of the typical item in each observed cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from .data import CellData
from .expectation import expected_exact_match
from .metrics import bend_basis, bend_knots, warp_weights
from .quadrature import item_spread
from .errors import SpecError
from .spec import ModelSpec

__all__ = ["additive_trend", "build_model", "choose_parametrization", "floor_tasks", "model_coords",
           "cell_noise_and_spread", "slope_centering", "task_slope_estimates",
           "model_deviation_index", "model_digest", "params_tokens_offsets", "setting_population_draws",
           "use_allocation"]

_SS_EPS = 1e-9


def choose_parametrization(cells: CellData, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Which tasks and which cells get the centered parametrization (boolean masks).

    ``centered``/``noncentered`` in the spec apply to all. ``auto`` decides by
    data: centered everywhere when the median task is seen at no fewer than
    ``auto_centered_min_levels`` distinct compute levels, else non-centered.
    Cell deviations are non-centered unless a cell is measured on at least
    ``auto_centered_min_items`` items by log-probs or CE (then its data pin it
    tighter than ``sigma_cell``). Exact-match counts do not count: alone they
    pin only a combination of the cell's log CE and the item spread, so the
    cells of an accuracy-only task move together with ``a`` and ``sigma_item``
    (Pythia addition, 5,000 items a cell: centered R-hat 1.15, ESS 12 of 1000;
    non-centered R-hat 1.04, ESS 59). Measured on the demo data (4 tasks, 72 cells of 60 items):
    all centered gave ``sigma_cell`` R-hat 1.23 and ESS 14; tasks centered
    with non-centered cells R-hat 1.01, ESS 359. On Pythia LAMBADA (5,153
    items a cell) non-centered cells gave ``sigma_cell`` ESS 27 of 1000,
    centered ESS 330.
    """
    choice = spec.structure["parametrization"]
    n_task = len(cells.tasks)
    if choice == "auto":
        levels = [len(np.unique(np.round(cells.cell_x[cells.cell_task == t], 6))) for t in range(n_task)]
        choice = "centered" if np.median(levels) >= spec.structure["auto_centered_min_levels"] else "noncentered"
        n_obs = np.maximum(cells.item_n, np.where(np.isfinite(cells.ce_obs), cells.ce_n, 0))
        centered_cell = n_obs >= spec.structure["auto_centered_min_items"]
        ratio = spec.structure.get("auto_cell_se_ratio", False)
        if ratio is not False:
            se, spread = cell_noise_and_spread(cells)
            if np.isfinite(spread):
                per_item = np.isfinite(se)
                centered_cell[per_item] = se[per_item] < float(ratio) * spread
        return np.full(n_task, choice == "centered"), centered_cell
    return np.full(n_task, choice == "centered"), np.full(cells.n_cells, choice == "centered")


def _trend_fit(cells: CellData, m: np.ndarray, y: np.ndarray,
               with_u: bool = False) -> tuple[np.ndarray, float, float] | None:
    """Least-squares line of ``y`` on log10 compute over the cells ``m`` (one task), with family and setting
    offsets and, when ``with_u`` and the cells vary in it, log10 params/tokens: ``(coefficients, residual
    variance, variance factor of the slope)``, or None with fewer than three compute levels or no residual
    degrees of freedom."""
    if len(np.unique(np.round(cells.cell_x[m], 6))) < 3:
        return None
    cols = [cells.cell_x[m] - cells.c0, np.ones(m.sum())]
    for arr in (cells.cell_family, cells.cell_setting):
        cols += [(arr[m] == lvl).astype(float) for lvl in np.unique(arr[m])[1:]]
    if with_u and len(cells.cell_u) == cells.n_cells and np.isfinite(cells.cell_u[m]).all() \
            and np.ptp(cells.cell_u[m]) > 1e-9:
        cols.append(cells.cell_u[m])
    X = np.column_stack(cols)
    dof = int(m.sum()) - X.shape[1]
    if dof < 1 or np.linalg.matrix_rank(X) < X.shape[1]:
        return None
    beta = np.linalg.lstsq(X, y[m], rcond=None)[0]
    return beta, float(((y[m] - X @ beta) ** 2).sum()) / dof, float(np.linalg.inv(X.T @ X)[0, 0])


def cell_noise_and_spread(cells: CellData) -> tuple[np.ndarray, float]:
    """Standard error of each per-item cell's mean log CE (NaN for other cells) and an estimate of the cells'
    spread around their trends (``sigma_cell``; NaN when no task has three compute levels of per-item data).

    A cell's standard error is the item-by-model residual sd of its balanced item group (items shared by the
    group's models: their persistent difficulty is common to all its cells and cancels), else the sd of its
    items' log CE, over the square root of its item count (NaN for a cell of one item). The spread: per task, the residual variance of the
    least-squares line of the per-item cells' mean log CE on log10 compute (with family and setting offsets)
    less the cells' mean squared standard error, averaged over tasks, floored at 0.
    """
    se2 = np.full(cells.n_cells, np.nan)
    per = cells.item_n > 0
    several = cells.item_n >= 2  # one item tells nothing of its cell's noise
    se2[several] = cells.item_ss[several] / (cells.item_n[several] - 1) / cells.item_n[several]
    if len(cells.cell_group) == cells.n_cells and len(cells.group_ss_res):
        bal = per & (cells.cell_group >= 0)
        resid_var = np.asarray(cells.group_ss_res, float) / np.maximum(np.asarray(cells.group_df_res, float), 1.0)
        se2[bal] = resid_var[cells.cell_group[bal]] / cells.item_n[bal]
    excess = []
    for j in range(len(cells.tasks)):
        m = per & (cells.cell_task == j)
        fitted = _trend_fit(cells, m, cells.item_mean)
        if fitted is not None and np.isfinite(se2[m]).any():
            excess.append(fitted[1] - float(np.nanmean(se2[m])))
    spread = float(np.sqrt(max(np.mean(excess), 0.0))) if excess else float("nan")
    return np.sqrt(se2), spread


def slope_centering(cells: CellData, spec: ModelSpec, centered_task: np.ndarray | None = None) -> np.ndarray:
    """Which tasks' slopes ``b`` get the centered parametrization (boolean mask over tasks).

    The intercepts follow :func:`choose_parametrization`; so do the slopes, unless the spec says
    ``auto_slope_se_ratio = r`` (with ``parametrization = "auto"``). Then a task's slope is centered when the
    data pin it tighter than the tasks' slopes spread: its least-squares standard error (the observed log CE
    of its cells on log10 compute, with family and setting offsets and, where the data give params and
    tokens, log10 params/tokens) is below ``r`` times the spread of the slopes across tasks (the spread of the
    least-squares slopes less their mean squared standard error; the fixed value of ``sigma_b`` when the spec
    fixes it). Tasks with accuracy alone (no log-prob or CE data) get non-centered slopes: centered, their
    slopes move together with ``mu_b``, a slow direction (docs/calibration.md, session 16). Other tasks
    without three compute levels of log-prob or CE data, and fits with fewer than two such tasks, keep the
    intercepts' choice.

    Measured (4 tasks x 6 models of per-item data, slopes -0.3 to -0.5, cell deviations 0.1; 4 chains x 1000,
    seeds 1-2): with 50 items a cell centered slopes gave 99 / 61 divergences (the funnel of ``sigma_b``,
    whose truth 0.085 the data barely resolve), non-centered slopes 1 / 0 with ESS 801 / 758 (se / spread
    0.6-2.3); with 500 items (cells centered, :func:`cell_noise_and_spread`) 253 / 37 against 2 / 1 (0.6-1.2);
    with 5000 items centered slopes were better (no divergences, ESS 1645 against 650; 0.05-0.4). The demo (0.14-0.16)
    keeps centered slopes; with them non-centered it mixed worse (R-hat up to 1.045, ESS 158-332).
    """
    if centered_task is None:
        centered_task = choose_parametrization(cells, spec)[0]
    ratio = spec.structure.get("auto_slope_se_ratio", False)
    out = np.array(centered_task, bool)
    if spec.structure["parametrization"] != "auto" or ratio is False:
        return out
    # accuracy alone pins a task's slope only through the item spread and the floor: non-centered
    seen = (cells.item_n > 0) | np.isfinite(cells.ce_obs)
    out[np.bincount(cells.cell_task[seen], minlength=len(cells.tasks)) == 0] = False
    if len(cells.tasks) < 2:
        return out
    slope, se = task_slope_estimates(cells)
    ok = np.isfinite(se)
    fixed = spec.priors.get("sigma_b", {})
    if isinstance(fixed, dict) and set(fixed) == {"value"}:
        spread = float(fixed["value"])
    elif ok.sum() >= 2:
        spread = float(np.sqrt(max(np.var(slope[ok], ddof=1) - np.mean(se[ok] ** 2), 1e-12)))
    else:
        return out
    out[ok] = se[ok] < float(ratio) * spread
    return out


def task_slope_estimates(cells: CellData) -> tuple[np.ndarray, np.ndarray]:
    """Per task, the least-squares slope of observed log CE on log10 compute and its standard error (NaN where
    a task has fewer than three compute levels of log-prob or CE data, or no residual degrees of freedom).

    Observed log CE: a cell's mean log CE over items, else the log of its aggregate CE (the item spread adds a
    constant per task there). Regressors: the compute offset, a constant, family and setting indicators and,
    where every such cell has them, log10 params/tokens.
    """
    n_task = len(cells.tasks)
    slope, se = np.full(n_task, np.nan), np.full(n_task, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(cells.item_n > 0, cells.item_mean, np.log(cells.ce_obs))
    for j in range(n_task):
        fitted = _trend_fit(cells, np.isfinite(y) & (cells.cell_task == j), y, with_u=True)
        if fitted is not None:
            beta, s2, factor = fitted
            slope[j], se[j] = beta[0], np.sqrt(max(s2, 1e-12) * factor)
    return slope, se


def model_coords(cells: CellData) -> dict[str, list]:
    return {
        "task": list(cells.tasks),
        "family": list(cells.families),
        "setting": list(cells.settings),
        "setting_effect": list(cells.settings[1:]),
        "cell": list(range(cells.n_cells)),
    }


def _hier(name: str, mu, sigma, dims: str, centered: np.ndarray):
    """Normal(mu, sigma) over ``dims``: centered entries sampled directly, the others as mu + sigma * z."""
    n = len(centered)
    if centered.all():
        return pm.Normal(name, mu=mu, sigma=sigma, dims=dims)
    if not centered.any():
        return pm.Deterministic(name, mu + sigma * pm.Normal(f"{name}_z", 0.0, 1.0, dims=dims), dims=dims)
    ic, inc = np.flatnonzero(centered), np.flatnonzero(~centered)
    mu_v = pt.broadcast_to(pt.as_tensor(mu), (n,))
    c = pm.Normal(f"{name}_c", mu=mu_v[ic], sigma=sigma, shape=len(ic))
    z = pm.Normal(f"{name}_z", 0.0, 1.0, shape=len(inc))
    full = pt.zeros(n)
    full = pt.set_subtensor(full[ic], c)
    full = pt.set_subtensor(full[inc], mu_v[inc] + sigma * z)
    return pm.Deterministic(name, full, dims=dims)


def _task_level(spec: ModelSpec, name: str, mu_name: str, sigma_name: str, centered: np.ndarray):
    """Task intercepts or slopes, partially pooled: ``Normal(mu, sigma)`` with ``mu``, ``sigma`` from the spec.

    With a single task there is nothing to pool and the hyperparameters form a
    funnel the sampler diverges in (Pythia LAMBADA: R-hat 1.04 on ``mu_a``,
    divergences); when their priors are Normal and HalfNormal (or fixed) the
    task's parameter then gets the same marginal prior directly:
    ``Normal(mu.mu, sqrt(mu.sigma**2 + sigma.sigma**2))``.
    """
    marginal = _single_task_prior(spec, mu_name, sigma_name) if len(centered) == 1 else None
    if marginal is not None:
        return pm.Normal(name, mu=marginal[0], sigma=marginal[1], dims="task")
    return _hier(name, spec.prior(mu_name), spec.prior(sigma_name), "task", centered)


def _single_task_prior(spec: ModelSpec, mu_name: str, sigma_name: str) -> tuple[float, float] | None:
    """Mean and sd of a single task's parameter with its population mean and spread integrated out, when their
    priors are Normal and HalfNormal (or fixed); else None (see :func:`_task_level`)."""
    m = _normal_moments(spec.priors[mu_name])
    v = _halfnormal_second_moment(spec.priors[sigma_name])
    if m is None or v is None:
        return None
    return m[0], float(np.sqrt(m[1] ** 2 + v))


def _normal_moments(p: dict) -> tuple[float, float] | None:
    if "value" in p:
        return float(p["value"]), 0.0
    if p.get("dist") == "Normal" and set(p) <= {"dist", "mu", "sigma"}:
        return float(p.get("mu", 0.0)), float(p.get("sigma", 1.0))
    return None


def _halfnormal_second_moment(p: dict) -> float | None:
    if "value" in p:
        return float(p["value"]) ** 2
    if p.get("dist") == "HalfNormal" and set(p) <= {"dist", "sigma"}:
        return float(p.get("sigma", 1.0)) ** 2
    return None


def model_deviation_index(cells: CellData, spec: ModelSpec) -> np.ndarray | None:
    """Index of each cell's (base model, task) deviation, or None when the model has none.

    A model evaluated at several checkpoints (``name@step...``) deviates from
    the trend as a whole: its checkpoints share one deviation per task, on top
    of each cell's own. Without it, 14 checkpoints of each of two models count
    as 28 independent looks at the slope (Pythia LAMBADA backtest: 90%
    intervals covered 27% of the larger models). ``auto``: on when some model
    has two or more checkpoints on a task.
    """
    choice = spec.structure.get("model_deviation", False)
    if choice is False or len(cells.cell_base) != cells.n_cells:
        return None
    idx = _deviation_index(cells)
    if choice == "auto" and np.bincount(idx).max() < 2:
        return None
    return idx


def _deviation_index(cells: CellData) -> np.ndarray:
    """Index of each cell's (base model, task) pair."""
    pairs = cells.cell_base * len(cells.tasks) + cells.cell_task
    return np.unique(pairs, return_inverse=True)[1].astype(int).reshape(-1)


def model_deviation_split(cells: CellData, spec: ModelSpec, idx: np.ndarray | None,
                          centered_task: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """How a task's model deviations split into what its trend can absorb and the rest (exactly).

    iid deviations ``d = sigma_model * z``, ``z ~ Normal(0, I)``, of one task's models are rotated into
    ``z = B @ w + Q @ v`` (``w``, ``v`` iid standard normal; ``[B, Q]`` orthonormal), with ``Q`` spanning the
    per-model directions the trend itself can move along: a constant and, for the log-linear trend with
    params and tokens, the model's ``L = (x + u - c0 - u0) / 2`` (log10 params up to a constant; shifting
    ``b`` and ``alloc`` by ``delta / 2`` each moves a cell by ``delta * L`` and nothing else). Writing
    ``Q = X @ inv(R)`` (``X`` those directions per model), ``sigma_model * Q @ v`` is the trend moved by
    ``sigma_model * inv(R) @ v``: the model samples the moved ("effective") intercept and slopes, which the
    data pin, and puts the trend's prior on the effective values minus that move. The same model, without
    the ridge along which trend and deviations traded places. Returns ``(B, C0, C1)``: ``B`` (deviations x
    w), ``C0``/``C1`` (task x v) the intercept and params-slope moves per unit ``sigma_model * v``; ``None``
    when switched off (``model_deviation_split = false``), without deviations, without params and tokens,
    when a task's level is non-centered (then the move would land on its offsets, not on a sampled value),
    and for the additive trend.

    Measured on Pythia LAMBADA (fit on the smallest 2-5 sizes, seeds 1-2, 4 chains x 1000 + 1000): R-hat
    1.005-1.011, min ESS 352-636 and no divergences, against 1.009-1.041, 102-478 and 0-23 sampling the
    deviations directly. In the additive trend the params slope does not move a model's log CE by a fixed
    amount, so only the intercept direction is exact there; split that way it mixed no better (R-hat
    1.012-1.048, ESS 89-447, 0-16 divergences, against 1.010-1.047, 95-238, 0-16), and it is off there.
    """
    if idx is None or not spec.structure.get("model_deviation_split", False) or spec.structure.get("trend") == "additive":
        return None
    if len(cells.cell_u) != cells.n_cells or not np.isfinite(cells.cell_u).all() or not centered_task.all():
        return None
    n_dev, n_task = int(idx.max()) + 1, len(cells.tasks)
    cnt = np.bincount(idx, minlength=n_dev)
    task = np.zeros(n_dev, int)
    task[idx] = cells.cell_task
    slope_dir = use_allocation(cells, spec)
    cell_l = (cells.cell_x + cells.cell_u - cells.c0 - cells.u0) / 2.0
    lvl = np.bincount(idx, cell_l, minlength=n_dev) / cnt
    # exact only if L is the same for all of a model's cells (its checkpoints share its params)
    slope_dir = slope_dir and bool(np.allclose(cell_l, lvl[idx], rtol=0.0, atol=1e-9))
    b_cols, c0_cols, c1_cols = [], [], []
    for j in range(n_task):
        rows = np.flatnonzero(task == j)
        if not len(rows):
            continue
        X = np.ones((len(rows), 1))
        if slope_dir and len(rows) >= 2 and np.ptp(lvl[rows]) > 1e-9:
            X = np.column_stack([X, lvl[rows]])
        full, r = np.linalg.qr(X, mode="complete")  # X = full[:, :k] @ r[:k]
        k = X.shape[1]
        rinv = np.linalg.inv(r[:k])
        bj = np.zeros((n_dev, len(rows) - k))
        bj[rows] = full[:, k:]
        b_cols.append(bj)
        c0 = np.zeros((n_task, k))
        c1 = np.zeros((n_task, k))
        c0[j] = rinv[0]
        if k == 2:
            c1[j] = rinv[1]
        c0_cols.append(c0)
        c1_cols.append(c1)
    return np.concatenate(b_cols, axis=1), np.concatenate(c0_cols, axis=1), np.concatenate(c1_cols, axis=1)


def _task_level_moved(spec: ModelSpec, name: str, mu_name: str, sigma_name: str, n_task: int, move):
    """Task parameter ``name`` sampled as ``<name>_eff``; its prior (as :func:`_task_level`, centered) holds for
    ``name = <name>_eff - move`` (see :func:`model_deviation_split`). Returns ``(eff, value)``."""
    eff = pm.Flat(f"{name}_eff", dims="task")
    value = pm.Deterministic(name, eff - move, dims="task")
    marginal = _single_task_prior(spec, mu_name, sigma_name) if n_task == 1 else None
    if marginal is not None:
        dist = pm.Normal.dist(mu=marginal[0], sigma=marginal[1])
    else:
        dist = pm.Normal.dist(mu=spec.prior(mu_name), sigma=spec.prior(sigma_name))
    pm.Potential(f"{name}_prior", pm.logp(dist, value).sum())
    return eff, value


#: ``allocation_effect = "auto"``: the least spread (standard deviation, decades) of log10(params / tokens) about
#: its least-squares line in log10 compute that identifies the params/tokens effect apart from the slope.
ALLOCATION_MIN_SD = 0.3


def use_allocation(cells: CellData, spec: ModelSpec) -> bool:
    """Whether the model gets the params/tokens effect ``alloc[task] * (u - u0)``, ``u = log10(params / tokens)``.

    With ``u`` the compute slope ``b`` is the slope at a fixed params/tokens
    ratio, and ``b + alloc`` / ``b - alloc`` are the slopes in log10 params /
    log10 tokens. Checkpoints of one model differ only in tokens, models in
    params: on Pythia LAMBADA, 70M and 160M checkpoints barely improve with
    tokens while larger models are far better at the same compute, and a
    compute-only trend fitted on them forecast the larger models 1.7 decades
    too late. ``auto``: on when every cell has params and tokens and their
    ratio varies apart from compute (:data:`ALLOCATION_MIN_SD`): where it moves with compute alone (one token
    count per family, or one run's checkpoints) ``alloc`` is a copy of the slope, and the sampler wanders
    along the ridge.
    """
    choice = spec.structure.get("allocation_effect", False)
    if choice is False or len(cells.cell_u) != cells.n_cells:
        return False
    u = cells.cell_u
    if not np.isfinite(u).all():
        if choice is True:
            raise SpecError("allocation_effect = true needs columns params and tokens for every row; "
                            "add them or set allocation_effect = \"auto\"")
        return False
    if choice is True:
        return True
    x = np.column_stack([np.ones(cells.n_cells), cells.cell_x])
    resid = u - x @ np.linalg.lstsq(x, u, rcond=None)[0]
    return bool(resid.std() >= ALLOCATION_MIN_SD)


#: Families with a task seen at two or more computes that ``family_task_effects = "auto"`` needs.
FAMILY_TASK_MIN_FAMILIES = 3


def family_task_pairs(cells: CellData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each cell's (task, family) pair index, and each pair's task and family index."""
    n_fam = len(cells.families)
    key = np.asarray(cells.cell_task, int) * n_fam + np.asarray(cells.cell_family, int)
    uniq, inv = np.unique(key, return_inverse=True)
    return inv.reshape(-1).astype(int), (uniq // n_fam).astype(int), (uniq % n_fam).astype(int)


def family_task_pivots(cells: CellData) -> np.ndarray:
    """Each (task, family) pair's pivot: the mean of the distinct log10 computes it is seen at."""
    pair, _, _ = family_task_pairs(cells)
    seen = np.unique(np.column_stack([pair, np.asarray(cells.cell_x, float)]), axis=0)
    n = np.bincount(seen[:, 0].astype(int))
    return np.bincount(seen[:, 0].astype(int), weights=seen[:, 1]) / n


def _centered_within(z, groups: np.ndarray, n_groups: int):
    """``z`` less the mean of its group (vectorized: one scatter-add, whatever the number of groups)."""
    counts = np.maximum(np.bincount(groups, minlength=n_groups), 1).astype(float)
    sums = pt.inc_subtensor(pt.zeros(n_groups)[groups], z)
    return z - (sums / counts)[groups]


def use_family_task(cells: CellData, spec: ModelSpec) -> bool:
    """Whether each (task, family) pair gets its own slope (and intercept) around the task's.

    ``auto``: on when :data:`FAMILY_TASK_MIN_FAMILIES` or more families each have a task seen at two or more
    compute levels, so that a family's own slope, and their spread, can be told from the data; with one
    family the task's line is the family's, and with two each task gives one contrast of their slopes.
    """
    choice = spec.structure.get("family_task_effects", False)
    if choice is False or len(cells.families) < 2:
        return False
    if choice is True:
        return True
    pair, _, pair_fam = family_task_pairs(cells)
    seen = np.unique(np.column_stack([pair, np.round(np.asarray(cells.cell_x, float), 6)]), axis=0)
    levels = np.bincount(seen[:, 0].astype(int), minlength=len(pair_fam))  # distinct computes per pair
    return len(np.unique(pair_fam[levels >= 2])) >= FAMILY_TASK_MIN_FAMILIES


def spread_identified(cells: CellData) -> np.ndarray:
    """Tasks whose item-spread growth is free: those with log-prob or CE data at >= 2 computes (elsewhere 0).

    Only a task's CE data next to its accuracy tell the spread apart from the
    typical item's log CE; from accuracy alone it is not identified (Pythia
    two-digit addition, accuracy only: R-hat 2.0 on ``spread_slope``).
    """
    has_ce = (cells.item_n > 0) | np.isfinite(cells.ce_obs)
    return np.array([len(np.unique(np.round(cells.cell_x[has_ce & (cells.cell_task == j)], 6))) >= 2
                     for j in range(len(cells.tasks))], bool)


def _free_where(spec: ModelSpec, name: str, free: np.ndarray, fixed: float):
    """Per-task parameter ``name``: its spec prior for the tasks in ``free`` (sampled as ``<name>_free``, or as
    ``name`` itself when all are free), the value ``fixed`` for the others."""
    if free.all():
        return spec.prior(name, dims="task")
    # pt.zeros for 0: that graph compiles to the same arithmetic (and draws) as the per-parameter code it replaced
    full = pt.zeros(len(free)) if fixed == 0.0 else pt.full(len(free), fixed)
    if free.any():
        sampled = spec.prior(name, shape=int(free.sum()), rv_name=f"{name}_free")
        full = pt.set_subtensor(full[np.flatnonzero(free)], sampled)
    return pm.Deterministic(name, full, dims="task")


def params_tokens_offsets(x, u, c0: float, u0: float):
    """Decades of parameters and of training tokens from the reference point (compute ``10**c0`` at
    ``log10(params / tokens) = u0``), from ``x = log10 compute`` and ``u = log10(params / tokens)``
    (``compute = 6 * params * tokens``)."""
    return (x - c0) / 2.0 + (u - u0) / 2.0, (x - c0) / 2.0 - (u - u0) / 2.0


def additive_trend(level, share, b_params, b_tokens, dn, dd, xp=np):
    """Log CE of the typical item as the sum of a params term and a tokens term (``trend = "additive"``).

    ``CE = CE_params + CE_tokens`` with ``log CE_params = level + log(sigmoid(share)) + b_params * dn`` and
    ``log CE_tokens = level + log(1 - sigmoid(share)) + b_tokens * dd`` (``dn``, ``dd``: decades of params and
    tokens from the reference, :func:`params_tokens_offsets`), so that ``level`` is the log CE at the
    reference and ``share`` the log-odds of the params term there. It is Hoffmann et al.'s (2022) loss
    ``A / N**alpha + B / D**beta`` for one item: a model with few parameters gains little from more tokens,
    and the gain from parameters flattens once the tokens term dominates (Pythia LAMBADA: the typical item's
    log CE falls ~1.6 per decade of params up to 410M and ~0.7 beyond). ``xp``: numpy or pytensor.tensor.
    """
    sp = (lambda v: np.logaddexp(0.0, v)) if xp is np else xp.softplus
    return xp.logaddexp(level - sp(-share) + b_params * dn, level - sp(share) + b_tokens * dd)


def floor_tasks(cells: CellData, spec: ModelSpec) -> np.ndarray:
    """Which tasks get an exact-match floor (guess rate) ``g``: observed accuracy ``g + (1 - g) * p``.

    ``auto``: the accuracy-only tasks (exact-match counts, no log-probs or CE).
    There a flat accuracy floor could otherwise only be a flat latent CE, and
    the forecast was a confidently flat floor (Pythia two-digit addition).
    Where CE is measured the latent accuracy is pinned by CE and item spread,
    and a floor trades off against the spread (Pythia LAMBADA: R-hat 1.45 on
    ``guess_rate``, ESS 4 of 1000); without counts it touches no data. There
    it is fixed at 0. ``true``: every task; ``false``: none.
    """
    choice = spec.structure.get("em_floor", False)
    n_task = len(cells.tasks)
    if choice is False:
        return np.zeros(n_task, bool)
    if choice is True:
        return np.ones(n_task, bool)
    has_ce = (cells.item_n > 0) | np.isfinite(cells.ce_obs)
    return np.array([bool(np.any(cells.em_n[cells.cell_task == j] > 0) and not np.any(has_ce[cells.cell_task == j]))
                     for j in range(n_task)])


def accuracy_shows_no_rise(cells: CellData, z_min: float = 2.0) -> np.ndarray:
    """Tasks whose data cannot tell when they will rise (boolean mask over tasks): no log-prob or CE data, and
    exact-match counts without a detectable rise with compute (Cochran-Armitage trend statistic of the counts
    on log10 compute below ``z_min``; e.g. accuracy on its floor of lucky guesses). Their forecast crossing
    follows the pooled slope prior, not the task's own data."""
    out = np.zeros(len(cells.tasks), bool)
    has_ce = (cells.item_n > 0) | np.isfinite(cells.ce_obs)
    for j in range(len(cells.tasks)):
        m = (cells.cell_task == j) & (cells.em_n > 0)
        if has_ce[cells.cell_task == j].any() or not m.any():
            continue
        n, k, x = cells.em_n[m], cells.em_correct[m], cells.cell_x[m]
        p = k.sum() / n.sum()
        xbar = (n * x).sum() / n.sum()
        var = p * (1.0 - p) * (n * (x - xbar) ** 2).sum()
        z = ((k - n * p) * (x - xbar)).sum() / np.sqrt(var) if var > 0 else 0.0
        out[j] = z < z_min
    return out


def _guess_rate(spec: ModelSpec, on: np.ndarray):
    """Per-task floor: free (prior ``guess_rate``) where ``on``, else fixed at 0."""
    return _free_where(spec, "guess_rate", on, 0.0)


def model_digest(cells: CellData, spec: ModelSpec) -> str:
    """Hash of everything :func:`build_model` depends on: the cells, the spec and the code that builds the graph.

    ``build_model`` is pure, so this identifies the model's graph without building its log density (which
    costs ~0.8 s on the demo): the compile cache's key (:func:`forecaster.compile_cache.compile_nutpie`).
    """
    import dataclasses
    import hashlib
    from pathlib import Path

    from .expectation import table_id

    h = hashlib.sha256()
    for f in dataclasses.fields(cells):
        v = getattr(cells, f.name)
        if isinstance(v, np.ndarray):
            h.update(f"{f.name}:{v.dtype.str}:{v.shape}:".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            h.update(f"{f.name}:{v!r}".encode())
    h.update(repr((sorted(spec.structure.items()), sorted((k, sorted(p.items())) for k, p in spec.priors.items()))).encode())
    here = Path(__file__).parent
    for name in ("model.py", "expectation.py", "quadrature.py", "spec.py", "data.py"):
        h.update((here / name).read_bytes())
    h.update(table_id().encode())
    return h.hexdigest()


def _setting_shifts(spec: ModelSpec, which: str, sigma, n_task: int):
    """Per-task shifts (task, setting_effect) of intercept (``which="a"``) or slope (``"b"``) for each setting.

    Model: shifts iid ``Normal(setting_<which>, sigma)`` across tasks, ``setting_<which>`` with its spec prior.
    When that prior is Normal (or fixed), the population mean is integrated out: the shifts are sampled as
    their mean over tasks ``setting_m_<which> ~ Normal(prior mean, sqrt(prior sd**2 + sigma**2 / n_task))``
    plus zero-sum offsets ``sigma * d<which>_z`` (an exact re-expression of the same model), and
    ``setting_<which>`` is drawn afterwards from its conditional (:func:`setting_population_draws`).
    Measured on the demo (4 tasks, seeds 0-3), together with the fixed ``item_persistence`` where it is not
    identified (:func:`_item_persistence`): min ESS 433-561 of 4000, R-hat 1.009-1.014 and no divergences,
    against ESS 215-466 and 3-30 divergences with the population mean sampled and non-centered offsets
    ``setting + sigma * z`` (the mean and the offsets' sum were one slow direction); centered shifts gave
    20-60 divergences.
    """
    name = f"setting_{which}"
    dims = ("task", "setting_effect")
    moments = _normal_moments(spec.priors[name])
    if moments is None:  # another prior family: the population mean is sampled, offsets non-centered
        pop = spec.prior(name, dims="setting_effect")
        return pop[None, :] + sigma * pm.Normal(f"d{which}_z", 0.0, 1.0, dims=dims)
    m0, s0 = moments
    mean = pm.Normal(f"setting_m_{which}", m0, pt.sqrt(s0**2 + sigma**2 / n_task), dims="setting_effect")
    if n_task == 1:
        return mean[None, :]
    # (standard normals in a Helmert basis of the zero-sum subspace, the same distribution, had a slightly
    # cheaper gradient but 1-4 divergent transitions in each of the demo's seeds 0-3 where this has none)
    z = pm.ZeroSumNormal(f"d{which}_z", sigma=1.0, dims=("setting_effect", "task"))
    return mean[None, :] + sigma * z.T


def setting_population_draws(post, spec: ModelSpec, n_task: int, seed: int) -> dict:
    """Draws of ``setting_a`` / ``setting_b`` given the sampled task mean and spread (see :func:`_setting_shifts`).

    ``setting | mean, sigma ~ Normal((m0/s0**2 + n_task * mean/sigma**2) / prec, 1/sqrt(prec))`` with
    ``prec = 1/s0**2 + n_task/sigma**2`` (``= m0`` for a fixed prior). ``post`` holds the posterior
    (``chain``, ``draw``); returns DataArrays to add to it (empty when the model samples them itself).
    """
    out = {}
    rng = np.random.default_rng([int(seed), 7411])
    for which in ("a", "b"):
        mname = f"setting_m_{which}"
        if mname not in post:
            continue
        m0, s0 = _normal_moments(spec.priors[f"setting_{which}"])
        mean = post[mname]
        sig2 = (post[f"sigma_setting_{which}"] ** 2).broadcast_like(mean)
        if s0 == 0.0:
            draw = mean * 0.0 + m0
        else:
            prec = 1.0 / s0**2 + n_task / sig2
            loc = (m0 / s0**2 + n_task * mean / sig2) / prec
            draw = loc + rng.standard_normal(mean.shape) / np.sqrt(prec)
        out[f"setting_{which}"] = draw.rename(f"setting_{which}")
    return out


def persistence_mean(spec: ModelSpec) -> float | None:
    """Prior mean of ``item_persistence`` where known in closed form (fixed or Beta), else None."""
    p = spec.priors["item_persistence"]
    if "value" in p:
        return float(p["value"])
    if p.get("dist") == "Beta" and set(p) <= {"dist", "alpha", "beta"}:
        return float(p.get("alpha", 1.0)) / (float(p.get("alpha", 1.0)) + float(p.get("beta", 1.0)))
    return None


def _item_persistence(spec: ModelSpec, free: tuple[bool, ...]):
    """Per-task share of the item spread that is persistent difficulty: sampled for tasks with per-item data
    (the same items at >= 2 models, which alone identify it); elsewhere fixed at its prior mean.

    Elsewhere it only sets the sampling noise of aggregate CE, the data cannot tell its value, and near 1 that
    noise vanishes and the CE likelihood becomes needle-sharp: on the demo's aggregate-only task divergent
    transitions sat at its upper tail. With a prior whose mean is not known in closed form it is sampled
    everywhere (:func:`forecaster.structure.resolve_structure` marks every task free).
    """
    mean = persistence_mean(spec)
    if mean is None:
        return spec.prior("item_persistence", dims="task")
    return _free_where(spec, "item_persistence", np.asarray(free, bool), mean)


def _setting_index(t: np.ndarray, s: np.ndarray, n_set: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each cell's setting shift sits in the flattened (task, setting_effect) shifts, and a 0/1 mask
    (0 for the reference setting, whose shift is zero): ``shifts.ravel()[idx] * on == [0, shifts][t, s]``."""
    return t * (n_set - 1) + np.maximum(s - 1, 0), (s > 0).astype(float)


def _take(x, idx: np.ndarray):
    """``x[idx]`` for a vector over cells; a slice (no copy, no scatter in the gradient) when ``idx`` is a
    contiguous increasing range, e.g. all cells."""
    idx = np.asarray(idx)
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return x[int(idx[0]):int(idx[0]) + len(idx)]
    return x[idx]


def _binomln(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``log(n choose k)``."""
    from scipy.special import gammaln

    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def _binomial_logp(k, p, n, binomln):
    """Binomial log-probability of ``k`` of ``n`` at ``0 < p < 1``, the coefficient ``binomln`` given."""
    return binomln + k * pt.log(p) + (n - k) * pt.log1p(-p)


def _betabinomial_logp(k, alpha, beta, n, binomln):
    """Beta-binomial log-probability of ``k`` of ``n``, the coefficient ``binomln`` given."""
    from pymc.distributions.dist_math import betaln

    return binomln + betaln(k + alpha, n - k + beta) - betaln(alpha, beta)


def _binomial_random(p, n, binomln, rng=None, size=None):
    """Draws of the counts: ``Binomial(n, p)`` (the coefficient ``binomln`` only enters the log density)."""
    return rng.binomial(np.asarray(n), np.asarray(p), size=size)


def _betabinomial_random(alpha, beta, n, binomln, rng=None, size=None):
    """Draws of the counts: ``Binomial(n, Beta(alpha, beta))``."""
    return rng.binomial(np.asarray(n), rng.beta(np.asarray(alpha), np.asarray(beta), size=size), size=size)


def _obs_dim(model: pm.Model, name: str, cells_idx: np.ndarray) -> str:
    """A dimension for an observed variable whose coordinate is the cell each observation belongs to."""
    model.add_coord(name, np.asarray(cells_idx, int))
    return name


def _data(name: str, value, dtype=np.float64):
    """A data array of the model as a named ``pm.Data`` (static shape), not a constant in its graph.

    Data values then enter the compiled log density at run time: a model of the same design (cells, masks,
    indices, spec) with other values has the same graph, and its compiled code is reused
    (:mod:`forecaster.compile_cache`). Indices and masks stay constants: they are the design.
    """
    arr = np.ascontiguousarray(value, dtype=dtype)
    return pm.Data(f"data_{name}", arr, shape=arr.shape)


def build_model(cells: CellData, spec: ModelSpec, structure=None, new: NewCells | None = None) -> pm.Model:
    """Build the hierarchical model for ``cells`` under ``spec``.

    Parameters
    ----------
    cells : CellData
        Sufficient statistics from :func:`forecaster.data.summarize`.
    spec : ModelSpec
        Priors (:func:`forecaster.spec.load_spec`).
    structure : Structure, optional
        The resolved structure (:func:`forecaster.structure.resolve_structure`, the default);
        ``structure.generative()`` builds the same model with every variable drawn from its own prior.
    new : NewCells, optional
        Models to predict: adds their latent (``mu_trend_new``, ``mu_new``), exact match (``p_new``) and, with
        a test-set size, counts (``obs_new``), for posterior predictive sampling (not for fitting).

    Returns
    -------
    pymc.Model
    """
    from .structure import resolve_structure

    sr = resolve_structure(cells, spec) if structure is None else structure
    centered_task = np.asarray(sr.centered_task, bool)
    centered_cell = np.asarray(sr.centered_cell, bool)
    n_task, n_fam, n_set = len(cells.tasks), len(cells.families), len(cells.settings)
    t, f, s = cells.cell_task, cells.cell_family, cells.cell_setting

    additive = sr.trend == "additive"
    if additive and (len(cells.cell_u) != cells.n_cells or not np.isfinite(cells.cell_u).all()):
        raise SpecError('trend = "additive" needs columns params and tokens for every row (a params term '
                        'and a tokens term); add them, or use trend = "loglinear"')
    bt = _deviation_index(cells) if sr.model_deviation else None
    split = model_deviation_split(cells, spec, bt, centered_task) if sr.deviation_split else None

    with pm.Model(coords=model_coords(cells)) as model:
        alloc = None
        a_value = b_value = alloc_value = None  # the trend's own values where the split samples moved ones
        slope_moved = None  # the split's move of the slope, where it moves one
        if split is None:
            a = _task_level(spec, "a", "mu_a", "sigma_a", centered_task)
        else:
            # the model deviations' part along the trend's own directions moves the trend (model_deviation_split)
            sigma_model = spec.prior("sigma_model")
            dev_basis, c0_move, c1_move = split
            v_model = pm.Normal("model_dev_v", 0.0, 1.0, shape=c0_move.shape[1])
            a, a_value = _task_level_moved(spec, "a", "mu_a", "sigma_a", n_task,
                                     sigma_model * pt.dot(_data("dev_move_a", c0_move), v_model))
            slope_move = sigma_model * pt.dot(_data("dev_move_b", c1_move), v_model) / 2.0
        if additive:
            b_params = _task_level(spec, "b_params", "mu_b_params", "sigma_b_params", centered_task)
            b_tokens = _task_level(spec, "b_tokens", "mu_b_tokens", "sigma_b_tokens", centered_task)
            share = spec.prior("trend_share", dims="task")
        elif split is not None and c1_move.any():
            b, b_value = _task_level_moved(spec, "b", "mu_b", "sigma_b", n_task, slope_move)
            slope_moved = slope_move
            alloc, alloc_value = _task_level_moved(spec, "alloc", "mu_alloc", "sigma_alloc", n_task, slope_move)
        else:
            b = _task_level(spec, "b", "mu_b", "sigma_b", np.asarray(sr.centered_slope, bool))

        a_value = a if a_value is None else a_value
        if additive:
            b = b_value = None  # two slopes per task instead (b_params, b_tokens)
        elif b_value is None:
            b_value = b
        a_family = ea = eb = None
        if sr.family_effects:
            sigma_family = spec.prior("sigma_family")
            a_family = pm.ZeroSumNormal("a_family", sigma=sigma_family, dims="family")
        if sr.setting_effects:
            sigma_sa = spec.prior("sigma_setting_a")
            sigma_sb = spec.prior("sigma_setting_b")
            zeros = pt.zeros((n_task, 1))
            ea = _setting_shifts(spec, "a", sigma_sa, n_task)
            eb = _setting_shifts(spec, "b", sigma_sb, n_task)
            pm.Deterministic("da", pt.concatenate([zeros, ea], axis=1), dims=("task", "setting"))
            pm.Deterministic("db", pt.concatenate([zeros, eb], axis=1), dims=("task", "setting"))
        if alloc is None and sr.allocation:
            alloc = _task_level(spec, "alloc", "mu_alloc", "sigma_alloc", centered_task)
        alloc_value = alloc if alloc_value is None else alloc_value
        ft_a = ft_b = None
        if sr.family_task_slopes:
            # each (task, family) pair seen in the data: its own slope (and intercept) around the task's line
            _, pair_task, pair_fam = family_task_pairs(cells)
            pair_key = pair_task * n_fam + pair_fam  # sorted (family_task_pairs takes np.unique)
            pair_pivot = family_task_pivots(cells)
            model.add_coord("pair", list(range(len(pair_key))))  # (task, family): forecast.family_task_offsets
            # zero mean over each task's families (the task's own slope is their average; otherwise the two trade
            # places along a ridge), and the intercepts also over each family's tasks (the family offset's)
            sigma_ftb = spec.prior("sigma_family_task_b")
            z_b = _centered_within(pm.Normal("family_task_b_z", 0.0, 1.0, dims="pair"), pair_task, n_task)
            ft_b = pm.Deterministic("family_task_b", sigma_ftb * z_b, dims="pair")
            if sr.family_task_intercepts:
                sigma_fta = spec.prior("sigma_family_task_a")
                z_a = _centered_within(pm.Normal("family_task_a_z", 0.0, 1.0, dims="pair"), pair_task, n_task)
                ft_a = pm.Deterministic("family_task_a", sigma_fta * _centered_within(z_a, pair_fam, n_fam),
                                        dims="pair")

        bend_c = None
        if sr.bend:
            # each task's log compute warped: its slope's log does a random walk over knots every bend_spacing
            # decades from c0, so the line bends (never turning back) and a forecast's spread grows with distance
            model.add_coord("bend_knot", bend_knots(sr.bend_spacing, sr.bend_knots))
            sigma_bend = spec.prior("sigma_bend")
            z_bend = pm.Normal("bend_z", 0.0, 1.0, dims=("task", "bend_knot"))
            # increments with mean -var/2: the slope's multiplier exp(v_1 + ... + v_j) has expectation 1, so the
            # bend spreads a forecast without moving its expected latent
            var = sigma_bend**2 * sr.bend_spacing
            bend_c = pm.Deterministic("bend_c", warp_weights(pt.sqrt(var) * z_bend - var / 2.0, sr.bend_knots, xp=pt),
                                      dims=("task", "bend_knot"))

        def warped(ti: np.ndarray, dx: np.ndarray, name: str):
            """Log compute from c0 as the trend sees it, and the bend's part of it: ``dx`` itself (bend 0), or
            warped by the task's bend."""
            out = _data(name, dx)
            if bend_c is None:
                return out, 0.0
            bent = (bend_c[ti] * _data(f"{name}_hinge", bend_basis(dx, sr.bend_spacing, sr.bend_knots))).sum(axis=1)
            return out + bent, bent

        def family_task_at(ti: np.ndarray, fi: np.ndarray, tag: str):
            """The pairs' intercept and slope offsets and the log compute each slope pivots on (the mean of the
            pair's computes: a pair seen at one compute leaves its slope to the prior, not to a ridge with its
            intercept and cells); a pair without data draws fresh ones from their prior and pivots on c0."""
            key = ti * n_fam + fi
            pos = np.clip(np.searchsorted(pair_key, key), 0, len(pair_key) - 1)
            unseen = pair_key[pos] != key
            pivot = np.where(unseen, cells.c0, pair_pivot[pos])
            vec_a, vec_b = ft_a, ft_b
            if unseen.any():
                uniq, inv = np.unique(ti[unseen] * n_fam + fi[unseen], return_inverse=True)
                pos[unseen] = len(pair_task) + inv.reshape(-1)
                vec_b = pt.concatenate([ft_b, sigma_ftb * pm.Normal(f"family_task_b_z{tag}", 0.0, 1.0,
                                                                    shape=len(uniq))])
                if ft_a is not None:
                    vec_a = pt.concatenate([ft_a, sigma_fta * pm.Normal(f"family_task_a_z{tag}", 0.0, 1.0,
                                                                        shape=len(uniq))])
            return (0.0 if vec_a is None else vec_a[pos]), vec_b[pos], pivot

        def trend_at(ti: np.ndarray, fi: np.ndarray, si: np.ndarray, x: np.ndarray, u: np.ndarray, tag: str = "",
                     values: bool = False):
            """The trend's log CE of the typical item for (task, family, setting) indices at log10 compute ``x``
            and log10(params / tokens) ``u``: the one predictor of the latent, for observed and new cells."""
            # under the deviation split the observed cells' trend is the moved ("effective") one, whose move is the
            # observed models' deviations along the trend; a new model gets the trend's own values (``values``)
            a_, b_, alloc_ = (a_value, b_value, alloc_value) if values else (a, b, alloc)
            intercept = a_[ti]
            slope = 0.0 if additive else b_[ti]  # additive: setting shifts of both terms' slopes, added below
            if a_family is not None:
                intercept = intercept + a_family[fi]
            if ea is not None:
                # each cell's shift by one 1-D gather from the flattened shifts (zero for the reference setting),
                # not a 2-D gather from [0, shifts] (same values: on the demo 41.6 -> 36.8 us per gradient)
                idx, on = _setting_index(ti, si, n_set)
                intercept = intercept + ea.reshape((-1,))[idx] * on
                slope = slope + eb.reshape((-1,))[idx] * on
            if additive:
                # CE = params term + tokens term, each a power law (see additive_trend); level a at the reference
                dn, dd = params_tokens_offsets(x, u, cells.c0, cells.u0)
                dn, dd = _data(f"params_rel{tag}", dn), _data(f"tokens_rel{tag}", dd)
                mu = additive_trend(intercept, share[ti], b_params[ti] + slope, b_tokens[ti] + slope, dn, dd, xp=pt)
            else:
                tau, bent = warped(ti, np.asarray(x, float) - cells.c0, f"x_rel{tag}")
                mu = intercept + slope * tau
                if slope_moved is not None and not values and bend_c is not None:
                    # the split's move is the observed models' deviations along log params, unwarped: its part of
                    # the sampled slope acts on x - c0 (so the split stays an exact change of variables)
                    mu = mu - slope_moved[ti] * bent
                if ft_b is not None:
                    off_a, off_b, pivot = family_task_at(np.asarray(ti, int), np.asarray(fi, int), tag)
                    if bend_c is None:
                        mu = mu + off_a + off_b * _data(f"x_pair{tag}", x - pivot)
                    else:  # the pair's slope pivots on its mean compute, warped like the rest of the line
                        mu = mu + off_a + off_b * (tau - warped(ti, pivot - cells.c0, f"x_pivot{tag}")[0])
            if alloc_ is not None:
                # at fixed compute, the split between parameters and tokens moves log CE too (see use_allocation)
                mu = mu + alloc_[ti] * _data(f"u_rel{tag}", u - cells.u0)
            return mu

        mu = trend_at(t, f, s, cells.cell_x, cells.cell_u)
        dev_all = None  # each (model, task) deviation, where the model has them
        if split is not None:
            if dev_basis.shape[1]:
                w_model = pm.Normal("model_dev_w", 0.0, 1.0, shape=dev_basis.shape[1])
                dev_all = sigma_model * pt.dot(_data("dev_basis", dev_basis), w_model)
                mu = mu + dev_all[bt]
        elif bt is not None:
            # checkpoints of one model share that model's deviation from the trend (per task)
            sigma_model = spec.prior("sigma_model")
            z_model = pm.Normal("model_dev_z", 0.0, 1.0, shape=int(bt.max()) + 1)
            dev_all = sigma_model * z_model
            mu = mu + dev_all[bt]
        if sr.cell_deviation:
            # each cell's log CE deviates from its trend; centered cells are sampled around the trend itself
            # (not as trend + centered deviation, which ties every well-measured cell to the trend's parameters)
            sigma_cell = spec.prior("sigma_cell")
            mu = _hier("mu_cell", mu, sigma_cell, "cell", centered_cell)
        else:
            mu = pm.Deterministic("mu_cell", mu, dims="cell")

        sigma_item = spec.prior("sigma_item", dims="task")
        if sr.spread_varies:
            spread_slope = _free_where(spec, "spread_slope", np.asarray(sr.spread_free, bool), 0.0)
            spread_ref = _data("spread_ref", cells.spread_ref)

        def spread_at(mu_, ti):
            """Item spread of cells whose typical item has log CE ``mu_``: it follows how far the task has been
            learned there (see item_spread), or is the task's constant."""
            if sr.spread_varies:
                return item_spread(mu_, sigma_item[ti], spread_slope[ti], spread_ref[ti], xp=pt)
            return sigma_item[ti]

        s_cell = spread_at(mu, t)
        var_w = s_cell**2

        # ---- per-item log-probs, through sufficient statistics
        has_items = cells.item_n > 0
        has_ce = np.isfinite(cells.ce_obs)
        has_groups = len(cells.group_task) > 0
        if has_groups or has_ce.any():
            rho = _item_persistence(spec, sr.persistence_free)
            var_noise = (1.0 - rho[t]) * var_w
        if has_items.any():
            bal = has_items & cells.item_balanced
            unb = has_items & ~cells.item_balanced
            if bal.any():
                i = np.flatnonzero(bal)
                pm.Normal(
                    "obs_item_mean_bal", mu=_take(mu, i),
                    sigma=pt.sqrt(_take(var_noise, i) / _data("item_n_bal", cells.item_n[i])),
                    observed=_data("item_mean_bal", cells.item_mean[i]), dims=_obs_dim(model, "cell_item_bal", i),
                )
            if unb.any():
                i = np.flatnonzero(unb)
                pm.Normal("obs_item_mean", mu=_take(mu, i), sigma=pt.sqrt(_take(var_w, i) / _data("item_n", cells.item_n[i])),
                          observed=_data("item_mean", cells.item_mean[i]), dims=_obs_dim(model, "cell_item", i))
                j = i[cells.item_n[i] >= 2]
                if len(j):
                    pm.Gamma(
                        "obs_item_ss", alpha=_data("item_ss_alpha", (cells.item_n[j] - 1) / 2.0),
                        beta=1.0 / (2.0 * _take(var_w, j)), observed=_data("item_ss", cells.item_ss[j] + _SS_EPS),
                        dims=_obs_dim(model, "cell_item_ss", j),
                    )
            if has_groups:
                gt = cells.group_task
                model.add_coord("item_group", np.arange(len(gt)))
                J = cells.group_df_res / cells.group_df_items + 1.0
                # the group's within-cell variance: mean of its cells' item variances
                member = (cells.cell_group[None, :] == np.arange(len(gt))[:, None]).astype(float)
                vw = pt.dot(_data("group_weights", member / member.sum(axis=1, keepdims=True)), var_w)
                v_noise = (1.0 - rho[gt]) * vw
                v_item = rho[gt] * vw
                pm.Gamma(
                    "obs_group_ss_res", alpha=_data("group_res_alpha", cells.group_df_res / 2.0),
                    beta=1.0 / (2.0 * v_noise), observed=_data("group_ss_res", cells.group_ss_res + _SS_EPS),
                    dims="item_group",
                )
                pm.Gamma(
                    "obs_group_ss_items", alpha=_data("group_items_alpha", cells.group_df_items / 2.0),
                    beta=1.0 / (2.0 * (v_noise + _data("group_j", J) * v_item)),
                    observed=_data("group_ss_items", cells.group_ss_items + _SS_EPS), dims="item_group",
                )

        # ---- aggregate mean CE: lognormal mean over items. The same test items are scored at every model, so
        # only the item-by-model part of the spread is fresh sampling noise in each cell; the persistent part is
        # common to the task's cells (absorbed by its intercept). Treating all of it as independent noise let a
        # spurious large-spread mode explain the CE data away (simulated aggregate tasks: sigma_item 2.9 vs 0.8).
        if has_ce.any():
            i = np.flatnonzero(has_ce)
            vw = _take(var_w, i)
            sd = pt.sqrt(pt.log1p(pt.expm1(_take(var_noise, i)) / _data("ce_n", cells.ce_n[i])))
            pm.Normal("obs_ce", mu=_take(mu, i) + vw / 2.0, sigma=sd, observed=_data("log_ce", np.log(cells.ce_obs[i])),
                      dims=_obs_dim(model, "cell_ce", i))

        # ---- exact-match counts: p = E_items[exp(-k CE_item)]
        has_em = cells.em_n > 0
        floor_on = np.asarray(sr.floor, bool)
        if floor_on.any():
            guess = _guess_rate(spec, floor_on)
        kappa = spec.prior("em_concentration") if sr.em_likelihood == "betabinomial" and (
            has_em.any() or (new is not None and (np.asarray(new.n_items) > 0).any())) else None

        def accuracy_at(mu_, s_, k_, ti):
            """Exact match of cells (typical item's log CE ``mu_``, item spread ``s_``, answer length ``k_``):
            the expectation over item difficulty (one Op with its derivatives, forecaster.expectation) above
            the task's floor of lucky guesses."""
            p_ = expected_exact_match(mu_, s_, k_, sr.em_expectation, sr.quadrature_nodes)
            if floor_on.any():
                g_ = guess[ti]
                p_ = g_ + (1.0 - g_) * p_
            return pt.clip(p_, 1e-12, 1.0 - 1e-12)

        def counts(name: str, p_, n_, binomln_, dims: str, observed=None):
            """Exact-match counts of ``n_`` items: Binomial or beta-binomial (the coefficient given as data)."""
            if kappa is not None:
                return pm.CustomDist(name, p_ * kappa, (1.0 - p_) * kappa, n_, binomln_, logp=_betabinomial_logp,
                                     random=_betabinomial_random, observed=observed, dtype="int64", dims=dims)
            return pm.CustomDist(name, p_, n_, binomln_, logp=_binomial_logp, random=_binomial_random,
                                 observed=observed, dtype="int64", dims=dims)

        if has_em.any():
            i = np.flatnonzero(has_em)
            p = accuracy_at(_take(mu, i), _take(pt.broadcast_to(s_cell, (cells.n_cells,)), i),
                            _data("em_k", cells.cell_k[i]), t[i])
            # Binomial / beta-binomial counts with the binomial coefficient computed once from the data, not in
            # every gradient (216 lgamma calls on the demo, a sixth of its gradient, now that counts are data)
            n_em, k_em = cells.em_n[i].astype(np.int64), cells.em_correct[i].astype(np.int64)
            count_args = (_data("em_n", n_em, np.int64), _data("em_binomln", _binomln(n_em, k_em)))
            observed = _data("em_correct", k_em, np.int64)
            counts("obs_em", p, *count_args, dims=_obs_dim(model, "cell_em", i), observed=observed)

        if new is not None:
            # models not yet observed: the same trend, a fresh deviation of the model as a whole and of its cell,
            # the same metric and, for a test set of n_items, the same count likelihood (posterior predictive)
            model.add_coord("new", np.arange(len(new.x)))
            tn = np.asarray(new.task, int)
            mu_n = pm.Deterministic("mu_trend_new", trend_at(tn, np.asarray(new.family, int),
                                                             np.asarray(new.setting, int), np.asarray(new.x, float),
                                                             np.asarray(new.u, float), "_new", values=True), dims="new")
            if bt is not None:
                mu_n = mu_n + sigma_model * pm.Normal("model_dev_new", 0.0, 1.0, dims="new")
                known = _known_deviation(cells, new)
                if (known >= 0).any():
                    # a later checkpoint of a fitted model keeps that model's deviation on the task: it sits where
                    # the observed cells do (the sampled trend plus the model's deviation), not on a fresh one
                    dev = dev_all if dev_all is not None else pt.zeros(int(bt.max()) + 1)
                    seen = trend_at(tn, np.asarray(new.family, int), np.asarray(new.setting, int),
                                    np.asarray(new.x, float), np.asarray(new.u, float), "_new_seen")
                    mu_n = pt.where(known >= 0, seen + dev[np.maximum(known, 0)], mu_n)
            if sr.cell_deviation:
                mu_n = mu_n + sigma_cell * pm.Normal("cell_dev_new", 0.0, 1.0, dims="new")
            mu_n = pm.Deterministic("mu_new", mu_n, dims="new")
            p_n = pm.Deterministic("p_new", accuracy_at(mu_n, spread_at(mu_n, tn), _data("k_new", new.k), tn),
                                   dims="new")
            n_new = np.asarray(new.n_items, np.int64)
            if (n_new > 0).all():
                counts("obs_new", p_n, _data("n_new", n_new, np.int64), _data("binomln_new", np.zeros(len(n_new))),
                       dims="new")
    return model


def _known_deviation(cells: CellData, new: NewCells) -> np.ndarray:
    """For each new cell, the index of its (base model, task) deviation when that model was fitted on that task
    (a later checkpoint of it), else -1."""
    out = np.full(len(new.x), -1, int)
    if new.base is None or len(cells.cell_base) != cells.n_cells:
        return out
    n_task = len(cells.tasks)
    keys = np.unique(cells.cell_base * n_task + cells.cell_task)
    base = np.asarray(new.base, int)
    want = base * n_task + np.asarray(new.task, int)
    pos = np.clip(np.searchsorted(keys, want), 0, len(keys) - 1)
    hit = (base >= 0) & (keys[pos] == want)
    out[hit] = pos[hit]
    return out


@dataclass
class NewCells:
    """Cells of models not yet observed, for prediction: indices into the fit's tasks, families and settings,
    log10 compute ``x``, log10(params / tokens) ``u`` (the data's median where unknown), answer length ``k``
    and test-set size ``n_items`` (0 for none: no replicated counts); ``base``: the index of each cell's model
    among the fitted base models when it is a checkpoint of one of them (-1: a new model)."""

    task: np.ndarray
    family: np.ndarray
    setting: np.ndarray
    x: np.ndarray
    u: np.ndarray
    k: np.ndarray
    n_items: np.ndarray
    base: np.ndarray | None = None
