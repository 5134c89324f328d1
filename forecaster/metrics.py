"""Nonlinear metrics of the latent per-token log cross-entropy: numpy core, xarray wrapper.

For a task whose items have log per-token CE ``N(mu, sigma**2)`` (``mu`` the
typical item, ``sigma`` the item spread), the expected metric over items is

* ``token_accuracy``: ``E[exp(-CE)]`` (per-token probability of the reference token);
* ``exact_match``: ``E[exp(-k CE)]`` (all ``k`` tokens right);
* ``edit_distance``: ``k * (1 - E[exp(-CE)])`` (expected wrong tokens out of ``k``; lower is better);
* ``pass_at_n``: ``E[1 - (1 - exp(-k CE))**n]`` (exact match in at least one of ``n`` samples).

The first three are ``E[exp(-k CE)]`` (or linear in it) and are read from the
spline of :mod:`forecaster.expectation` (error < 1e-6; what the model's
likelihood uses too); ``pass_at_n`` uses Gauss-Hermite nodes.

All are monotone in ``mu``, so the compute at which a threshold is reached is
found once per item spread on a lookup table of ``mu*(sigma)`` and then in
closed form per draw: ``log10 C* = c0 + (mu* - intercept) / slope``.

**Floor** (guess rate ``g``): an answer is right by luck with probability
``g`` on every attempt, whatever the model's competence, so an item's exact
match is ``g + (1 - g) exp(-k CE)`` and, over ``n`` independent samples,
``1 - (1 - g)**n (1 - exp(-k CE))**n``. In expectation over items both are
``G + (1 - G) * latent`` with ``G = g`` for ``exact_match`` and
``G = 1 - (1 - g)**n`` for ``pass_at_n`` (:func:`observed_floor`): repeated
sampling raises the floor too. Token metrics (``token_accuracy``,
``edit_distance``) are functions of the per-token CE itself and have no floor.
A threshold at or below ``G`` is reached at any log CE (``mu* = +inf``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .errors import QueryError
from .expectation import em_value
from .quadrature import item_spread, normal_nodes

__all__ = [
    "METRICS", "item_spread", "metric_value", "threshold_log_ce", "threshold_log_ce_varying", "crossing_log10_compute",
    "crossing_log10_compute_two", "bend_knots", "bend_basis", "warp_weights", "warp",
    "warp_slope", "warp_inverse",
    "metric_da", "check_threshold", "observed_floor",
]

#: metric -> True when larger is better
METRICS = {"exact_match": True, "token_accuracy": True, "edit_distance": False, "pass_at_n": True}
NODES = 64
# metrics that are E[exp(-k CE)] (or a linear function of it): computed by the spline unless nodes are asked for
_SPLINE = ("exact_match", "token_accuracy", "edit_distance")


def _item_metric(log_ce: np.ndarray, metric: str, k: float, n: int) -> np.ndarray:
    ce = np.exp(log_ce)
    if metric == "token_accuracy":
        return np.exp(-ce)
    if metric == "exact_match":
        return np.exp(-k * ce)
    if metric == "edit_distance":
        return k * -np.expm1(-ce)
    if metric == "pass_at_n":
        return -np.expm1(n * np.log1p(-np.exp(-k * ce)))
    raise QueryError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")


def observed_floor(floor, metric: str, n: int = 1) -> np.ndarray:
    """Floor ``G`` of ``metric`` under a guess rate ``floor`` (module docstring); 0 for token metrics."""
    g = np.asarray(floor, float)
    if np.any((g < 0) | (g >= 1)):
        raise QueryError("the exact-match floor (guess rate) must lie in [0, 1)")
    if metric == "exact_match":
        return g
    if metric == "pass_at_n":
        return -np.expm1(int(n) * np.log1p(-g))
    return np.zeros_like(g)


def metric_value(log_ce, sigma, metric: str, k: float = 1.0, n: int = 1, nodes: int = NODES,
                 floor=0.0) -> np.ndarray:
    """Expected ``metric`` over items whose log CE is ``N(log_ce, sigma)``, above a guess rate ``floor``
    (exact match and pass@n only; arrays broadcast).

    Parameters
    ----------
    log_ce : array_like
        Log per-token cross-entropy (nats) of the typical item.
    sigma : array_like
        Spread of log CE across items.
    metric : str
        ``exact_match`` (all ``k`` tokens right), ``token_accuracy`` (per-token ``exp(-CE)``),
        ``edit_distance`` (expected wrong tokens out of ``k``) or ``pass_at_n`` (exact match in at least one
        of ``n`` samples).
    k : float
        Answer length in tokens.
    n : int
        Samples for ``pass_at_n``.
    nodes : int
        Quadrature nodes over items (the default uses a precomputed spline).
    floor : array_like
        Guess rate: the metric is ``floor + (1 - floor) * value`` (exact match and pass@n).

    Returns
    -------
    numpy.ndarray
        The expected metric, broadcast over the inputs.
    """
    if metric in _SPLINE and nodes == NODES:
        # E[exp(-k CE)] is the spline of forecaster.expectation (exact to 1e-6; 10x cheaper than 64 nodes)
        p = em_value(log_ce, sigma, k if metric == "exact_match" else 1.0)
        v = k * (1.0 - p) if metric == "edit_distance" else p
    else:
        z, w = normal_nodes(nodes)
        lc = np.asarray(log_ce, float)[..., None] + np.asarray(sigma, float)[..., None] * z
        with np.errstate(over="ignore", under="ignore", divide="ignore"):
            v = np.sum(_item_metric(lc, metric, k, n) * w, axis=-1)
    if metric in ("exact_match", "pass_at_n") and np.any(np.asarray(floor) != 0):
        g = observed_floor(floor, metric, n)
        v = g + (1.0 - g) * v
    return v


def check_threshold(metric: str, threshold: float, k: float) -> None:
    if metric not in METRICS:
        raise QueryError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    hi = k if metric == "edit_distance" else 1.0
    if not (0.0 < threshold < hi):
        raise QueryError(
            f"threshold {threshold:g} is outside (0, {hi:g}) for {metric}; "
            + ("give expected wrong tokens out of k" if metric == "edit_distance" else "give a fraction such as 0.5")
        )


def threshold_log_ce(sigma, metric: str, threshold: float, k: float = 1.0, n: int = 1, nodes: int = NODES,
                     grid_size: int = 257, floor=0.0) -> np.ndarray:
    """Log CE of the typical item at which the metric equals ``threshold``, for each item spread in ``sigma``.

    Bisection on a grid of item spreads, then linear interpolation (exact at
    ``sigma = 0``: ``log(-log(threshold) / k)`` for exact match). With a
    non-zero ``floor`` (per draw, broadcast with ``sigma``) a per-draw
    bisection (:func:`threshold_log_ce_varying`).
    """
    check_threshold(metric, threshold, k)
    if metric in ("exact_match", "pass_at_n") and np.any(np.asarray(floor) != 0):
        return threshold_log_ce_varying(sigma, 0.0, 0.0, metric, threshold, k, n, nodes, floor=floor)
    sigma = np.asarray(sigma, float)
    top = max(float(np.nanmax(sigma)) if sigma.size else 0.0, 1e-6) * 1.0001
    grid = np.linspace(0.0, top, grid_size)
    lo = np.full(grid_size, -60.0)
    hi = np.full(grid_size, 30.0)
    better_low = METRICS[metric]  # metric is better (larger) at low log CE
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        v = metric_value(mid, grid, metric, k, n, nodes)
        reached = v >= threshold if better_low else v <= threshold
        lo = np.where(reached, mid, lo)
        hi = np.where(reached, hi, mid)
    mu_star = 0.5 * (lo + hi)
    return np.interp(sigma, grid, mu_star)


def threshold_log_ce_varying(sigma_item, spread_slope, ref, metric: str, threshold: float, k: float = 1.0,
                             n: int = 1, nodes: int = NODES, iters: int = 34, floor=0.0) -> np.ndarray:
    """Like :func:`threshold_log_ce` when the item spread follows :func:`item_spread` (per-draw bisection);
    ``+inf`` where the threshold is at or below the floor (reached at any log CE). ``iters`` halvings of
    [-60, 30]: 34 leave 5e-9 in log CE (below 1e-7 decades of crossing compute)."""
    check_threshold(metric, threshold, k)
    sigma_item, spread_slope, ref, floor = np.broadcast_arrays(
        *(np.asarray(v, float) for v in (sigma_item, spread_slope, ref, floor)))
    lo = np.full(sigma_item.shape, -60.0)
    hi = np.full(sigma_item.shape, 30.0)
    better_low = METRICS[metric]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        v = metric_value(mid, item_spread(mid, sigma_item, spread_slope, ref), metric, k, n, nodes, floor=floor)
        reached = v >= threshold if better_low else v <= threshold
        lo = np.where(reached, mid, lo)
        hi = np.where(reached, hi, mid)
    out = 0.5 * (lo + hi)
    if better_low:
        out = np.where(observed_floor(floor, metric, n) >= threshold, np.inf, out)
    return out


def crossing_log10_compute(intercept, slope, mu_star, c0: float) -> np.ndarray:
    """``log10 C*`` where ``intercept + slope * (x - c0)`` falls to ``mu_star``; ``+inf`` when the slope is >= 0."""
    intercept, slope, mu_star = np.broadcast_arrays(*(np.asarray(v, float) for v in (intercept, slope, mu_star)))
    out = np.full(intercept.shape, np.inf)
    falling = slope < 0
    out[falling] = c0 + (mu_star[falling] - intercept[falling]) / slope[falling]
    # already past the threshold with a non-falling trend: reached at any compute
    out[~falling & (intercept <= mu_star)] = -np.inf
    return out


def bend_knots(spacing: float, n_side: int) -> np.ndarray:
    """Knots of a trend's bend (a warp of log compute), in decades of compute from ``c0``: ``n_side`` below it (nearest first), then
    ``n_side`` above."""
    k = spacing * np.arange(1, n_side + 1)
    return np.concatenate([-k, k])


def bend_basis(dx, spacing: float, n_side: int) -> np.ndarray:
    """Hinges of the bend at ``dx = log10 C - c0`` (a new last axis: the knots of :func:`bend_knots`):
    ``max(0, |dx| - |knot|)`` on the knot's side of ``c0``, so the warp is the identity near ``c0``."""
    dx = np.asarray(dx, float)[..., None]
    k = spacing * np.arange(1, n_side + 1)
    return np.concatenate([np.maximum(0.0, -dx - k), np.maximum(0.0, dx - k)], axis=-1)


