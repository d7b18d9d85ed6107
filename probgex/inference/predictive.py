"""Predictive summaries on the host from draws of a count family's parameters, each (S, n, G).

Counts are sampled with NumPy (the family's host sampler), which is ~10x faster than JAX on CPU; PIT
and tail probabilities use the exact predictive CDF, a mixture over the S parameter draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from probgex._checks import check_levels  # noqa: F401 (imported from here too)
from probgex.models.families import family as get_family


class Draws:
    """S draws of a count family's parameters for a block of observations.

    `Draws(family, mu, *rest)` takes the parameters in the family's layout order (trailing Nones
    ignored: `Draws("nb", mu, theta, None)`); `Draws.of(family, params)` takes them by name.
    """

    def __init__(self, family, mu, *rest):
        fam = get_family(family)
        values = (mu, *rest)
        if any(v is not None for v in values[len(fam.names):]):
            raise ValueError(f"likelihood {fam.name!r} takes {len(fam.names)} parameters ({', '.join(fam.names)}), "
                             f"got {sum(v is not None for v in values)}")
        self._set(fam, dict(zip(fam.names, values)))

    @classmethod
    def of(cls, family, params: Mapping) -> Draws:
        d = cls.__new__(cls)
        d._set(get_family(family), params)
        return d

    def _set(self, fam, params: Mapping) -> None:
        self.family, self.kind = fam, fam.name
        p = fam.host(params)
        self.mu = p["mu"]
        # contiguous full-shape copies: NumPy ufuncs over broadcast views were ~30% slower (measured)
        self.params = {k: v if k == "mu" else np.ascontiguousarray(np.broadcast_to(v, self.mu.shape))
                       for k, v in p.items()}
        self._cache: dict = {}  # what a family computes once per set of draws (the NB part's P(X = 0))

    def scaled(self, factor: np.ndarray) -> Draws:
        """Multiply every mean by `factor` (broadcast to (S, n, 1)), e.g. library sizes."""
        return Draws.of(self.family, {**self.params, "mu": self.mu * factor})

    def genes(self, idx) -> Draws:
        """The draws of the genes `idx` only (last axis)."""
        return Draws.of(self.family, {k: v[..., idx] for k, v in self.params.items()})

    def log_prob(self, y: np.ndarray) -> np.ndarray:
        """log p(y | draw) per draw and entry: (S, n, G)."""
        return self.family.logpmf(y[None], self.params)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One count per draw: (S, n, G) (the families of `likelihoods`: inversion for small means,
        Gamma-Poisson for large ones)."""
        return self.family.sample_draws(rng, self.params, self._cache)

    def mean(self) -> np.ndarray:
        """Exact predictive mean (n, G): the first of `moments` without the variance's passes."""
        return self.family.mean(self.params).mean(0)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact predictive mean and sd (law of total variance over the draws): (n, G) each."""
        m, second = self.family.moments(self.params)
        mean = m.mean(0)
        return mean, np.sqrt(np.maximum(second.mean(0) - mean**2, 0.0))

    def cdf(self, y: np.ndarray) -> np.ndarray:
        """Mixture CDF P(X <= y) for counts y (n, G)."""
        return self.family.cdf(y[None], self.params).mean(0)

    def pmf(self, y: np.ndarray) -> np.ndarray:
        return self.family.pmf(y[None], self.params).mean(0)

    def below_and_at(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mixture F(y - 1) = P(X < y) and p(y) = P(X = y) per entry: everything PIT and tails need
        (for Poisson / NB / ZINB by the pmf recursion for small counts, `likelihoods.gp_mixture_below_and_at`)."""
        return self.family.mixture_below_and_at(y, self.params, self._cache)

    def randomized_pit(self, y: np.ndarray, rng: np.random.Generator, below_and_at=None) -> np.ndarray:
        """u = F(y - 1) + V p(y), V ~ U(0, 1) (Czado, Gneiting & Held 2009): uniform when calibrated."""
        below, at = self.below_and_at(y) if below_and_at is None else below_and_at
        return below + rng.uniform(size=y.shape) * at

    def tail_probabilities(self, y: np.ndarray, below_and_at=None) -> tuple[np.ndarray, np.ndarray]:
        """P(X <= y) and P(X >= y) for each entry."""
        below, at = self.below_and_at(y) if below_and_at is None else below_and_at
        return below + at, 1.0 - below


def narrow_counts(counts: np.ndarray) -> np.ndarray:
    """Integer draws as int32 where every one fits (the same values; sorting them for the intervals costs
    ~1/4 of int64's, benchmarks/README.md "Where predict's time goes"), else unchanged."""
    i32 = np.iinfo(np.int32)
    if counts.dtype.kind in "iu" and counts.dtype.itemsize > 4 and \
            (counts.size == 0 or (counts.max() <= i32.max and counts.min() >= i32.min)):
        return counts.astype(np.int32)
    return counts


def empirical_intervals(samples: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Central intervals from predictive samples (S, n, G): lower and upper, each (L, n, G)."""
    return sorted_intervals(np.sort(samples, axis=0), levels)


def sorted_intervals(sorted_samples: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Central intervals from samples sorted along axis 0 by the inverted empirical CDF (numpy's
    quantile method 'inverted_cdf'): the ceil(q S)-th smallest sample; lower and upper, each (L, ...)."""
    S = sorted_samples.shape[0]

    def at(q: float) -> np.ndarray:
        return sorted_samples[min(S - 1, max(0, int(np.ceil(q * S)) - 1))]

    return np.stack([at((1 - a) / 2) for a in levels]), np.stack([at((1 + a) / 2) for a in levels])


def inside(u: np.ndarray, level: float) -> np.ndarray:
    """Whether randomized-PIT values fall in the central interval of `level` (exact for counts)."""
    return (u >= (1 - level) / 2) & (u <= (1 + level) / 2)


def pit_coverage(u: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Share of PIT values inside the central band of each level (L,): equals the level if calibrated."""
    return np.array([np.mean(inside(np.asarray(u), a)) for a in levels])


def deciles(values: np.ndarray) -> np.ndarray:
    """Decile (0-9) of each value by rank (ties broken by position)."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return (ranks * 10 // len(values)).astype(int)
