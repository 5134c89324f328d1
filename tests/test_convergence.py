"""The vectorized R-hat / ESS against ArviZ's own estimators."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest
import xarray as xr

from forecaster.convergence import rhat_ess


def _chains(c: int, n: int, k: int, seed: int = 1) -> np.ndarray:
    """AR(1) chains with autocorrelations from 0 to 0.97, some columns with one shifted chain, one with ties."""
    rng = np.random.default_rng(seed)
    phi = np.linspace(0.0, 0.97, k)
    x = np.zeros((c, n, k))
    e = rng.standard_normal((c, n, k))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    x[min(1, c - 1)] += 1.0 * (np.arange(k) % 3 == 0)
    x[..., 5] = np.round(x[..., 5])
    return x


def _arviz(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ds = xr.Dataset({"v": (("chain", "draw", "k"), x)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (az.rhat(ds)["v"].values, az.ess(ds, method="bulk")["v"].values,
                az.ess(ds, method="tail")["v"].values)


@pytest.mark.parametrize("c,n", [(4, 400), (2, 101), (1, 300)])
def test_matches_arviz(c, n):
    x = _chains(c, n, 24)
    rhat, bulk, tail = rhat_ess(x)
    r_az, b_az, t_az = _arviz(x)
    np.testing.assert_allclose(bulk, b_az, rtol=1e-10)
    np.testing.assert_allclose(tail, t_az, rtol=1e-10)
    if c >= 2:
        np.testing.assert_allclose(rhat, r_az, rtol=1e-12)
        assert rhat[0] > 1.05  # a shifted chain shows
        assert n < 400 or rhat[1] < 1.01  # a mixing one does not
    else:
        assert np.isnan(rhat).all()


def test_constant_column_and_short_chains():
    x = _chains(4, 200, 6)
    x[..., 2] = 3.0
    rhat, bulk, tail = rhat_ess(x)
    assert bulk[2] == tail[2] == 800  # as ArviZ: a constant has the full sample size
    assert np.isfinite(bulk).all()
    assert all(np.isnan(v).all() for v in rhat_ess(x[:, :3]))
