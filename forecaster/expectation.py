"""Expected exact match over item difficulty as one fused pytensor Op (model stage).

For cells whose items have log per-token CE ``N(mu, s**2)`` the expected exact
match over ``k`` tokens is ``p = E[exp(-k exp(mu + s Z))]``, ``Z ~ N(0, 1)``:
a function of two numbers, ``v = mu + log k`` and ``s``. Two ways to compute it:

* ``"spline"`` (default): ``g = log(-log p)`` is a smooth function of
  ``(v, log s)`` (``-> v + s**2 / 2`` as ``p -> 1``; slowly growing as
  ``p -> 0``), tabulated once on a grid by a mode-centred trapezoid rule with
  801 points (:func:`g_exact`; agrees with adaptive quadrature to ~1e-13) and
  interpolated by a cubic B-spline. Interpolation error in ``g``: median 3e-9,
  at most ~4e-5 in ``p`` (``s`` up to 11; 1e-8 below 8); ``p = exp(-exp(g))`` keeps its relative
  accuracy in both tails. Outside the grid in ``v`` (beyond [-30, 30]) ``g``
  continues linearly from the edge (exact as ``p -> 1``); below ``s = 0.02``
  the spread is taken as 0.02. From ``s = 10`` up, ``p`` is instead the
  large-spread expansion (:func:`_wide`; error < 2e-5 in ``p``, falling as
  ``s**-3``), so the spread has no upper limit: a linear continuation in
  ``log s`` made ``p`` rise with ``v`` past the grid, a false mode.
* ``"gauss-hermite"``: ``nodes``-point Gauss-Hermite quadrature (error ~5e-4
  in ``p`` at ``s = 2.2`` with 24 nodes).

:class:`ExpectedExactMatch` returns ``p`` and its derivatives in ``mu`` and
``s`` from one loop (numba for nutpie, numpy elsewhere, JAX for numpyro); the
gradient graph only multiplies by them. Measured on the demo (72 cells):
pytensor's elementwise Gauss-Hermite graph (24 nodes) was 43 of 60 us per
gradient; fused, 28 us; the spline about 1 us.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import grad_not_implemented
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from .quadrature import normal_nodes

__all__ = ["ExpectedExactMatch", "expected_exact_match", "em_and_derivatives", "em_value", "g_exact", "spline_g", "spline_table", "METHODS"]

METHODS = ("spline", "gauss-hermite")
#: Bump when the computation changes (part of numba's cache key).
_VERSION = 4
_TABLE = Path(__file__).with_name("em_spline.npz")
# grid of the spline: v = mu + log k, and log s
V0, V1, HV = -30.0, 30.0, 0.2
L0, L1, HL = float(np.log(0.02)), float(np.log(30.0)), 0.05
_TRAPEZOID_POINTS = 801
# from this item spread up, the large-spread expansion replaces the spline
S_WIDE = 10.0
# exp(-exp(y)) is the survival function of a Gumbel (minimum) variable G, so p = P(G - s Z > v): G - s Z has
# mean -gamma, variance s**2 + pi**2 / 6 and third cumulant -2 zeta(3); its Cornish-Fisher normal form
_GAMMA = 0.5772156649015329
_GUMBEL_VAR = np.pi**2 / 6.0
_SKEW = -2.0 * 1.2020569031595942 / 6.0  # third cumulant / 6


def g_exact(v, s, points: int = _TRAPEZOID_POINTS, half_width: float = 30.0) -> np.ndarray:
    """``log(-log p)`` with ``p = E[exp(-exp(v + s Z))]``, accurately (numpy, broadcasting; ``s > 0``).

    Trapezoid rule in ``z = z* + sd * t``, ``t`` in ``[-half_width, half_width]``,
    around the mode ``z* = -W(s**2 e**v) / s`` of the integrand (``W``: Lambert
    W) with its curvature scale ``sd``; ``log p`` by log-sum-exp (no
    underflow) and ``1 - p`` summed directly where ``p`` is near 1.
    """
    from scipy import special

    v, s = np.broadcast_arrays(np.asarray(v, float), np.asarray(s, float))
    log_a = 2.0 * np.log(s) + v
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = np.real(special.lambertw(np.exp(np.minimum(log_a, 700.0))))
        y = np.where(log_a > 700.0, log_a - np.log(np.maximum(log_a, 1.0)), y)
    for _ in range(3):
        y = y - (y - np.exp(log_a - y)) / (1.0 + y)
    z_star = -y / s
    sd = 1.0 / np.sqrt(1.0 + y)
    t = np.linspace(-half_width, half_width, int(points))
    h = t[1] - t[0]
    z = z_star[..., None] + sd[..., None] * t
    e = np.exp(np.minimum(v[..., None] + s[..., None] * z, 700.0))
    log_phi = -0.5 * z * z - 0.5 * np.log(2.0 * np.pi)
    terms = log_phi - e
    m = terms.max(-1, keepdims=True)
    log_p = (m + np.log(np.sum(np.exp(terms - m), -1, keepdims=True)))[..., 0] + np.log(h * sd)
    q = np.sum(np.exp(log_phi) * -np.expm1(-e), -1) * h * sd  # 1 - p, accurate where p is near 1
    with np.errstate(invalid="ignore", divide="ignore"):
        neg_log_p = np.where(log_p > -0.5, -np.log1p(-np.minimum(q, 0.5)), -log_p)
    return np.log(neg_log_p)


def build_table(path: Path | str = _TABLE) -> Path:
    """Tabulate ``g`` on the grid and store its B-spline coefficients (``python -m forecaster.expectation``)."""
    from scipy import ndimage

    vg = np.arange(V0, V1 + HV / 2, HV)
    lg = np.arange(L0, L1 + HL / 2, HL)
    g = np.stack([g_exact(v, np.exp(lg)) for v in vg])
    coef = ndimage.spline_filter(g, order=3, mode="nearest")
    np.savez_compressed(path, coef=coef, grid=np.array([V0, V1, HV, L0, L1, HL]), points=_TRAPEZOID_POINTS)
    return Path(path)


@lru_cache(maxsize=1)
def spline_table() -> np.ndarray:
    """The shipped B-spline coefficients of ``g`` over (v, log s)."""
    with np.load(_TABLE) as f:
        if not np.allclose(f["grid"], [V0, V1, HV, L0, L1, HL]):
            raise RuntimeError(f"{_TABLE} was built for another grid; rebuild it: python -m forecaster.expectation")
        coef = np.ascontiguousarray(f["coef"], dtype=float)
    coef.flags.writeable = False
    return coef


@lru_cache(maxsize=1)
def table_id() -> str:
    """Short hash of the shipped table (part of the Op's identity, so caches never mix tables)."""
    return hashlib.sha256(spline_table().tobytes()).hexdigest()[:16]


def _bspline(t, xp):
    """Uniform cubic B-spline weights and their derivatives at fractions ``t`` (last axis: 4 knots)."""
    u = 1.0 - t
    w = xp.stack([u**3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=-1) / 6.0
    d = xp.stack([-(u**2), 3 * t**2 - 4 * t, -3 * t**2 + 2 * t + 1, t**2], axis=-1) / 2.0
    return w, d


def spline_g(v, s) -> np.ndarray:
    """The spline's ``g = log(-log p)`` at ``v = mu + log k`` and ``s`` (numpy; for checks)."""
    v, s = (np.ravel(a) for a in np.broadcast_arrays(np.asarray(v, float), np.asarray(s, float)))
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        return _spline_em(v, s, np.ones_like(v), spline_table(), np, g_only=True)


def _wide(v, s, xp, erfc):
    """``(p, dp/dv, dp/ds)`` for a wide item spread (``s >= S_WIDE``): ``p = Phi(-u)`` with
    ``u = w - A (w**2 - 1)``, ``w = (v + gamma) / sigma``, ``sigma**2 = s**2 + pi**2 / 6``, ``A`` the skewness
    term (``w**2`` capped at 900, where ``p`` is 0 or 1 anyway, so ``u`` stays increasing in ``v``)."""
    sig2 = s * s + _GUMBEL_VAR
    sig = xp.sqrt(sig2)
    w = (v + _GAMMA) / sig
    a = _SKEW / (sig2 * sig)
    inside = w * w < 900.0
    w2 = xp.where(inside, w * w, 900.0)
    u = w - a * (w2 - 1.0)
    p = 0.5 * erfc(u / np.sqrt(2.0))
    phi = xp.exp(-0.5 * u * u) / np.sqrt(2.0 * np.pi)
    du_dw = 1.0 - xp.where(inside, 2.0 * a * w, 0.0)
    du_ds = du_dw * (-w * s / sig2) + (w2 - 1.0) * 3.0 * a * s / sig2
    return p, -phi * du_dw / sig, -phi * du_ds


def _erfc(xp):
    if xp is np:
        from scipy.special import erfc

        return erfc
    import jax.scipy.special as jsp

    return jsp.erfc


def _spline_em(mu, s, k, coef, xp, g_only=False, p_only=False):
    """``(p, dp/dmu, dp/ds)`` from the spline of ``g`` (numpy or jax.numpy; vectors)."""
    nv, nl = coef.shape
    v = mu + xp.log(k)
    wide = s >= S_WIDE
    ls = xp.log(xp.clip(s, np.exp(L0), S_WIDE))  # wider spreads take the expansion below
    x = (v - V0) / HV
    y = (ls - L0) / HL
    # evaluate inside [1, n - 2] (all four knots on the grid), continue linearly beyond
    xc = xp.clip(x, 1.0, nv - 2.0)
    yc = xp.clip(y, 1.0, nl - 2.0)
    i = xp.clip(xp.floor(xc), 1, nv - 3).astype(int)
    j = xp.clip(xp.floor(yc), 1, nl - 3).astype(int)
    wx, dx = _bspline(xc - i, xp)
    wy, dy = _bspline(yc - j, xp)
    off = xp.arange(-1, 3)
    c = coef[(i[:, None] + off)[:, :, None], (j[:, None] + off)[:, None, :]]  # (n, 4, 4)
    # contract over the log-s knots first (two batched mat-vecs), then over the v knots
    cwy = (c * wy[:, None, :]).sum(-1)
    cdy = (c * dy[:, None, :]).sum(-1)
    g = (wx * cwy).sum(-1)
    gx = (dx * cwy).sum(-1)
    gy = (wx * cdy).sum(-1)
    # beyond the grid: first-order continuation from the edge, with its exact derivatives
    g = g + gx * (x - xc) + gy * (y - yc)
    pw, dpw_dv, dpw_ds = _wide(v, xp.where(wide, s, S_WIDE), xp, _erfc(xp))
    if g_only:
        return xp.where(wide, xp.log(-xp.log(pw)), g)
    if p_only:
        return xp.where(wide, pw, xp.exp(-xp.exp(g)))
    gxy = (dx * cdy).sum(-1)
    gx, gy = gx + xp.where(x == xc, gxy * (y - yc), 0.0), gy + xp.where(y == yc, gxy * (x - xc), 0.0)
    n = xp.exp(g)  # -log p
    p = xp.exp(-n)
    dp_dv = -p * n * gx / HV
    dp_dls = -p * n * gy / HL
    return (xp.where(wide, pw, p), xp.where(wide, dpw_dv, dp_dv),
            xp.where(wide, dpw_ds, xp.where(s > np.exp(L0), dp_dls / s, 0.0)))


def em_and_derivatives(mu, s, k, nodes: int = 24, method: str = "spline"):
    """``p = E[exp(-k exp(mu + s Z))]`` and ``dp/dmu``, ``dp/ds`` (numpy; broadcast vectors)."""
    mu, s, k = (np.ravel(a) for a in np.broadcast_arrays(*(np.asarray(a, float) for a in (mu, s, k))))
    if method == "spline":
        with np.errstate(over="ignore", under="ignore"):
            return _spline_em(mu, s, k, spline_table(), np)
    z, w = normal_nodes(nodes)
    with np.errstate(over="ignore", under="ignore"):
        e = k[:, None] * np.exp(mu[:, None] + s[:, None] * z)
        f = w * np.exp(-e)
    fe = f * e
    return f.sum(-1), -fe.sum(-1), -(fe * z).sum(-1)


def em_value(mu, s, k=1.0) -> np.ndarray:
    """``E[exp(-k exp(mu + s Z))]`` by the spline, for arrays of any (broadcast) shape (numpy)."""
    mu, s, k = np.broadcast_arrays(*(np.asarray(a, float) for a in (mu, s, k)))
    mu_shape = mu.shape
    if mu.size == 0:
        return np.zeros(mu_shape)
    mu, s, k = mu.ravel(), s.ravel(), k.ravel()
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        p = _spline_em(mu, s, k, spline_table(), np, p_only=True)
        narrow = s < np.exp(L0)  # below the grid: quadrature, exact as s -> 0
        if narrow.any():
            p[narrow] = em_and_derivatives(mu[narrow], s[narrow], k[narrow], method="gauss-hermite")[0]
    return p.reshape(mu_shape)


class ExpectedExactMatch(Op):
    """``(p, dp/dmu, dp/ds)`` of the expected exact match for vectors ``mu``, ``s``, ``k`` (gradient via outputs)."""

    # ``code`` identifies the computation (version and table contents): compiled code is cached by props
    __props__ = ("method", "nodes", "code")

    def __init__(self, method: str = "spline", nodes: int = 24):
        if method not in METHODS:
            raise ValueError(f"unknown expectation method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.nodes = int(nodes)
        self.code = f"v{_VERSION}-{table_id()}" if method == "spline" else f"v{_VERSION}"

    def make_node(self, mu, s, k):
        ins = [pt.as_tensor_variable(v).astype("float64") for v in (mu, s, k)]
        if any(v.ndim != 1 for v in ins):
            raise ValueError("ExpectedExactMatch takes vectors mu, s, k")
        return Apply(self, ins, [pt.dvector() for _ in range(3)])

    def perform(self, node, inputs, output_storage):
        for store, val in zip(output_storage, em_and_derivatives(*inputs, nodes=self.nodes, method=self.method)):
            store[0] = np.asarray(val, dtype=float)

    def infer_shape(self, node, shapes):
        return [shapes[0]] * 3

    def pullback(self, inputs, outputs, cotangents):
        from pytensor.gradient import DisconnectedType

        g_p, g_dmu, g_ds = cotangents
        if not (isinstance(g_dmu.type, DisconnectedType) and isinstance(g_ds.type, DisconnectedType)):
            raise NotImplementedError("second derivatives of ExpectedExactMatch are not implemented")
        _, dmu, ds = outputs
        return [g_p * dmu, g_p * ds, grad_not_implemented(self, 2, inputs[2])]


def expected_exact_match(mu, s, k, method: str = "spline", nodes: int = 24):
    """Symbolic ``E[exp(-k exp(mu + s Z))]`` for vectors (pytensor), differentiable in ``mu`` and ``s``."""
    return ExpectedExactMatch(method, nodes)(mu, s, k)[0]


def _register_numba() -> None:
    from pytensor.link.numba.dispatch import basic as numba_basic
    from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

    @register_funcify_default_op_cache_key(ExpectedExactMatch)
    def numba_funcify_ExpectedExactMatch(op, node=None, **kwargs):
        if op.method == "gauss-hermite":
            z, w = (np.array(a) for a in normal_nodes(op.nodes))
            n_nodes = len(z)

            @numba_basic.numba_njit
            def gauss_hermite(mu, s, k):
                n = mu.shape[0]
                p, dmu, ds = np.empty(n), np.empty(n), np.empty(n)
                for i in range(n):
                    acc = acc_mu = acc_s = 0.0
                    for j in range(n_nodes):
                        e = k[i] * np.exp(mu[i] + s[i] * z[j])
                        f = w[j] * np.exp(-e)
                        acc += f
                        acc_mu -= f * e
                        acc_s -= f * e * z[j]
                    p[i], dmu[i], ds[i] = acc, acc_mu, acc_s
                return p, dmu, ds

            return gauss_hermite, _VERSION

        coef = spline_table()
        nv, nl = coef.shape
        s_min = float(np.exp(L0))
        s_wide, gamma, gvar, skew = S_WIDE, _GAMMA, _GUMBEL_VAR, _SKEW
        sqrt2, sqrt2pi = float(np.sqrt(2.0)), float(np.sqrt(2.0 * np.pi))

        @numba_basic.numba_njit
        def weights(t, w, d):
            u = 1.0 - t
            w[0] = u * u * u / 6.0
            w[1] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0
            w[2] = (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0
            w[3] = t * t * t / 6.0
            d[0] = -u * u / 2.0
            d[1] = (3.0 * t * t - 4.0 * t) / 2.0
            d[2] = (-3.0 * t * t + 2.0 * t + 1.0) / 2.0
            d[3] = t * t / 2.0

        @numba_basic.numba_njit
        def spline(mu, s, k):
            n = mu.shape[0]
            p, dmu, ds = np.empty(n), np.empty(n), np.empty(n)
            wx, dx, wy, dy = np.empty(4), np.empty(4), np.empty(4), np.empty(4)
            for r in range(n):
                if s[r] >= s_wide:  # the large-spread expansion (_wide)
                    sig2 = s[r] * s[r] + gvar
                    sig = np.sqrt(sig2)
                    w = (mu[r] + np.log(k[r]) + gamma) / sig
                    a = skew / (sig2 * sig)
                    w2, du_dw = 900.0, 1.0
                    if w * w < 900.0:
                        w2, du_dw = w * w, 1.0 - 2.0 * a * w
                    u = w - a * (w2 - 1.0)
                    phi = np.exp(-0.5 * u * u) / sqrt2pi
                    p[r] = 0.5 * math.erfc(u / sqrt2)
                    dmu[r] = -phi * du_dw / sig
                    ds[r] = -phi * (du_dw * (-w * s[r] / sig2) + (w2 - 1.0) * 3.0 * a * s[r] / sig2)
                    continue
                x = (mu[r] + np.log(k[r]) - V0) / HV
                y = (np.log(max(s[r], s_min)) - L0) / HL
                xc = min(max(x, 1.0), nv - 2.0)
                yc = min(max(y, 1.0), nl - 2.0)
                i = min(int(np.floor(xc)), nv - 3)
                j = min(int(np.floor(yc)), nl - 3)
                weights(xc - i, wx, dx)
                weights(yc - j, wy, dy)
                g = gx = gy = gxy = 0.0
                for a in range(4):
                    for b in range(4):
                        c = coef[i - 1 + a, j - 1 + b]
                        g += wx[a] * c * wy[b]
                        gx += dx[a] * c * wy[b]
                        gy += wx[a] * c * dy[b]
                        gxy += dx[a] * c * dy[b]
                g += gx * (x - xc) + gy * (y - yc)
                if x == xc:
                    gx += gxy * (y - yc)
                if y == yc:
                    gy += gxy * (x - xc)
                nl_p = np.exp(g)
                pr = np.exp(-nl_p)
                p[r] = pr
                dmu[r] = -pr * nl_p * gx / HV
                ds[r] = -pr * nl_p * gy / HL / s[r] if s[r] > s_min else 0.0
            return p, dmu, ds

        return spline, _VERSION


def _register_jax() -> None:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:  # JAX is optional (the numpyro sampler)
        return

    @jax_funcify.register(ExpectedExactMatch)
    def jax_funcify_ExpectedExactMatch(op, **kwargs):
        if op.method == "spline":
            coef = jnp.asarray(spline_table())
            return lambda mu, s, k: _spline_em(mu, s, k, coef, jnp)
        z, w = (jnp.asarray(v) for v in normal_nodes(op.nodes))

        def gauss_hermite(mu, s, k):
            e = k[:, None] * jnp.exp(mu[:, None] + s[:, None] * z)
            f = w * jnp.exp(-e)
            fe = f * e
            return f.sum(-1), -fe.sum(-1), -(fe * z).sum(-1)

        return gauss_hermite


_register_numba()
_register_jax()

if __name__ == "__main__":
    print(f"wrote {build_table()}")
