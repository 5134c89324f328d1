"""Closed forms and monotonicity of the metric maths (numpy core)."""

import numpy as np
import pytest
import xarray as xr

from forecaster.errors import QueryError
from forecaster.metrics import crossing_log10_compute, metric_da, metric_value, observed_floor, threshold_log_ce


@pytest.mark.parametrize("k,tau", [(1, 0.5), (5, 0.5), (5, 0.9), (12, 0.1)])
def test_crossing_closed_form_without_heterogeneity(k, tau):
    # p^k with p = exp(-CE): log10 C* = c0 + (ln(-ln tau / k) - a) / b
    a, b, c0 = 0.4, -0.35, 20.0
    mu_star = threshold_log_ce(np.array([0.0]), "exact_match", tau, k)
    x = crossing_log10_compute(a, b, mu_star, c0)
    expected = c0 + (np.log(-np.log(tau) / k) - a) / b
    assert x[0] == pytest.approx(expected, abs=1e-6)


def test_exact_match_is_p_to_the_k_without_heterogeneity():
    mu = np.linspace(-4, 1, 11)
    p = np.exp(-np.exp(mu))
    np.testing.assert_allclose(metric_value(mu, 0.0, "exact_match", k=7), p**7, rtol=1e-12)
    np.testing.assert_allclose(metric_value(mu, 0.0, "token_accuracy"), p, rtol=1e-12)
    np.testing.assert_allclose(metric_value(mu, 0.0, "edit_distance", k=7), 7 * (1 - p), rtol=1e-12)
    np.testing.assert_allclose(metric_value(mu, 0.0, "pass_at_n", k=3, n=4), 1 - (1 - p**3) ** 4, rtol=1e-10)


@pytest.mark.parametrize("metric,k,n", [("exact_match", 5, 1), ("token_accuracy", 1, 1), ("pass_at_n", 4, 10),
                                        ("edit_distance", 6, 1)])
def test_item_heterogeneity_matches_monte_carlo(metric, k, n):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(400_000)
    for mu, sigma in [(-1.5, 1.0), (-0.3, 2.0), (0.5, 0.4)]:
        lc = mu + sigma * z
        ce = np.exp(lc)
        mc = {
            "exact_match": np.exp(-k * ce), "token_accuracy": np.exp(-ce), "edit_distance": k * (1 - np.exp(-ce)),
            "pass_at_n": 1 - (1 - np.exp(-k * ce)) ** n,
        }[metric].mean()
        scale = k if metric == "edit_distance" else 1.0
        assert metric_value(mu, sigma, metric, k, n) == pytest.approx(mc, abs=4e-3 * scale)


def test_threshold_lookup_inverts_the_metric():
    sig = np.array([0.0, 0.3, 0.9, 1.7, 2.6])
    for metric, tau, k in [("exact_match", 0.5, 5), ("pass_at_n", 0.8, 3), ("edit_distance", 1.0, 6)]:
        mu_star = threshold_log_ce(sig, metric, tau, k, n=5)
        back = metric_value(mu_star, sig, metric, k, n=5)
        np.testing.assert_allclose(back, tau, atol=2e-3)


def test_heterogeneity_shifts_the_crossing():
    # with spread across items, half the items are easy: exact match 0.5 needs a lower typical CE at k=5
    mu0 = threshold_log_ce(np.array([0.0]), "exact_match", 0.5, 5)[0]
    mu2 = threshold_log_ce(np.array([2.0]), "exact_match", 0.5, 5)[0]
    assert mu2 != pytest.approx(mu0, abs=0.05)


def test_metrics_monotone_in_log_ce():
    mu = np.linspace(-6, 3, 200)
    for metric in ("exact_match", "token_accuracy", "pass_at_n"):
        v = metric_value(mu, 1.0, metric, k=4, n=3)
        assert np.all(np.diff(v) <= 1e-12)
    v = metric_value(mu, 1.0, "edit_distance", k=4)
    assert np.all(np.diff(v) >= -1e-12)


