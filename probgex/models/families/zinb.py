"""Zero-inflated NB: a structural zero with probability pi = sigmoid(gate), else NB(mu, theta)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from probgex.models import likelihoods as lk
from probgex.models.families.base import DISPERSION, LOGIT, MEAN, Param, gp_zero_prob
from probgex.models.families.nb import NBCounts


class ZeroInflatedNB(NBCounts):
    name = "zinb"
    # the GLM's gate: prior N(-2, 2^2) per gene, guide started at -3 (pi ~ 0.05)
    params = (Param("mu", MEAN), Param("theta", DISPERSION),
              Param("gate", LOGIT, prior=(-2.0, 2.0), start=-3.0, start_scale=1.0))

    def log_prob(self, x, p, *, normalized=True, log_mu=None, count_term=True):
        self.check_split(normalized, count_term)
        return lk.zinb_log_prob(x, p["mu"], p["theta"], p["gate"], normalized=normalized, log_mu=log_mu,
                                count_term=count_term)

    def distribution(self, p, *, normalized=True, log_mu=None, count_term=True):
        from probgex.models.distributions import FastZINB, _ZINBMeanTerms, _ZINBUnnormalized

        self.check_split(normalized, count_term)
        cls = FastZINB if normalized else _ZINBUnnormalized if count_term else _ZINBMeanTerms
        return cls(p["mu"], p["theta"], p["gate"], log_mean=log_mu)

    def logpmf(self, x, p):
        return lk.gp_logpmf(x, p["mu"], p["theta"], p["gate"])

    def pmf(self, x, p):
        return lk.gp_pmf(x, p["mu"], p["theta"], p["gate"])

    def cdf(self, x, p):
        return lk.gp_cdf(x, p["mu"], p["theta"], p["gate"])

    def zero_prob(self, p):
        h = self.host(p)
        pi = expit(h["gate"])
        return pi + (1.0 - pi) * lk.gp_zero_prob(h["mu"], h["theta"])

    def sample(self, rng, p, *, size=None):
        return lk.gp_sample(rng, p["mu"], p["theta"], p["gate"], size=size)

    def moments(self, p):
        h = self.host(p)
        mu, theta = h["mu"], h["theta"]
        pi = 1.0 / (1.0 + np.exp(-h["gate"]))
        return (1 - pi) * mu, (1 - pi) * (mu + mu**2 / theta + mu**2)

    def mean(self, p):
        h = self.host(p)
        return h["mu"] * expit(-h["gate"])

    def mixture_below_and_at(self, y, p, cache, **options):
        return lk.gp_mixture_below_and_at(y, p["mu"], p["theta"], p["gate"], p0=gp_zero_prob(p, cache), **options)

    def sample_draws(self, rng, p, cache, **options):
        return lk.gp_sample_inverse(rng, p["mu"], p["theta"], p["gate"], p0=gp_zero_prob(p, cache), **options)


ZINB = ZeroInflatedNB()
