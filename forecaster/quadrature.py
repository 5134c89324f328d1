"""Expectations over item difficulty: Gauss-Hermite nodes for a standard normal (pure numpy, shared by all stages)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["normal_nodes"]


@lru_cache(maxsize=16)
def normal_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` (summing to 1) with ``E[f(Z)] ~= sum(w * f(z))`` for ``Z ~ N(0, 1)``."""
    t, w = np.polynomial.hermite.hermgauss(int(n))
    z = np.sqrt(2.0) * t
    w = w / np.sqrt(np.pi)
    z.flags.writeable = False
    w.flags.writeable = False
    return z, w
