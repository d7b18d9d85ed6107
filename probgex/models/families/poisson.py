"""Poisson counts: mean `mu`, Var = mu (kernels in `probgex.models.likelihoods`)."""

from __future__ import annotations

from probgex.models import likelihoods as lk
from probgex.models.families.base import MEAN, Family, Param


class Poisson(Family):
    name = "poisson"
    params = (Param("mu", MEAN),)
    count_split = False
    mean_family = "poisson"

    def log_prob(self, x, p, *, normalized=True, log_mu=None, count_term=True):
        self.check_split(normalized, count_term)
        return lk.poisson_log_prob(x, p["mu"], normalized=normalized)

    def distribution(self, p, *, normalized=True, log_mu=None, count_term=True):
        from probgex.models.distributions import FastPoisson, _PoissonUnnormalized

        self.check_split(normalized, count_term)
        return (FastPoisson if normalized else _PoissonUnnormalized)(p["mu"])

    def logpmf(self, x, p):
        return lk.logpmf("poisson", x, p["mu"])

    def pmf(self, x, p):
        return lk.pmf("poisson", x, p["mu"])

    def cdf(self, x, p):
        return lk.cdf("poisson", x, p["mu"])

    def zero_prob(self, p):
        return lk.zero_prob("poisson", p["mu"])

    def sample(self, rng, p, *, size=None):
        return lk.sample_counts("poisson", rng, p["mu"], size=size)

    def moments(self, p):
        mu = self.host(p)["mu"]
        return mu, mu + mu**2

    def mean(self, p):
        return self.host(p)["mu"]

    def mixture_below_and_at(self, y, p, cache):
        return lk.mixture_below_and_at("poisson", y, p["mu"], p0=_p0(self, p, cache))

    def sample_draws(self, rng, p, cache):
        return lk.sample_counts_inverse("poisson", rng, p["mu"], p0=_p0(self, p, cache))


def _p0(fam: Poisson, p, cache: dict):
    if "p0" not in cache:
        cache["p0"] = fam.zero_prob(p)
    return cache["p0"]


POISSON = Poisson()
