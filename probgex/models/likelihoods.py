"""Count-likelihood kernels: the Poisson / NB / ZINB math, which the count families
(`probgex.models.families`) are built from. No function here branches on a family's name.

Parameterisation everywhere: mean ``mu > 0`` and inverse dispersion (concentration) ``theta > 0``,
so ``Var = mu + mu**2 / theta``; ZINB adds ``gate_logits``, the logit of the structural-zero
probability ``pi``.

* JAX log-pmfs (pure, jittable, broadcasting, float32-friendly) for fitting.
* NumPy/SciPy sampling, pmf and cdf (host side, float64) for predictive checks and PIT: the
  Gamma-Poisson kernels ``gp_*``, Poisson over a Gamma rate of concentration ``theta`` (``theta=None``:
  Poisson itself), zeroed with probability sigmoid(``gate_logits``) when a gate is given (ZINB).
* By registry name (``log_prob("zinb", x, mu, theta, gate)``, ``pmf(...)``, ...): the family's own
  method with the positional parameters in its layout's order (`families.family(kind)`), for any
  registered family; a new family needs no edit here.

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

_STIRLING_MIN = 10.0  # theta at or above which the Stirling branch is used
_LAM_MAX = 1e15  # cap on the Gamma-Poisson rate, far below numpy's Poisson limit (~9e18)


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


# ----------------------------------------------------------------------------- NumPy / SciPy
def _host(mu, theta, gate_logits):
    mu = np.asarray(mu, np.float64)
    theta = None if theta is None else np.asarray(theta, np.float64)
    pi = None if gate_logits is None else expit(np.asarray(gate_logits, np.float64))
    return mu, theta, pi


def gp_sample(rng: np.random.Generator, mu, theta=None, gate_logits=None,
              *, size: tuple[int, ...] | None = None) -> np.ndarray:
    """Draw int64 counts: Poisson (theta None), NB as Gamma-Poisson, with a Bernoulli(pi) zero gate (ZINB).

    The result has the broadcast shape of the parameters, or ``size`` when given.
    """
    mu, theta, pi = _host(mu, theta, gate_logits)
    params = [a for a in (mu, theta, pi) if a is not None]
    shape = tuple(size) if size is not None else np.broadcast_shapes(*(a.shape for a in params))
    if theta is None:
        rate = np.broadcast_to(mu, shape)
    else:
        rate = rng.gamma(np.broadcast_to(theta, shape), np.broadcast_to(mu / theta, shape))
        rate = np.minimum(rate, _LAM_MAX)
    counts = np.asarray(rng.poisson(rate), dtype=np.int64)
    if pi is not None:
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


def _log_count_pmf(xs: np.ndarray, mu: np.ndarray, theta) -> np.ndarray:
    """log pmf of the Poisson (theta None) / NB part at counts xs >= 0 (the gammaln form)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if theta is None:
            return special.xlogy(xs, mu) - mu - special.gammaln(xs + 1.0)
        log1p_mu_t = np.log1p(mu / theta)
        return (_lgamma_ratio(xs, theta) - special.gammaln(xs + 1.0)
                - theta * log1p_mu_t + special.xlogy(xs, mu) - xs * log1p_mu_t)


def gp_logpmf(x, mu, theta=None, gate_logits=None) -> np.ndarray:
    """log P(X = x) in float64 (-inf for x < 0), in log space throughout: far tails stay finite."""
    mu, theta, pi = _host(mu, theta, gate_logits)
    x = np.asarray(x, np.float64)
    logp = _log_count_pmf(np.maximum(x, 0.0), mu, theta)
    if pi is not None:
        with np.errstate(divide="ignore"):
            logp = np.where(x == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + logp), np.log1p(-pi) + logp)
    return np.where(x >= 0, logp, -np.inf)


def gp_pmf(x, mu, theta=None, gate_logits=None) -> np.ndarray:
    """P(X = x) in float64 (0 for x < 0); the NB term by the gammaln form, ~2x faster than scipy.stats."""
    mu, theta, pi = _host(mu, theta, gate_logits)
    x = np.asarray(x, np.float64)
    out = np.where(x >= 0, np.exp(_log_count_pmf(np.maximum(x, 0.0), mu, theta)), 0.0)
    if pi is not None:
        out = (1.0 - pi) * out + pi * (x == 0)
    return out


def gp_cdf(x, mu, theta=None, gate_logits=None) -> np.ndarray:
    """P(X <= x) in float64; 0 for x < 0 (so ``gp_cdf(x - 1)`` works for PIT). Regularised incomplete
    beta / gamma functions directly (scipy.stats adds ~50% overhead on large arrays)."""
    mu, theta, pi = _host(mu, theta, gate_logits)
    x = np.asarray(x, np.float64)
    k1 = np.maximum(x, 0.0) + 1.0
    if theta is None:
        out = special.gammaincc(k1, mu)
    else:
        out = special.betainc(theta, k1, theta / (theta + mu))
    if pi is not None:
        out = pi + (1.0 - pi) * out
    return np.where(x >= 0, out, 0.0)