def warp_weights(v, n_side: int, xp=np):
    """Hinge weights of a compute warp from its log-slope increments ``v`` (last axis: the knots of
    :func:`bend_knots`): past the ``j``-th knot on a side the warp's slope is ``exp(v_1 + ... + v_j)`` (1 between
    the nearest knots), so the warp is increasing everywhere."""
    lo = xp.exp(xp.cumsum(v[..., :n_side], axis=-1))
    hi = xp.exp(xp.cumsum(v[..., n_side:], axis=-1))
    one = xp.ones_like(lo[..., :1])
    # above c0 each hinge adds the change of slope at its knot; below c0 a hinge rises leftwards, so it subtracts
    return xp.concatenate([xp.concatenate([one, lo[..., :-1]], axis=-1) - lo,
                           hi - xp.concatenate([one, hi[..., :-1]], axis=-1)], axis=-1)


def warp(dx, c, spacing: float):
    """The warped log compute ``tau(dx) = dx + sum_j c_j * hinge_j(dx)`` (``c``: :func:`warp_weights`, last axis;
    ``dx`` broadcasts against ``c``'s other axes)."""
    n_side = np.shape(c)[-1] // 2
    return np.asarray(dx, float) + np.sum(np.asarray(c) * bend_basis(dx, spacing, n_side), axis=-1)


