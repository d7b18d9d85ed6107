"""Hurdle NB: a zero / non-zero hurdle, and a zero-truncated NB for the positive counts.

    P(X = 0) = pi = sigmoid(hurdle),   P(X = x) = (1 - pi) NB(x; mu, theta) / (1 - p0)  for x >= 1,

with p0 = NB(0; mu, theta) = (1 + mu / theta)^-theta. `mu` and `theta` are the mean and concentration
of the NB before truncation, so E[X] = (1 - pi) mu / (1 - p0). Unlike the ZINB, every zero comes from
the hurdle: the zeros and the positive counts are modelled apart (in the GLM the hurdle is one logit
per gene, in the cVAE a decoder head per cell and gene). The positive part is the NB log-pmf minus
log(1 - p0), so the count split (`nb_count_term` over the entries x >= 2 only) applies unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.nn import softplus
from scipy import special, stats

from probgex.models import likelihoods as lk
from probgex.models.families.base import DISPERSION, LOGIT, MEAN, Family, Param

_LN2 = 0.6931471805599453


def _log1mexp(a):
    """log(1 - e^a) for a < 0 (clamped below 0), accurate on both sides of -log 2, finite gradients."""
    a = jnp.minimum(a, -jnp.finfo(a.dtype).tiny)
    near = a > -_LN2
    return jnp.where(near, jnp.log(-jnp.expm1(jnp.where(near, a, -1.0))),
                     jnp.log1p(-jnp.exp(jnp.where(near, -1.0, a))))


class HurdleNB(Family):
    name = "hurdle_nb"
    # the GLM's hurdle: logit P(X = 0) per gene, prior N(0, 3^2) (single-cell genes run from almost never
    # zero to almost always), guide started at 0
    params = (Param("mu", MEAN), Param("theta", DISPERSION),
              Param("hurdle", LOGIT, prior=(0.0, 3.0), start=0.0, start_scale=1.0))
    count_split = True
    mean_family = "nb"
    # the trend placed before SVI reads the zeros as NB zeros; here they are the hurdle's, so the ELBO's
    # empirical Bayes places it (placing it on all counts pulled the dispersions far too high)
    nb_trend = False

    def log_prob(self, x, p, *, normalized=True, log_mu=None, count_term=True):
        self.check_split(normalized, count_term)
        x, mu, theta, h = lk._as_float(x, p["mu"], p["theta"], p["hurdle"])
        log_p0 = -theta * jnp.log1p(mu / theta)
        positive = (lk.nb_log_prob(x, mu, theta, normalized=normalized, log_mu=log_mu, count_term=count_term)
                    - _log1mexp(log_p0) - softplus(h))
        return jnp.where(x == 0, -softplus(-h), positive)

    # ----- host
    def _parts(self, p):
        h = self.host(p)
        mu, theta, g = h["mu"], h["theta"], h["hurdle"]
        with np.errstate(under="ignore"):
            q = -np.expm1(-theta * np.log1p(mu / theta))  # 1 - p0, without cancellation for small mu
        return mu, theta, g, q

    def logpmf(self, x, p):
        mu, theta, g, q = self._parts(p)
        x = np.asarray(x, np.float64)
        pos = -np.logaddexp(0.0, g) + lk.gp_logpmf(np.maximum(x, 1.0), mu, theta) - np.log(q)
        return np.where(x == 0, -np.logaddexp(0.0, -g), np.where(x >= 1, pos, -np.inf))

    def pmf(self, x, p):
        mu, theta, g, q = self._parts(p)
        x = np.asarray(x, np.float64)
        pos = special.expit(-g) * lk.gp_pmf(np.maximum(x, 1.0), mu, theta) / q
        return np.where(x == 0, special.expit(g), np.where(x >= 1, pos, 0.0))

    def cdf(self, x, p):
        """pi + (1 - pi) (1 - P_NB(X > x) / (1 - p0)) for x >= 1 (the NB survival function directly, so
        the truncated CDF does not cancel when p0 is near 1); pi at 0, 0 below."""
        mu, theta, g, q = self._parts(p)
        x = np.asarray(x, np.float64)
        sf = special.betainc(np.maximum(x, 0.0) + 1.0, theta, mu / (theta + mu))
        pos = special.expit(g) + special.expit(-g) * (1.0 - np.minimum(sf / q, 1.0))
        return np.where(x >= 1, pos, np.where(x == 0, special.expit(g), 0.0))

    def zero_prob(self, p):
        return special.expit(self.host(p)["hurdle"])

    def sample(self, rng, p, *, size=None):
        """The hurdle by a uniform, the positive part by inversion of the NB survival function at
        W (1 - p0), W ~ U(0, 1] (scipy's nbinom.isf: exact, no rejection however small 1 - p0)."""
        mu, theta, g, q = self._parts(p)
        shape = tuple(size) if size is not None else np.broadcast_shapes(mu.shape, theta.shape, g.shape)
        mu, theta, g, q = (np.broadcast_to(a, shape) for a in (mu, theta, g, q))
        zero = rng.random(shape) < special.expit(g)
        w = 1.0 - rng.random(shape)
        out = np.zeros(shape, np.int64)
        pos = ~zero
        k = stats.nbinom.isf(w[pos] * q[pos], theta[pos], theta[pos] / (theta[pos] + mu[pos]))
        out[pos] = np.maximum(np.minimum(k, 2.0**62), 1.0).astype(np.int64)
        return out

    def moments(self, p):
        mu, theta, g, q = self._parts(p)
        keep = special.expit(-g) / q
        return keep * mu, keep * (mu + mu**2 / theta + mu**2)


HURDLE_NB = HurdleNB()