def test_non_falling_trend_never_crosses():
    x = crossing_log10_compute(np.array([1.0, 1.0]), np.array([0.0, 0.1]), np.array([-1.0, -1.0]), 20.0)
    assert np.all(np.isinf(x)) and np.all(x > 0)


def test_bad_threshold_and_metric():
    with pytest.raises(QueryError, match="outside"):
        threshold_log_ce(np.array([1.0]), "exact_match", 1.5, 3)
    with pytest.raises(QueryError, match="unknown metric"):
        metric_value(0.0, 1.0, "bleu")


def test_xarray_wrapper_broadcasts_by_name():
    lc = xr.DataArray(np.zeros((2, 3)), dims=("draw", "compute"))
    sg = xr.DataArray(np.ones(2), dims="draw")
    out = metric_da(lc, sg, "exact_match", k=2)
    assert out.dims == ("draw", "compute") and out.shape == (2, 3)
    assert float(out[0, 0]) == pytest.approx(metric_value(0.0, 1.0, "exact_match", 2))


# --------------------------------------------------------------------------- exact-match floor (guess rate)


def test_floor_closed_form_without_heterogeneity():
    # an answer is right by luck with probability g on every attempt: g + (1 - g) p^k, and over n samples
    # 1 - (1 - g)^n (1 - p^k)^n; token metrics are functions of the CE itself and have no floor
    mu = np.linspace(-4, 2, 13)
    p = np.exp(-np.exp(mu))
    g, k, n = 0.2, 3, 4
    np.testing.assert_allclose(metric_value(mu, 0.0, "exact_match", k=k, floor=g), g + (1 - g) * p**k, rtol=1e-12)
    np.testing.assert_allclose(metric_value(mu, 0.0, "pass_at_n", k=k, n=n, floor=g),
                               1 - (1 - g) ** n * (1 - p**k) ** n, rtol=1e-10)
    np.testing.assert_allclose(metric_value(mu, 0.0, "pass_at_n", k=k, n=1, floor=g),
                               metric_value(mu, 0.0, "exact_match", k=k, floor=g), rtol=1e-12)
    for metric in ("token_accuracy", "edit_distance"):
        np.testing.assert_array_equal(metric_value(mu, 0.7, metric, k=k, floor=g), metric_value(mu, 0.7, metric, k=k))
    assert observed_floor(g, "pass_at_n", n) == pytest.approx(1 - (1 - g) ** n)
    # far below: the floor; far above: 1
    assert metric_value(30.0, 1.0, "exact_match", k=k, floor=g) == pytest.approx(g)


def test_floor_threshold_closed_form_and_already_reached():
    # threshold tau above the floor g: the latent part must reach (tau - g) / (1 - g)
    g = np.array([0.0, 0.1, 0.3, 0.6])
    tau, k = 0.5, 4
    mu_star = threshold_log_ce(np.zeros(4), "exact_match", tau, k, floor=g)
    latent = (tau - g[:3]) / (1 - g[:3])
    np.testing.assert_allclose(mu_star[:3], np.log(-np.log(latent) / k), atol=1e-6)
    # at or below the floor the threshold is reached at any log CE: mu* = +inf, crossing -inf ("already")
    assert mu_star[3] == np.inf
    x = crossing_log10_compute(np.full(4, 1.0), np.full(4, -0.3), mu_star, 20.0)
    assert x[3] == -np.inf and np.all(np.isfinite(x[:3]))
    # a floor moves the crossing earlier, and pass@n's floor rises with n
    assert np.all(np.diff(x[:3]) < 0)
    with_spread = threshold_log_ce(np.full(3, 1.3), "pass_at_n", 0.8, 3, n=5, floor=np.array([0.0, 0.2, 0.3]))
    back = metric_value(with_spread[:2], 1.3, "pass_at_n", 3, n=5, floor=np.array([0.0, 0.2]))
    np.testing.assert_allclose(back, 0.8, atol=2e-3)
    assert with_spread[0] < with_spread[1] < np.inf
    assert with_spread[2] == np.inf  # five lucky tries at 0.3 already pass 1 - 0.7^5 = 0.83 of items