_RECURSION_MIN_P0 = 1e-260  # P(X = 0) below which the pmf recursion would start near underflow


def gp_zero_prob(mu, theta=None) -> np.ndarray:
    """P(X = 0) of the Poisson / NB part (no zero inflation): exp(-mu) or exp(-theta log1p(mu / theta))."""
    mu, theta, _ = _host(mu, theta, None)
    with np.errstate(under="ignore"):
        return np.exp(-mu if theta is None else -theta * np.log1p(mu / theta))


def gp_mixture_below_and_at(y, mu, theta=None, gate_logits=None, *, max_steps: int = 64,
                            p0=None) -> tuple[np.ndarray, np.ndarray]:
    """The mixture over draws (axis 0 of the parameters) of P(X < y) and P(X = y), in float64.

    Parameters broadcast to (S, ...) and counts ``y`` to ``...``. The same values as
    ``gp_cdf(y - 1, ...).mean(0)`` and ``gp_pmf(y, ...).mean(0)``, computed with far fewer special
    functions: P(X = 0) = exp(-theta log1p(mu / theta)) (Poisson: exp(-mu)) for every draw and entry,
    then for counts 1 <= y <= ``max_steps`` the pmf recursion p(k + 1) = p(k) (k + theta) / (k + 1)
    * mu / (mu + theta) (Poisson: p(k) mu / (k + 1)), summing P(X < y) as it goes (only
    multiplications; relative error ~ y ulp). Entries with larger counts, or whose P(X = 0) is near
    underflow for some draw, use the incomplete beta / gamma CDF and the gammaln pmf. ``p0``: P(X = 0)
    of the Poisson / NB part (`gp_zero_prob`) if the caller has it.
    """
    mu, theta, pi = _host(mu, theta, gate_logits)
    S = mu.shape[0]
    params = [a for a in (mu, theta, pi) if a is not None]
    shape = np.broadcast_shapes(np.shape(y), *(a.shape[1:] for a in params))
    flat = lambda a: None if a is None else np.broadcast_to(a, (S,) + shape).reshape(S, -1)  # noqa: E731
    yb = np.broadcast_to(np.asarray(y, np.float64), shape).reshape(-1)
    mu2, th2, pi2 = flat(mu), flat(theta), flat(pi)
    p0 = flat(gp_zero_prob(mu, theta) if p0 is None else np.asarray(p0, np.float64))
    rec = (yb >= 1) & (yb <= max_steps) & np.all(p0 >= _RECURSION_MIN_P0, axis=0)
    below, at = np.zeros(yb.shape), np.zeros(yb.shape)
    zero = yb == 0
    if np.any(zero):
        at0 = p0.mean(0) if pi2 is None else (pi2 + (1.0 - pi2) * p0).mean(0)
        at[zero] = at0[zero]
    idx = np.flatnonzero(rec)
    if len(idx):
        idx = idx[np.argsort(-yb[idx], kind="stable")]  # descending counts: the entries still summing at
        ys = yb[idx]                                      # step k are a prefix
        p, m = p0[:, idx], mu2[:, idx]
        t = None if th2 is None else th2[:, idx]
        r = m if t is None else m / (m + t)
        F = np.zeros_like(p)
        with np.errstate(under="ignore"):
            for k in range(int(ys[0])):
                a = int(np.searchsorted(-ys, -k, side="left"))  # entries with y > k
                F[:, :a] += p[:, :a]
                p[:, :a] *= r[:, :a] / (k + 1) if t is None else r[:, :a] * ((k + t[:, :a]) / (k + 1))
        if pi2 is not None:
            g = pi2[:, idx]
            F = g + (1.0 - g) * F
            p = (1.0 - g) * p
        below[idx], at[idx] = F.mean(0), p.mean(0)
    rest = np.flatnonzero(~rec & ~zero)
    if len(rest):
        sub = lambda a: None if a is None else a[:, rest]  # noqa: E731
        g = None if gate_logits is None else flat(np.asarray(gate_logits, np.float64))[:, rest]
        yr = yb[rest]
        below[rest] = gp_cdf(yr - 1, sub(mu2), sub(th2), g).mean(0)
        at[rest] = gp_pmf(yr, sub(mu2), sub(th2), g).mean(0)
    return below.reshape(shape), at.reshape(shape)


