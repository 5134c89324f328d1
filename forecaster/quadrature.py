"""Expectations over item difficulty: Gauss-Hermite nodes for a standard normal (pure numpy, shared by all stages)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["normal_nodes", "item_spread"]


@lru_cache(maxsize=16)
def normal_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` (summing to 1) with ``E[f(Z)] ~= sum(w * f(z))`` for ``Z ~ N(0, 1)``."""
    t, w = np.polynomial.hermite.hermgauss(int(n))
    z = np.sqrt(2.0) * t
    w = w / np.sqrt(np.pi)
    z.flags.writeable = False
    w.flags.writeable = False
    return z, w


def item_spread(log_ce, sigma_item, spread_slope, ref, xp=np):
    """Spread of items' log CE at a cell whose typical item has log CE ``log_ce``.

    ``sigma_item`` at the task's reference point ``ref`` (a fixed log CE: the
    task's median observed one; not a parameter, which would trade off
    against ``sigma_item`` and the trend's intercept);
    with ``h = spread_slope * (ref - log_ce)`` (how much better than the
    reference the cell is, scaled) the spread is ``sigma_item * (1 + h)`` as
    the task is learned (h > 0: hard items improve more slowly than easy ones,
    so the spread grows linearly, like items with their own slopes) and
    ``sigma_item * exp(h)`` below the reference (positive, smooth at h = 0).
    Measured on Pythia LAMBADA (aggregate CE with accuracy): the spread implied
    per checkpoint grows from 1.2 (70M) to 2.1 (12B), linearly in log CE.
    ``xp`` is ``numpy`` or ``pytensor.tensor``.
    """
    h = spread_slope * (ref - log_ce)
    return sigma_item * (xp.exp(xp.minimum(h, 0.0)) + xp.maximum(h, 0.0))