def test_floor_out_of_range_is_refused():
    with pytest.raises(QueryError, match="floor"):
        metric_value(0.0, 1.0, "exact_match", floor=1.0)


@pytest.mark.parametrize("metric", ["exact_match", "token_accuracy", "edit_distance"])
def test_spline_metric_matches_many_node_quadrature(metric):
    """metric_value reads E[exp(-k CE)] from the spline; it agrees with 200-node Gauss-Hermite (spread <= 3)
    and is exact at zero spread."""
    rng = np.random.default_rng(5)
    mu = rng.uniform(-6, 3, (50, 3))
    sigma = np.concatenate([np.zeros((50, 1)), rng.uniform(0.01, 3, (50, 2))], axis=1)
    fast = metric_value(mu, sigma, metric, k=4)
    slow = metric_value(mu, sigma, metric, k=4, nodes=200)
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    exact0 = np.exp(-(4 if metric == "exact_match" else 1) * np.exp(mu[:, 0]))
    np.testing.assert_allclose(fast[:, 0], 4 * (1 - exact0) if metric == "edit_distance" else exact0, rtol=1e-9)


def test_bend_basis_is_zero_and_flat_at_c0_and_linear_past_the_last_knot():
    from forecaster.metrics import bend_basis, bend_knots

    knots = bend_knots(0.5, 3)
    np.testing.assert_allclose(knots, [-0.5, -1.0, -1.5, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(bend_basis(np.array([-0.4, 0.0, 0.4]), 0.5, 3), 0.0)
    h = bend_basis(np.array([2.0, -2.0]), 0.5, 3)
    np.testing.assert_allclose(h[0], [0, 0, 0, 1.5, 1.0, 0.5])
    np.testing.assert_allclose(h[1], [1.5, 1.0, 0.5, 0, 0, 0])


def test_warp_increases_and_inverts_exactly():
    """The warp of log compute from log-slope increments: identity near c0, slope exp(cumsum) past each knot,
    increasing for any increments, and warp_inverse undoes it (also on the rays beyond the last knots)."""
    from forecaster.metrics import warp, warp_inverse, warp_slope, warp_weights

    rng = np.random.default_rng(0)
    spacing, n_side = 0.5, 6
    v = rng.normal(0.0, 0.8, (50, 2 * n_side))
    c = warp_weights(v, n_side)
    dx = np.linspace(-9.0, 9.0, 3601)
    tau = warp(dx[None, :], c[:, None, :], spacing)
    assert np.all(np.diff(tau, axis=1) > 0)
    near = np.abs(dx) <= spacing
    np.testing.assert_allclose(tau[:, near], np.broadcast_to(dx[near], tau[:, near].shape), atol=1e-12)
    # past the j-th knot above c0 the slope is exp(v_1 + ... + v_j); below c0 likewise with the lower increments
    np.testing.assert_allclose(warp_slope(np.full(50, 1.25), c, spacing), np.exp(v[:, n_side:n_side + 2].sum(1)))
    np.testing.assert_allclose(warp_slope(np.full(50, -1.75), c, spacing), np.exp(v[:, :3].sum(1)))
    np.testing.assert_allclose(np.gradient(tau, dx, axis=1)[:, 1::7][:, 5:-5],
                               warp_slope(dx[None, 1::7], c[:, None, :], spacing)[:, 5:-5], rtol=0.02, atol=0.02)
    back = warp_inverse(tau, c[:, None, :], spacing)
    np.testing.assert_allclose(back, np.broadcast_to(dx, back.shape), atol=1e-9)
    assert warp_inverse(np.array([np.inf]), c[:1], spacing)[0] == np.inf


