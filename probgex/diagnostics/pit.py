"""Uniformity of PIT values: the ECDF with simultaneous confidence bands (Saeilynoja, Buerkner and
Vehtari 2022, "Graphical test for discrete uniformity and its applications in goodness-of-fit
evaluation and multiple sample comparison", Stat Comput 32:32).

The ECDF is evaluated at K interior grid points; counts below the grid points are a cumulative
multinomial under uniformity, so the simultaneous band is calibrated by simulating multinomials
(cheap for millions of PIT values), adjusting the pointwise level until `prob` of the simulated ECDFs
lie inside the band at every grid point.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class Band:
    """Simultaneous band for the ECDF of n uniform values on the grid z (counts below each point)."""

    n: int
    z: np.ndarray  # (K - 1,) interior grid
    lower: np.ndarray  # (K - 1,) least allowed count below z
    upper: np.ndarray  # (K - 1,) most allowed count below z
    prob: float


@lru_cache(maxsize=64)
def simultaneous_band(n: int, n_grid: int = 100, prob: float = 0.99, n_sim: int = 2000, seed: int = 0) -> Band:
    """The band in which the ECDF of n i.i.d. uniforms lies entirely with probability `prob`."""
    if n < 1:
        raise ValueError("need at least one PIT value")
    k = min(n_grid, max(2, n))
    z = np.arange(1, k) / k
    rng = np.random.default_rng(seed)
    counts = np.cumsum(rng.multinomial(n, np.full(k, 1 / k), size=n_sim), axis=1)[:, :-1]
    # the smallest two-sided pointwise tail probability along each simulated ECDF
    tail = 2 * np.minimum(binom.cdf(counts, n, z), binom.sf(counts - 1, n, z))
    gamma = np.quantile(tail.min(axis=1), 1 - prob)
    lower = binom.ppf(gamma / 2, n, z)
    upper = binom.isf(gamma / 2, n, z)
    return Band(n=n, z=z, lower=lower, upper=upper, prob=prob)


def ecdf_counts(u: np.ndarray, z: np.ndarray, axis: int = 0) -> np.ndarray:
    """Counts of values of `u` below each grid point, along `axis` (moved to the front)."""
    u = np.moveaxis(np.asarray(u), axis, 0)
    k = len(z) + 1
    bins = np.clip((u * k).astype(np.int64), 0, k - 1)
    hist = np.stack([(bins == j).sum(0) for j in range(k)])
    return np.cumsum(hist, axis=0)[:-1]


def uniformity(u: np.ndarray, prob: float = 0.99, n_grid: int = 100) -> dict:
    """Pooled test of all values of `u`: whether the ECDF stays inside the simultaneous band, and the
    largest excursion relative to the band's half-width (> 1 means outside)."""
    u = np.ravel(u)
    band = simultaneous_band(len(u), n_grid, prob)
    c = ecdf_counts(u, band.z)
    expected = band.n * band.z
    half = np.maximum((band.upper - band.lower) / 2, 1.0)
    return {"n": int(len(u)), "prob": prob, "inside_band": bool(np.all((c >= band.lower) & (c <= band.upper))),
            "max_excursion": float(np.max(np.abs(c - expected) / half)),
            "ks_statistic": float(np.max(np.abs(c / band.n - band.z)))}


def genes_inside_band(u: np.ndarray, prob: float = 0.99, n_grid: int = 20) -> np.ndarray:
    """For PIT values (obs, gene): whether each gene's ECDF over the observations stays in the band."""
    band = simultaneous_band(u.shape[0], n_grid, prob)
    c = ecdf_counts(u, band.z, axis=0)  # (K-1, G)
    return np.all((c >= band.lower[:, None]) & (c <= band.upper[:, None]), axis=0)
