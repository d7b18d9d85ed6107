"""Negative binomial counts: mean `mu`, concentration `theta`, Var = mu + mu^2 / theta.

The JAX log-pmf is the gammaln form of `probgex.models.likelihoods` (Stirling's series for large
theta); with `count_term=False` it leaves out r(x, theta) = `nb_count_term`, which the cVAE adds over
the entries x >= 2 only (the count split).
"""

from __future__ import annotations

from probgex.models import likelihoods as lk
from probgex.models.families.base import DISPERSION, MEAN, Family, Param, gp_zero_prob


class NBCounts(Family):
    """What the families whose counts are an NB (or its zero-gated form) share: the count split, the NB
    stage-1 mean and mean-dispersion trend, the Gamma-Poisson kernels."""

    count_split = True
    mean_family = "nb"
    nb_trend = True
    gamma_poisson = True


class NegativeBinomial(NBCounts):
    name = "nb"
    params = (Param("mu", MEAN), Param("theta", DISPERSION))

    def log_prob(self, x, p, *, normalized=True, log_mu=None, count_term=True):
        self.check_split(normalized, count_term)
        return lk.nb_log_prob(x, p["mu"], p["theta"], normalized=normalized, log_mu=log_mu, count_term=count_term)

    def distribution(self, p, *, normalized=True, log_mu=None, count_term=True):
        from probgex.models.distributions import FastNB2, _NB2MeanTerms, _NB2Unnormalized

        self.check_split(normalized, count_term)
        cls = FastNB2 if normalized else _NB2Unnormalized if count_term else _NB2MeanTerms
        return cls(p["mu"], p["theta"], log_mean=log_mu)

    def logpmf(self, x, p):
        return lk.gp_logpmf(x, p["mu"], p["theta"])

    def pmf(self, x, p):
        return lk.gp_pmf(x, p["mu"], p["theta"])

    def cdf(self, x, p):
        return lk.gp_cdf(x, p["mu"], p["theta"])

    def zero_prob(self, p):
        return lk.gp_zero_prob(p["mu"], p["theta"])

    def sample(self, rng, p, *, size=None):
        return lk.gp_sample(rng, p["mu"], p["theta"], size=size)

    def moments(self, p):
        h = self.host(p)
        mu, theta = h["mu"], h["theta"]
        return mu, mu + mu**2 / theta + mu**2

    def mean(self, p):
        return self.host(p)["mu"]

    def mixture_below_and_at(self, y, p, cache, **options):
        return lk.gp_mixture_below_and_at(y, p["mu"], p["theta"], p0=gp_zero_prob(p, cache), **options)

    def sample_draws(self, rng, p, cache, **options):
        return lk.gp_sample_inverse(rng, p["mu"], p["theta"], p0=gp_zero_prob(p, cache), **options)


NB = NegativeBinomial()
