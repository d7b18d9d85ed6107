"""Poisson counts: mean `mu`, Var = mu (kernels in `probgex.models.likelihoods`)."""

from __future__ import annotations

from probgex.models import likelihoods as lk
from probgex.models.families.base import MEAN, Family, Param, gp_zero_prob


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
        return lk.gp_logpmf(x, p["mu"])

    def pmf(self, x, p):
        return lk.gp_pmf(x, p["mu"])

    def cdf(self, x, p):
        return lk.gp_cdf(x, p["mu"])

    def zero_prob(self, p):
        return lk.gp_zero_prob(p["mu"])

    def sample(self, rng, p, *, size=None):
        return lk.gp_sample(rng, p["mu"], size=size)

    def moments(self, p):
        mu = self.host(p)["mu"]
        return mu, mu + mu**2

    def mean(self, p):
        return self.host(p)["mu"]

    gamma_poisson = True

    def mixture_below_and_at(self, y, p, cache, **options):
        return lk.gp_mixture_below_and_at(y, p["mu"], p0=gp_zero_prob(p, cache), **options)

    def sample_draws(self, rng, p, cache, **options):
        return lk.gp_sample_inverse(rng, p["mu"], p0=gp_zero_prob(p, cache), **options)


POISSON = Poisson()