def gp_sample_inverse(rng: np.random.Generator, mu, theta=None, gate_logits=None, *,
                      max_mean: float = 4.0, max_steps: int = 64, p0=None) -> np.ndarray:
    """Draw int64 counts from the same distributions as `gp_sample`, faster on sparse data.

    Entries with mean ``mu <= max_mean`` (most entries of single-cell counts) are drawn by inversion:
    U ~ U(0, 1), X = min{k : F(k) >= U}, with F summed by the pmf recursion from P(X = 0) (``p0``,
    `gp_zero_prob`, if the caller has it): X = 0 costs one comparison, X = k costs k multiply-adds. Draws
    beyond ``max_steps`` take scipy's inverse CDF at the same U (exact, incomplete beta / gamma). Entries
    with larger means are drawn as Gamma-Poisson (`gp_sample`). ZINB adds the Bernoulli(pi) zero gate.
    F is a sum of ~k terms, so the inversion is exact up to rounding (~k ulp in U).
    """
    mu, theta, pi = _host(mu, theta, gate_logits)
    nb = theta is not None
    params = [a for a in (mu, theta if nb else None, pi) if a is not None]
    shape = np.broadcast_shapes(*(a.shape for a in params))
    mu = np.broadcast_to(mu, shape).reshape(-1)
    th = np.broadcast_to(theta, shape).reshape(-1) if nb else None
    x = np.zeros(mu.shape, np.int64)
    small = mu <= max_mean
    big = np.flatnonzero(~small)
    if len(big):
        x[big] = gp_sample(rng, mu[big], None if th is None else th[big])
    u = rng.random(mu.shape)
    p0 = (gp_zero_prob(mu, th) if p0 is None
          else np.broadcast_to(np.asarray(p0, np.float64), shape).reshape(-1))
    c = np.flatnonzero(small & (u >= p0))  # X >= 1
    v = u[c] - p0[c]  # U - F(k - 1): the draw is k once it falls below 0
    t = th[c] if nb else None
    r = mu[c] / (mu[c] + t) if nb else mu[c]
    p = p0[c] * (r * t if nb else r)  # p(1)
    with np.errstate(under="ignore"):
        for k in range(1, max_steps + 1):
            if not len(c):
                break
            v -= p
            done = v < 0
            x[c[done]] = k
            keep = np.flatnonzero(~done)  # take() by one index array: faster than 5 boolean masks
            c, v, p, r = c.take(keep), v.take(keep), p.take(keep), r.take(keep)
            t = None if t is None else t.take(keep)
            p *= r / (k + 1) if t is None else r * ((k + t) / (k + 1))
    if len(c):  # X > max_steps: the exact inverse CDF at the same U
        if nb:
            tail = stats.nbinom.ppf(u[c], t, t / (t + mu[c]))
        else:
            tail = stats.poisson.ppf(u[c], mu[c])
        x[c] = np.maximum(tail, max_steps + 1).astype(np.int64)
    if pi is not None:
        x = np.where(rng.random(shape).reshape(-1) < np.broadcast_to(pi, shape).reshape(-1), 0, x)
    return x.reshape(shape)


# ----------------------------------------------------------------------------- by registry name
def _family_params(kind: str, mu, params: tuple):
    """The family registered as `kind` and its parameters by name: `mu`, then `params` in the order of
    its layout (extra ones ignored, missing ones a ValueError naming them)."""
    from probgex.models.families import family

    fam = family(kind)
    p = dict(zip(fam.names, (mu, *params)))
    missing = [n for n in fam.names if p.get(n) is None]
    if missing:
        raise ValueError(f"likelihood {kind!r} needs {', '.join(missing)} (its parameters: {', '.join(fam.names)})")
    return fam, p


def log_prob(kind: str, x, mu, *params):
    """JAX log-pmf of the family `kind` (a static Python string), parameters in its layout's order."""
    fam, p = _family_params(kind, mu, params)
    return fam.log_prob(x, p)


def logpmf(kind: str, x, mu, *params) -> np.ndarray:
    fam, p = _family_params(kind, mu, params)
    return fam.logpmf(x, p)


def pmf(kind: str, x, mu, *params) -> np.ndarray:
    fam, p = _family_params(kind, mu, params)
    return fam.pmf(x, p)


def cdf(kind: str, x, mu, *params) -> np.ndarray:
    fam, p = _family_params(kind, mu, params)
    return fam.cdf(x, p)


def zero_prob(kind: str, mu, *params) -> np.ndarray:
    fam, p = _family_params(kind, mu, params)
    return fam.zero_prob(p)


def sample_counts(kind: str, rng: np.random.Generator, mu, *params, size=None) -> np.ndarray:
    fam, p = _family_params(kind, mu, params)
    return fam.sample(rng, p, size=size)


def mixture_below_and_at(kind: str, y, mu, *params, p0=None, **options) -> tuple[np.ndarray, np.ndarray]:
    """The family's P(X < y) and P(X = y) over draws (axis 0); `p0`: its zero probability's cache entry,
    `options`: the kernel's (max_steps)."""
    fam, p = _family_params(kind, mu, params)
    return fam.mixture_below_and_at(y, p, {} if p0 is None else {"p0": p0}, **options)


def sample_counts_inverse(kind: str, rng: np.random.Generator, mu, *params, p0=None, **options) -> np.ndarray:
    """One count per draw and entry by the family's fastest sampler; `options`: the kernel's."""
    fam, p = _family_params(kind, mu, params)
    return fam.sample_draws(rng, p, {} if p0 is None else {"p0": p0}, **options)