def warp_slope(dx, c, spacing: float):
    """``d tau / d dx`` at ``dx`` (each hinge's derivative: +1 past a knot above c0, -1 past one below)."""
    n_side = np.shape(c)[-1] // 2
    k = spacing * np.arange(1, n_side + 1)
    d = np.asarray(dx, float)[..., None]
    return 1.0 + np.sum(np.asarray(c) * np.concatenate([-(d < -k).astype(float), (d > k).astype(float)], axis=-1),
                        axis=-1)


def warp_inverse(tau, c, spacing: float):
    """``dx`` with ``warp(dx) = tau`` (the warp is increasing and piecewise linear: exact; +-inf stay)."""
    c = np.asarray(c, float)
    n_side = c.shape[-1] // 2
    tau = np.asarray(tau, float)
    c = np.broadcast_to(c, tau.shape + c.shape[-1:])
    bp = np.sort(bend_knots(spacing, n_side))
    t_bp = bp + np.einsum("...k,bk->...b", c, bend_basis(bp, spacing, n_side))
    s_left = 1.0 - c[..., :n_side].sum(-1)
    s_right = 1.0 + c[..., n_side:].sum(-1)
    finite = np.isfinite(tau)
    tf = np.where(finite, tau, 0.0)
    idx = (t_bp < tf[..., None]).sum(-1)
    j0 = np.clip(idx - 1, 0, len(bp) - 1)
    j1 = np.clip(idx, 0, len(bp) - 1)
    t0 = np.take_along_axis(t_bp, j0[..., None], -1)[..., 0]
    t1 = np.take_along_axis(t_bp, j1[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = bp[j0] + (tf - t0) / np.where(t1 > t0, t1 - t0, 1.0) * (bp[j1] - bp[j0])
        out = np.where(idx == 0, bp[0] + (tf - t_bp[..., 0]) / s_left,
                       np.where(idx == len(bp), bp[-1] + (tf - t_bp[..., -1]) / s_right, inside))
    return np.where(finite, out, tau)


def crossing_log10_compute_two(i1, s1, i2, s2, mu_star, c0: float, x_max: float, lo: float = -60.0,
                               iters: int = 60) -> np.ndarray:
    """``log10 C*`` where ``logaddexp(i1 + s1 * dx, i2 + s2 * dx)`` (``dx = x - c0``; an additive trend) first
    falls to ``mu_star``; ``+inf`` when it does not below ``x_max``, ``-inf`` when it is there already at
    ``dx = lo``.

    The curve is convex in ``dx``: it falls until its minimum (``+inf`` when both slopes are negative; where
    ``s1 * exp(i1 + s1 dx) + s2 * exp(i2 + s2 dx) = 0`` when they differ in sign), so the first crossing is the
    one root on the falling side, found by bisection (``iters`` halvings of ``[lo, min(argmin, x_max - c0)]``;
    60 give ~1e-16 decades).
    """
    i1, s1, i2, s2, m = np.broadcast_arrays(*(np.asarray(v, float) for v in (i1, s1, i2, s2, mu_star)))

    def f(dx):
        return np.logaddexp(i1 + s1 * dx, i2 + s2 * dx) - m

    hi_max = x_max - c0 + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        opposite = (s1 * s2 < 0)
        num = np.log(np.abs(np.where(opposite, s1, 1.0))) - np.log(np.abs(np.where(opposite, s2, 1.0))) + i1 - i2
        argmin = np.where(opposite, num / np.where(opposite, s2 - s1, 1.0), np.inf)
    argmin = np.where((s1 >= 0) & (s2 >= 0), lo, argmin)  # nowhere falling: the lowest point is at lo
    hi = np.minimum(argmin, hi_max)
    lo_a = np.full(m.shape, float(lo))
    f_lo, f_hi = f(lo_a), f(hi)
    a, b = lo_a.copy(), hi.copy()
    for _ in range(iters):
        mid = 0.5 * (a + b)
        below = f(mid) <= 0
        b = np.where(below, mid, b)
        a = np.where(below, a, mid)
    out = c0 + b
    out = np.where(f_hi > 0, np.inf, out)
    out = np.where(f_lo <= 0, -np.inf, out)
    return out


def metric_da(log_ce: xr.DataArray, sigma: xr.DataArray, metric: str, k: float = 1.0, n: int = 1,
              floor: xr.DataArray | float = 0.0) -> xr.DataArray:
    """xarray wrapper of :func:`metric_value` (dims broadcast by name)."""
    lc, sg, fl = xr.broadcast(log_ce, sigma, xr.DataArray(floor) if np.isscalar(floor) else floor)
    return xr.DataArray(metric_value(lc.values, sg.values, metric, k, n, floor=fl.values), coords=lc.coords,
                        dims=lc.dims, name=metric)
