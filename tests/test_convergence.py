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


def test_an_unconverged_fit_tries_its_remedy_and_says_so(demo_table):
    """Without tuning the chains do not agree: the fit is repeated once with longer tuning and smaller steps,
    the better fit is kept, and the notes say what happened (none of this with remedies off)."""
    from forecaster.fit import REMEDY_MIN_DRAWS, fit

    lines = []
    res = fit(demo_table, seed=1, draws=REMEDY_MIN_DRAWS, tune=0, chains=2, status=lines.append)
    notes = [n for n in res.diagnostics.notes if "refitted with" in n]
    assert len(notes) == 1 and notes[0].startswith("not converged with 0 tuning steps"), res.diagnostics.notes
    assert any(line.startswith("not converged") for line in lines)
    assert f"{2 * REMEDY_MIN_DRAWS} draws" in notes[0]  # untuned chains explore little: the remedy draws twice as many
    if "first fit is kept" not in notes[0]:
        assert res.options["tune"] == 1000 and res.options["target_accept"] == 0.99
        assert res.options["draws"] == 2 * REMEDY_MIN_DRAWS  # few effective draws: twice the draws too
    off = fit(demo_table, seed=1, draws=REMEDY_MIN_DRAWS, tune=0, chains=2, remedies=False)
    assert not any("refitted" in n for n in off.diagnostics.notes) and off.options["tune"] == 0
