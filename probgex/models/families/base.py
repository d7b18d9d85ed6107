"""The count-family protocol, its parameter layout, and the defaults a family may inherit.

A family's parameters travel as a mapping name -> array (a JAX pytree in the stories, float64 NumPy
arrays on the host), broadcasting against each other and the counts. Every family's first parameter
is the mean head `mu`; the others say by their role how a story supplies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

MEAN = "mean"  # mu > 0: the story's mean (library size x expression); always the first parameter
DISPERSION = "dispersion"  # an NB concentration theta > 0 per gene (and dispersion group)
LOGIT = "logit"  # a real number per entry (the GLM: per gene; the cVAE: a decoder head)

Params = Mapping[str, Any]


class Param(NamedTuple):
    """One parameter of a family's layout.

    A "dispersion" parameter is the GLM's per-gene log(1 / theta) under the mean-dispersion trend
    prior, and the cVAE's point-estimated `log_theta`. A "logit" parameter is the GLM's per-gene value
    with prior N(prior[0], prior[1]^2) whose guide starts at N(start, start_scale^2), and a decoder
    head of the cVAE.
    """

    name: str
    role: str
    prior: tuple[float, float] = (0.0, 1.0)
    start: float = 0.0
    start_scale: float = 1.0


class CountFamily(Protocol):
    """What stories, prediction and calibration need of a count law."""

    name: str  # the registry name, the spec's `likelihood`
    params: tuple[Param, ...]  # the layout, `mu` first
    count_split: bool  # log_prob(count_term=False) omits nb_count_term(x, theta) (0 at x <= 1)
    mean_family: str  # the family of the stage-1 GLM a residual model of this law is built around
    nb_trend: bool  # the GLM places its NB mean-dispersion trend on the counts before SVI (and holds it)
    # Poisson counts over a Gamma rate (concentration `theta`, if in the layout) with an optional zero gate
    # (`gate`): the Gamma-Poisson kernels apply, and `explain` splits its noise into the two layers
    gamma_poisson: bool

    # JAX (float32-friendly, jittable, broadcasting): the fit's objective
    def log_prob(self, x, p: Params, *, normalized: bool = True, log_mu=None, count_term: bool = True): ...
    def distribution(self, p: Params, *, normalized: bool = True, log_mu=None, count_term: bool = True): ...

    # host (NumPy / SciPy, float64): prediction and calibration
    def logpmf(self, x, p: Params) -> np.ndarray: ...
    def pmf(self, x, p: Params) -> np.ndarray: ...
    def cdf(self, x, p: Params) -> np.ndarray: ...
    def zero_prob(self, p: Params) -> np.ndarray: ...
    def sample(self, rng: np.random.Generator, p: Params, *, size=None) -> np.ndarray: ...
    def mean(self, p: Params) -> np.ndarray: ...
    def moments(self, p: Params) -> tuple[np.ndarray, np.ndarray]: ...  # E[X], E[X^2] per entry
    # mixtures over parameter draws (axis 0), with a per-draw-set cache the caller owns
    # (`options`: a kernel's tuning, e.g. max_steps of the Gamma-Poisson recursion; others ignore them)
    def mixture_below_and_at(self, y, p: Params, cache: dict, **options) -> tuple[np.ndarray, np.ndarray]: ...
    def sample_draws(self, rng: np.random.Generator, p: Params, cache: dict, **options) -> np.ndarray: ...


class Family:
    """Defaults for a `CountFamily`: a subclass sets the attributes and implements `log_prob`, `logpmf`,
    `pmf`, `cdf`, `zero_prob`, `sample` and `moments`; the rest it may override for speed."""

    name: str
    params: tuple[Param, ...]
    count_split: bool = False
    mean_family: str = "nb"
    nb_trend: bool = False
    gamma_poisson: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.params)

    def role(self, role: str) -> tuple[Param, ...]:
        return tuple(q for q in self.params if q.role == role)

    def __repr__(self) -> str:
        return f"<count family {self.name!r}: {', '.join(self.names)}>"

    def check_split(self, normalized: bool, count_term: bool) -> None:
        if not count_term and (normalized or not self.count_split):
            raise ValueError(f"count_term=False needs normalized=False and a family with count_split "
                             f"({self.name!r} has count_split={self.count_split})")

    def distribution(self, p: Params, *, normalized: bool = True, log_mu=None, count_term: bool = True):
        from probgex.models.distributions import CountLikelihood

        self.check_split(normalized, count_term)
        return CountLikelihood(self, p, normalized=normalized, log_mu=log_mu, count_term=count_term)

    def host(self, p: Params) -> dict[str, np.ndarray]:
        """The layout's parameters as float64 arrays (a missing one is a clear error)."""
        missing = [n for n in self.names if p.get(n) is None]
        if missing:
            raise ValueError(f"likelihood {self.name!r} needs {', '.join(missing)} (its parameters: "
                             f"{', '.join(self.names)})")
        return {n: np.asarray(p[n], np.float64) for n in self.names}

    def mean(self, p: Params) -> np.ndarray:
        return self.moments(p)[0]

    def variance(self, p: Params) -> np.ndarray:
        m, second = self.moments(p)
        return second - m**2

    def mixture_below_and_at(self, y, p: Params, cache: dict, **options) -> tuple[np.ndarray, np.ndarray]:
        """P(X < y) and P(X = y) averaged over the draws (axis 0 of the parameters)."""
        y = np.asarray(y, np.float64)[None]
        return self.cdf(y - 1, p).mean(0), self.pmf(y, p).mean(0)

    def sample_draws(self, rng: np.random.Generator, p: Params, cache: dict, **options) -> np.ndarray:
        """One count per draw and entry."""
        return self.sample(rng, p)


def gp_zero_prob(p: Params, cache: dict):
    """P(X = 0) of a Gamma-Poisson family's Poisson / NB part (no gate), once per set of draws: PIT and
    sampling share it in `cache["p0"]`."""
    if "p0" not in cache:
        from probgex.models import likelihoods as lk

        cache["p0"] = lk.gp_zero_prob(p["mu"], p.get("theta"))
    return cache["p0"]
