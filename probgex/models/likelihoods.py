"""Count likelihoods: the one place for the Poisson / NB / ZINB math.

Parameterisation everywhere: mean ``mu > 0`` and inverse dispersion (concentration) ``theta > 0``,
so ``Var = mu + mu**2 / theta``; ZINB adds ``gate_logits``, the logit of the structural-zero
probability ``pi``.

* JAX log-pmfs (pure, jittable, broadcasting, float32-friendly) for fitting.
* NumPy/SciPy sampling, pmf and cdf (host side, float64) for predictive checks and PIT.

The NB log-pmf is the gammaln form (NumPyro's betaln-based ``NegativeBinomial2.log_prob`` is
slower: about 2x on a 2-core CPU for value-and-grad, more elsewhere per STACK-NOTES). ``gammaln(x + theta) - gammaln(theta)`` cancels catastrophically
when theta is large (near-Poisson genes; in float32 already from theta ~ 1e3), so for
``theta >= _STIRLING_MIN`` that difference is taken from Stirling's series, which leaves the
Poisson terms ``x log mu - log x!`` plus small, accurately computed corrections.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.nn import softplus
from jax.scipy.special import gammaln
from scipy import special, stats
from scipy.special import expit

KINDS = ("poisson", "nb", "zinb")
_STIRLING_MIN = 10.0  # theta at or above which the Stirling branch is used
_LAM_MAX = 1e15  # cap on the Gamma-Poisson rate, far below numpy's Poisson limit (~9e18)


def _check(kind: str, theta, gate_logits) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown likelihood {kind!r}; use 'poisson', 'nb' or 'zinb'")
    if kind != "poisson" and theta is None:
        raise ValueError(f"likelihood {kind!r} needs theta (the NB concentration)")
    if kind == "zinb" and gate_logits is None:
        raise ValueError("likelihood 'zinb' needs gate_logits (logit of the zero-inflation probability)")


def _as_float(*arrays):
    dtype = jnp.result_type(*arrays, float)
    return [jnp.asarray(a, dtype) for a in arrays]


def _stirling_tail(z):
    """lgamma(z) - [(z - 1/2) log z - z + log(2 pi)/2] for z >= 10 (error < 1e-12)."""
    zi = 1.0 / z
    zi2 = zi * zi
    return zi * (1 / 12 - zi2 * (1 / 360 - zi2 * (1 / 1260 - zi2 / 1680)))


# ----------------------------------------------------------------------------- JAX log-pmfs
def poisson_log_prob(x, mu, *, normalized: bool = True):
    """Poisson log-pmf ``x log mu - mu - log x!``."""
    x, mu = _as_float(x, mu)
    return x * jnp.log(mu) - mu - (gammaln(x + 1.0) if normalized else 0.0)


def nb_count_term(x, theta):
    """r(x, theta) = lgamma(x + theta) - lgamma(theta) - x log theta = sum_{j<x} log1p(j / theta).

    The only part of the NB log-pmf with special functions; it depends on the counts and theta only
    (not on mu), and it is exactly 0, value and gradient, for x = 0 (both branches). For theta >= 10
    it comes from Stirling's series (the direct difference cancels in float32 from theta ~ 1e3).
    """
    x, theta = _as_float(x, theta)
    ts = jnp.minimum(theta, _STIRLING_MIN)
    small = gammaln(x + ts) - gammaln(ts) - x * jnp.log(ts)
    tl = jnp.maximum(theta, _STIRLING_MIN)  # clamped so the unused branch stays finite (and its grad)
    large = (x + tl - 0.5) * jnp.log1p(x / tl) - x + _stirling_tail(x + tl) - _stirling_tail(tl)
    return jnp.where(theta < _STIRLING_MIN, small, large)


def nb_mean_term(x, mu, theta, *, log_mu=None):
    """The rest of the NB log-pmf: x (log mu - L) - theta L with L = log1p(mu / theta), so that
    log NB(x) = nb_count_term(x, theta) + nb_mean_term(x, mu, theta) - lgamma(x + 1)."""
    x, mu, theta = _as_float(x, mu, theta)
    log_mu = jnp.log(mu) if log_mu is None else log_mu
    L = jnp.log1p(mu / theta)
    return x * (log_mu - L) - theta * L


def nb_log_prob(x, mu, theta, *, normalized: bool = True, log_mu=None, count_term: bool = True):
    """NB log-pmf with mean ``mu`` and concentration ``theta`` (gammaln form, stable for all theta).

    log p = r(x, theta) + x (log mu - L) - theta L - lgamma(x+1) with L = log1p(mu/theta) and
    r = lgamma(x+theta) - lgamma(theta) - x log theta (`nb_count_term`, Stirling's series for
    theta >= 10). Pass ``log_mu`` when the caller has it (a decoder's log-softmax): one log less per
    entry; this arrangement made the NB value-and-gradient ~10% and the ZINB ~17% faster than one with a
    log1p(theta / mu) per entry, on 128 x 2,511 kang_ctrl5 counts. With ``count_term=False``, r is
    left out (a caller that adds it over the entries with x >= 2 only, where it is not 0).
    """
    out = nb_mean_term(x, mu, theta, log_mu=log_mu)
    if count_term:
        out = out + nb_count_term(x, theta)
    return out - gammaln(jnp.asarray(x, out.dtype) + 1.0) if normalized else out


def zinb_log_prob(x, mu, theta, gate_logits, *, normalized: bool = True, log_mu=None, count_term: bool = True):
    """ZINB log-pmf: log(pi 1[x=0] + (1-pi) NB(x; mu, theta)) with ``pi = sigmoid(gate_logits)``.

    Written as -softplus(g) + [x = 0 ? logaddexp(g, log NB(0)) : log NB(x)], with log NB(0) =
    -theta log1p(mu / theta) in closed form: mixing the full NB log-pmf through logaddexp made the
    value-and-gradient about 4x slower on CPU (XLA does not fuse it), the same values. ``count_term``
    as in `nb_log_prob` (r is 0 at x = 0, so it adds outside the zero branch unchanged).
    """
    x, mu, theta, gate_logits = _as_float(x, mu, theta, gate_logits)
    nb_zero = -theta * jnp.log1p(mu / theta)
    return -softplus(gate_logits) + jnp.where(
        x == 0, jnp.logaddexp(gate_logits, nb_zero),
        nb_log_prob(x, mu, theta, normalized=normalized, log_mu=log_mu, count_term=count_term))


def log_prob(kind: str, x, mu, theta=None, gate_logits=None):
    """Log-pmf of ``kind`` in {'poisson', 'nb', 'zinb'} (``kind`` is a static Python string)."""
    _check(kind, theta, gate_logits)
    if kind == "poisson":
        return poisson_log_prob(x, mu)
    if kind == "nb":
        return nb_log_prob(x, mu, theta)
    return zinb_log_prob(x, mu, theta, gate_logits)


# ----------------------------------------------------------------------------- NumPy / SciPy
def _host(kind: str, mu, theta, gate_logits):
    _check(kind, theta, gate_logits)
    mu = np.asarray(mu, np.float64)
    theta = None if theta is None else np.asarray(theta, np.float64)
    pi = None if gate_logits is None else expit(np.asarray(gate_logits, np.float64))
    return mu, theta, pi


def sample_counts(kind: str, rng: np.random.Generator, mu, theta=None, gate_logits=None,
                  *, size: tuple[int, ...] | None = None) -> np.ndarray:
    """Draw int64 counts: Poisson, NB as Gamma-Poisson, ZINB with a Bernoulli(pi) zero gate.

    The result has the broadcast shape of the parameters, or ``size`` when given.
    """
    mu, theta, pi = _host(kind, mu, theta, gate_logits)
    params = [a for a in (mu, theta, pi) if a is not None] if kind != "poisson" else [mu]
    shape = tuple(size) if size is not None else np.broadcast_shapes(*(a.shape for a in params))
    if kind == "poisson":
        rate = np.broadcast_to(mu, shape)
    else:
        rate = rng.gamma(np.broadcast_to(theta, shape), np.broadcast_to(mu / theta, shape))
        rate = np.minimum(rate, _LAM_MAX)
    counts = np.asarray(rng.poisson(rate), dtype=np.int64)
    if kind == "zinb":
        counts = np.where(rng.random(shape) < pi, 0, counts)
    return counts


def _np_stirling_tail(z):
    zi = 1.0 / z
    zi2 = zi * zi
    return zi * (1 / 12 - zi2 * (1 / 360 - zi2 * (1 / 1260 - zi2 / 1680)))


def _lgamma_ratio(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """lgamma(x + t) - lgamma(t) - x log t: directly for t < 10, by Stirling's series above.

    Each entry is computed by its own branch only (on (draws x obs x genes) arrays computing both and
    selecting cost about 2.5x).
    """
    small_t = theta < _STIRLING_MIN
    if np.all(small_t):
        return _lgamma_ratio_small(x, theta)
    if not np.any(small_t):
        return _lgamma_ratio_large(x, theta)
    x, theta, small_t = np.broadcast_arrays(x, theta, small_t)
    out = np.empty(x.shape)
    out[small_t] = _lgamma_ratio_small(x[small_t], theta[small_t])
    out[~small_t] = _lgamma_ratio_large(x[~small_t], theta[~small_t])
    return out


def _lgamma_ratio_small(x, t):
    return special.gammaln(x + t) - (special.gammaln(t) + x * np.log(t))


def _lgamma_ratio_large(x, t):
    return (x + t - 0.5) * np.log1p(x / t) - x + _np_stirling_tail(x + t) - _np_stirling_tail(t)


def pmf(kind: str, x, mu, theta=None, gate_logits=None) -> np.ndarray:
    """P(X = x) in float64 (0 for x < 0); the NB term by the gammaln form, ~2x faster than scipy.stats."""
    mu, theta, pi = _host(kind, mu, theta, gate_logits)
    x = np.asarray(x, np.float64)
    xs = np.maximum(x, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "poisson":
            logp = special.xlogy(xs, mu) - mu - special.gammaln(xs + 1.0)
        else:
            log1p_mu_t = np.log1p(mu / theta)
            logp = (_lgamma_ratio(xs, theta) - special.gammaln(xs + 1.0)
                    - theta * log1p_mu_t + special.xlogy(xs, mu) - xs * log1p_mu_t)
    out = np.where(x >= 0, np.exp(logp), 0.0)
    if kind == "zinb":
        out = (1.0 - pi) * out + pi * (x == 0)
    return out


def cdf(kind: str, x, mu, theta=None, gate_logits=None) -> np.ndarray:
    """P(X <= x) in float64; 0 for x < 0 (so ``cdf(x - 1)`` works for PIT). Regularised incomplete
    beta / gamma functions directly (scipy.stats adds ~50% overhead on large arrays)."""
    mu, theta, pi = _host(kind, mu, theta, gate_logits)
    x = np.asarray(x, np.float64)
    k1 = np.maximum(x, 0.0) + 1.0
    if kind == "poisson":
        out = special.gammaincc(k1, mu)
    else:
        out = special.betainc(theta, k1, theta / (theta + mu))
        if kind == "zinb":
            out = pi + (1.0 - pi) * out
    return np.where(x >= 0, out, 0.0)
