"""The fused expected-exact-match Op: spline vs accurate integral, derivatives, numba/numpy agreement."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import integrate, stats

from forecaster.expectation import (
    HL, HV, L0, S_WIDE, V0, em_and_derivatives, expected_exact_match, g_exact, spline_g, spline_table,
)
from forecaster.quadrature import normal_nodes


def _quad_p(v, s):
    f = lambda z: np.exp(-np.exp(v + s * z) - z * z / 2) / np.sqrt(2 * np.pi)  # noqa: E731
    return integrate.quad(f, -60, 60, points=[-v / s], limit=1000, epsabs=0, epsrel=1e-13)[0]


@pytest.mark.parametrize("v, s", [(0.5, 1.0), (3.0, 2.5), (-5.0, 0.8), (10.0, 4.0), (-12.0, 3.0)])
def test_g_exact_matches_adaptive_quadrature(v, s):
    assert g_exact(v, s) == pytest.approx(np.log(-np.log(_quad_p(v, s))), abs=1e-9)


def _random_cells(n=2000, seed=0, s_max=5.0, mu_max=8.0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-12, mu_max, n)
    s = np.exp(rng.uniform(np.log(0.03), np.log(s_max), n))
    k = rng.integers(1, 20, n).astype(float)
    return mu, s, k


def test_spline_is_accurate_in_both_tails():
    mu, s, k = _random_cells()
    p, _, _ = em_and_derivatives(mu, s, k)
    g = g_exact(mu + np.log(k), s)
    assert np.max(np.abs(p - np.exp(-np.exp(g)))) < 1e-6
    # relative accuracy of -log p (what the binomial likelihood sees near p = 0 and p = 1)
    assert np.max(np.abs(spline_g(mu + np.log(k), s) - g)) < 1e-5


def _gumbel_p(v, s):
    """p = P(G - s Z > v), G a Gumbel (minimum) variable: a one-dimensional integral accurate at any spread."""
    f = lambda y: stats.norm.cdf((y - v) / s) * np.exp(y - np.exp(y))  # noqa: E731
    return integrate.quad(f, -60, 5, limit=400, epsabs=1e-14, epsrel=1e-13)[0]


@pytest.mark.parametrize("s", [2.0, 9.9, 10.0, 28.0, 100.0, 729.0])
def test_any_item_spread_is_accurate_and_monotone(s):
    """Wide spreads (past the spline's grid): p stays accurate and falls as v rises. A linear continuation in
    log s made p rise with v there (s = 729: p from 0 to 0.9 over v in [-30, 30]), a false mode that a chain
    of a multiple-choice fit found."""
    v = np.linspace(-4 * s - 3, 4 * s + 3, 121)
    p, dmu, _ = em_and_derivatives(v, np.full_like(v, s), np.ones_like(v))
    ref = np.array([_gumbel_p(x, s) for x in v])
    assert np.max(np.abs(p - ref)) < 7e-5
    assert np.all(np.diff(p) <= 0) and np.all(dmu <= 0)


def test_shipped_table_interpolates_the_exact_function():
    """The spline passes through g at the grid nodes: catches a table built by other code or for another grid."""
    coef = spline_table()
    rng = np.random.default_rng(1)
    i = rng.integers(2, coef.shape[0] - 3, 30)
    j = rng.integers(2, int((np.log(S_WIDE) - L0) / HL), 30)  # wider spreads take the expansion instead
    v, s = V0 + i * HV, np.exp(L0 + j * HL)
    np.testing.assert_allclose(spline_g(v, s), g_exact(v, s), atol=1e-9)


@pytest.mark.parametrize("method", ["spline", "gauss-hermite"])
def test_derivatives_match_finite_differences(method):
    mu, s, k = _random_cells(400, seed=2, s_max=40.0)  # includes spreads beyond the grid
    mu = np.concatenate([mu, [-40.0, 35.0]])  # and v beyond it
    s, k = np.concatenate([s, [1.0, 1.0]]), np.concatenate([k, [1.0, 1.0]])
    _, dmu, ds = em_and_derivatives(mu, s, k, method=method)
    h = 1e-6
    fd_mu = (em_and_derivatives(mu + h, s, k, method=method)[0] - em_and_derivatives(mu - h, s, k, method=method)[0]) / (2 * h)
    fd_s = (em_and_derivatives(mu, s + h, k, method=method)[0] - em_and_derivatives(mu, s - h, k, method=method)[0]) / (2 * h)
    np.testing.assert_allclose(dmu, fd_mu, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(ds, fd_s, rtol=1e-4, atol=1e-9)


def test_gauss_hermite_method_is_the_plain_quadrature():
    mu, s, k = _random_cells(300, seed=3)
    z, w = normal_nodes(24)
    ref = np.sum(w * np.exp(-k[:, None] * np.exp(mu[:, None] + s[:, None] * z)), axis=1)
    np.testing.assert_allclose(em_and_derivatives(mu, s, k, nodes=24, method="gauss-hermite")[0], ref, rtol=1e-12)


@pytest.mark.parametrize("method", ["spline", "gauss-hermite"])
@pytest.mark.parametrize("mode", ["NUMBA", "FAST_RUN"])
def test_op_value_and_gradient_in_compiled_graphs(method, mode):
    mu0, s0, k0 = _random_cells(200, seed=4, mu_max=2.0)
    if method == "spline":  # and wide spreads, where numba's loop has its own copy of the large-spread expansion
        s0 = np.concatenate([s0, [10.0, 30.0, 729.0]])
        mu0, k0 = np.concatenate([mu0, [3.0, -20.0, 100.0]]), np.concatenate([k0, [2.0, 1.0, 1.0]])
    mu, s = pt.dvector("mu"), pt.dvector("s")
    p = expected_exact_match(mu, s, k0, method)
    weights = np.linspace(0.1, 1.0, len(mu0))
    obj = pt.sum(weights * pt.log(p))
    f = pytensor.function([mu, s], [p, *pytensor.grad(obj, [mu, s])], mode=mode)
    val, gmu, gs = f(mu0, s0)
    ref, dmu, ds = em_and_derivatives(mu0, s0, k0, method=method)
    np.testing.assert_allclose(val, ref, rtol=1e-12)
    np.testing.assert_allclose(gmu, weights * dmu / ref, rtol=1e-10)
    np.testing.assert_allclose(gs, weights * ds / ref, rtol=1e-10)
