"""Rank-normalized split R-hat and bulk/tail ESS (Vehtari et al. 2021) for many scalars at once.

The same estimators as ArviZ's ``rhat`` (``method="rank"``) and ``ess`` (``"bulk"``, ``"tail"``), computed
on one ``(chain, draw, k)`` array: ranks, normal scores and autocovariances (FFT) for all ``k`` columns in
single numpy calls, and only Geyer's truncation of the autocorrelations per column. ArviZ evaluates every
scalar apart, which cost 0.5 s per demo fit (150 scalars), a tenth of the whole fit; this takes ~20 ms.
``tests/test_convergence.py`` checks it against ArviZ.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

__all__ = ["rhat_ess", "tail_probs"]


def tail_probs() -> tuple[float, float]:
    """Tail ESS is the smaller ESS of the indicators of these two quantiles: ArviZ's, from its ``ci_prob``
    setting (0.89 by default: the 11% and 89% quantiles)."""
    try:
        from arviz_stats.validate import validate_ci_prob

        p = float(validate_ci_prob(None))
    except Exception:  # noqa: BLE001
        p = 0.89
    return min(p, 1 - p), max(p, 1 - p)


def _split(x: np.ndarray) -> np.ndarray:
    """(k, chain, draw) -> (k, 2 * chain, draw // 2): first and last halves of each chain."""
    half = x.shape[2] // 2
    return np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half:]], axis=1)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks of each scalar (average ranks for ties, Blom's offset 3/8)."""
    k, c, n = x.shape
    r = stats.rankdata(x.reshape(k, c * n), method="average", axis=1)
    return special.ndtri((r - 3 / 8) / (c * n - 2 * 3 / 8 + 1)).reshape(k, c, n)


def _rhat(x: np.ndarray) -> np.ndarray:
    n = x.shape[2]
    between = n * np.var(x.mean(axis=2), axis=1, ddof=1)
    within = np.mean(np.var(x, axis=2, ddof=1), axis=1)
    return np.sqrt((between / within + n - 1) / n)


def _ess(x: np.ndarray) -> np.ndarray:
    """ESS of each scalar of (k, chain, draw), Geyer's initial positive and monotone sequences."""
    from scipy.fft import irfft, next_fast_len, rfft

    k, c, n = x.shape
    out = np.full(k, float(c * n))
    const = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < np.finfo(float).resolution
    m = next_fast_len(2 * n)
    centred = x - x.mean(axis=2, keepdims=True)
    f = rfft(centred, n=m, axis=2)
    acov = irfft(f * np.conjugate(f), n=m, axis=2)[:, :, :n] / n  # (k, chain, lag)
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + np.var(x.mean(axis=2), axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_all = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]  # (k, lag)
    for j in np.flatnonzero(~const):
        rho = rho_all[j]
        rho_t = np.zeros(n)
        even, odd = 1.0, rho[1]
        rho_t[0], rho_t[1] = even, odd
        t = 1
        while t < n - 3 and even + odd > 0.0:
            even, odd = rho[t + 1], rho[t + 2]
            if even + odd >= 0:
                rho_t[t + 1], rho_t[t + 2] = even, odd
            t += 2
        max_t = t - 2
        if even > 0:
            rho_t[max_t + 1] = even
        t = 1
        while t <= max_t - 2:
            if rho_t[t + 1] + rho_t[t + 2] > rho_t[t - 1] + rho_t[t]:
                rho_t[t + 1] = rho_t[t + 2] = (rho_t[t - 1] + rho_t[t]) / 2.0
            t += 2
        tau = -1.0 + 2.0 * np.sum(rho_t[: max_t + 1]) + np.sum(rho_t[max_t + 1: max_t + 2])
        tau = max(tau, 1 / np.log10(c * n))
        out[j] = np.nan if np.isnan(rho_t).any() else c * n / tau
    return out


def rhat_ess(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R-hat (rank-normalized, split, max of bulk and folded), bulk ESS and tail ESS of each column.

    Parameters
    ----------
    x : ndarray, shape (chain, draw, k)
        Draws of ``k`` scalars, without NaN.

    Returns
    -------
    rhat, ess_bulk, ess_tail : ndarray, shape (k,)
        R-hat is NaN with fewer than 2 chains or 4 draws, the ESS with fewer than 4 draws.
    """
    x = np.ascontiguousarray(np.moveaxis(np.asarray(x, dtype=float), 2, 0))  # (k, chain, draw)
    k, c, n = x.shape
    nan = np.full(k, np.nan)
    if n < 4:
        return nan, nan, nan
    s = _split(x)
    z = _z_scale(s)
    if c >= 2:
        folded = np.abs(s - np.median(s.reshape(k, -1), axis=1)[:, None, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            rhat = np.maximum(_rhat(z), _rhat(_z_scale(folded)))
    else:
        rhat = nan
    bulk = _ess(z)
    flat = x.reshape(k, -1)
    tails = [_ess(_split(x <= np.quantile(flat, p, axis=1)[:, None, None]).astype(float)) for p in tail_probs()]
    return rhat, bulk, np.minimum(*tails)
