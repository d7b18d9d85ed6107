"""Accuracy, sampling and CDF checks of probgex.models.likelihoods against SciPy and exact references."""

from __future__ import annotations

import contextlib
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import gammaln

from probgex.models import likelihoods as lk

KINDS = ("poisson", "nb", "zinb")  # the Gamma-Poisson families (families.family(k).gamma_poisson)

EPS64 = np.finfo(np.float64).eps
XS = [0, 1, 10, 1000, 100_000]
MUS = [1e-3, 0.5, 10, 1e3, 1e5]
THETAS = [1e-4, 0.01, 1, 100, 1e6, 1e8]
GATES = [-5.0, 0.0, 3.0]


@contextlib.contextmanager
def x64():
    """Float64 JAX inside the block only; the previous setting is restored afterwards."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
        return
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


# ----------------------------------------------------------------------------- float64 references
def nb_scipy(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def nb_scipy_atol(x, mu, theta):
    """A bound on SciPy's own float64 rounding error: its p = theta/(theta+mu) loses the
    complement 1-p when theta >> mu (error ~ eps*theta/mu per count) and its gammaln difference
    cancels when theta is large. Zero-width wherever SciPy is well conditioned."""
    p = theta / (theta + mu)
    gl = np.abs(gammaln(x + theta)) + np.abs(gammaln(theta)) + np.abs(gammaln(x + 1))
    return 4 * EPS64 * (gl + theta * (1 + np.abs(np.log(p))) + x * (1 + theta / mu))


def nb_exact(x: int, mu: float, theta: float) -> float:
    """NB log-pmf from the product form  C(x+theta-1, x) = prod_k (theta+k)/(k+1), summed exactly."""
    k = np.arange(x, dtype=np.float64)
    log_coef = math.fsum(np.log1p((theta - 1.0) / (k + 1.0)))
    return log_coef - theta * math.log1p(mu / theta) - x * math.log1p(theta / mu)


def zinb_ref(x, mu, theta, g):
    log_pi, log_not_pi = -np.logaddexp(0.0, -g), -np.logaddexp(0.0, g)
    nb = log_not_pi + nb_scipy(x, mu, theta)
    return np.where(x == 0, np.logaddexp(log_pi, nb), nb)


def grid(*axes):
    return [np.asarray(a, np.float64) for a in np.array(list(itertools.product(*axes))).T]


# ----------------------------------------------------------------------------- log-pmf accuracy
def test_float64_nb_matches_scipy_and_exact_to_1e6_relative():
    x, mu, th = grid(XS, MUS, THETAS)
    with x64():
        got = np.asarray(jax.jit(lk.nb_log_prob)(x, mu, th))
        assert got.dtype == np.float64
    exact = np.array([nb_exact(int(a), b, c) for a, b, c in zip(x, mu, th)])
    np.testing.assert_allclose(got, nb_scipy(x, mu, th), rtol=1e-6, atol=0)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=0)
    # outside the context JAX is float32 again
    assert lk.nb_log_prob(1.0, 2.0, 3.0).dtype == jnp.float32


def test_float64_poisson_and_zinb_match_scipy_to_1e6_relative():
    x, mu, th, g = grid(XS, MUS, THETAS, GATES)
    with x64():
        pois = np.asarray(lk.poisson_log_prob(x, mu))
        zinb = np.asarray(lk.zinb_log_prob(x, mu, th, g))
        via_kind = np.asarray(lk.log_prob("zinb", x, mu, th, g))
    np.testing.assert_allclose(pois, stats.poisson.logpmf(x, mu), rtol=1e-6, atol=0)
    np.testing.assert_allclose(zinb, zinb_ref(x, mu, th, g), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(via_kind, zinb)


def test_float32_moderate_grid():
    """The fit runs in float32: 1e-4 relative + 1e-5 absolute on counts up to 1000, incl. theta=1e6."""
    x, mu, th, g = grid([0, 1, 3, 10, 50, 200, 1000], [0.01, 0.5, 5, 50, 500],
                        [0.05, 0.5, 5, 9.99, 10, 50, 5e3, 1e6], [-5.0, 0.0, 3.0])
    f32 = [a.astype(np.float32) for a in (x, mu, th, g)]
    nb = lk.log_prob("nb", *f32[:3])
    zinb = lk.log_prob("zinb", *f32)
    pois = lk.log_prob("poisson", *f32[:2])
    assert nb.dtype == zinb.dtype == pois.dtype == jnp.float32
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(nb, nb_scipy(x, mu, th), **tol)
    np.testing.assert_allclose(zinb, zinb_ref(x, mu, th, g), **tol)
    np.testing.assert_allclose(pois, stats.poisson.logpmf(x, mu), **tol)


_nb64 = jax.jit(lk.nb_log_prob)


@settings(max_examples=200, deadline=None)
@given(
    x=st.one_of(st.just(0), st.integers(0, 30), st.integers(0, 100_000)),
    log_mu=st.floats(-6.0, 6.0),
    log_theta=st.floats(-4.0, 8.0),
)
def test_nb_property_vs_scipy_and_exact(x, log_mu, log_theta):
    mu, th = 10.0**log_mu, 10.0**log_theta
    with x64():
        got = float(_nb64(np.float64(x), np.float64(mu), np.float64(th)))
    exact = nb_exact(x, mu, th)
    assert abs(got - exact) <= 1e-6 * abs(exact)
    ref = float(nb_scipy(x, mu, th))
    assert abs(got - ref) <= 1e-6 * abs(ref) + float(nb_scipy_atol(x, mu, th))


# ----------------------------------------------------------------------------- gradients, jit, API
def test_nb_gradients_match_finite_differences():
    """gammaln-form log-pmf is smooth in mu and theta, on both sides of the Stirling switch."""
    with x64():
        f = jax.jit(lk.nb_log_prob)
        dmu = jax.jit(jax.grad(lk.nb_log_prob, argnums=1))
        dth = jax.jit(jax.grad(lk.nb_log_prob, argnums=2))
        for x, mu, th in itertools.product([0.0, 1.0, 7.0, 300.0], [0.2, 5.0, 800.0],
                                           [0.03, 1.5, 9.0, 11.0, 400.0, 1e5]):
            hm, ht = 1e-5 * mu, 1e-5 * th
            fd_mu = (f(x, mu + hm, th) - f(x, mu - hm, th)) / (2 * hm)
            fd_th = (f(x, mu, th + ht) - f(x, mu, th - ht)) / (2 * ht)
            np.testing.assert_allclose(dmu(x, mu, th), fd_mu, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(dth(x, mu, th), fd_th, rtol=1e-6, atol=1e-9)
        # continuous across the branch switch at theta = 10
        x = np.array([0.0, 1.0, 10.0, 1000.0, 1e5])
        lo, hi = lk._STIRLING_MIN * (1 - 1e-12), lk._STIRLING_MIN * (1 + 1e-12)
        np.testing.assert_allclose(f(x, 7.0, lo), f(x, 7.0, hi), rtol=1e-9)
        np.testing.assert_allclose(dth(x[1], 7.0, lo), dth(x[1], 7.0, hi), rtol=1e-8)


def test_float32_gradients_finite_at_extremes():
    x, mu, th, g = (jnp.asarray(a, jnp.float32) for a in grid([0, 1, 1e5], [1e-6, 1e6],
                                                              [1e-4, 9.5, 10, 1e8], [-30, 30]))
    grads = jax.grad(lambda m, t, gl: lk.zinb_log_prob(x, m, t, gl).sum(), argnums=(0, 1, 2))(mu, th, g)
    for gr in grads:
        assert bool(jnp.all(jnp.isfinite(gr)))
    assert bool(jnp.all(jnp.isfinite(lk.nb_log_prob(x, mu, th))))


def test_broadcasting_jit_and_dispatch():
    x = jnp.arange(6.0).reshape(2, 3, 1)
    mu = jnp.array([0.5, 4.0, 30.0, 2.0])
    th, g = jnp.array(2.0), jnp.zeros((3, 1))
    out = jax.jit(lk.log_prob, static_argnums=0)("zinb", x, mu, th, g)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(lk.log_prob("nb", x, mu, th), lk.nb_log_prob(x, mu, th))
    np.testing.assert_allclose(lk.log_prob("poisson", x, mu), lk.poisson_log_prob(x, mu))
    with pytest.raises(ValueError, match="unknown likelihood"):
        lk.log_prob("gaussian", x, mu)
    with pytest.raises(ValueError, match="theta"):
        lk.log_prob("nb", x, mu)
    with pytest.raises(ValueError, match="needs gate"):
        lk.sample_counts("zinb", np.random.default_rng(0), 1.0, 1.0)


# ----------------------------------------------------------------------------- sampling
N_DRAWS = 200_000
N_SE = 5.0  # every Monte Carlo check allows 5 standard errors


def moments(mu, theta, pi):
    """Mean, variance and their standard errors (n = N_DRAWS) from the exact NB/ZINB cumulants."""
    q = 0.0 if theta is None else mu / theta
    k1, k2 = mu, mu * (1 + q)
    k3, k4 = k2 * (1 + 2 * q), k2 * (1 + 6 * q + 6 * q * q)
    raw = np.array([k1, k2 + k1**2, k3 + 3 * k2 * k1 + k1**3,
                    k4 + 4 * k3 * k1 + 3 * k2**2 + 6 * k2 * k1**2 + k1**4]) * (1 - pi)
    m1, m2, m3, m4 = raw
    var = m2 - m1**2
    c4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return m1, var, math.sqrt(var / N_DRAWS), math.sqrt((c4 - var**2) / N_DRAWS)


@pytest.mark.parametrize(
    ("kind", "mu", "theta", "gate"),
    [
        ("poisson", 3.0, None, None),
        ("poisson", 1e6, None, None),
        ("nb", 10.0, 2.0, None),
        ("nb", 0.5, 0.1, None),
        ("nb", 1e3, 5.0, None),
        ("nb", 5.0, 1e8, None),
        ("nb", 1e6, 1e8, None),
        ("zinb", 10.0, 2.0, 0.0),
        ("zinb", 2.0, 0.5, -2.0),
        ("zinb", 50.0, 1e8, 1.5),
    ],
)
def test_sample_counts_moments(kind, mu, theta, gate):
    rng = np.random.default_rng(20240611)
    draws = lk.sample_counts(kind, rng, mu, theta, gate, size=(N_DRAWS,))
    assert draws.shape == (N_DRAWS,) and draws.dtype == np.int64 and draws.min() >= 0
    pi = 0.0 if gate is None else float(1 / (1 + np.exp(-gate)))
    mean, var, se_mean, se_var = moments(mu, theta, pi)
    assert abs(draws.mean() - mean) <= N_SE * se_mean
    assert abs(draws.var(ddof=1) - var) <= N_SE * se_var
    if kind == "zinb":
        p0 = pi + (1 - pi) * (theta / (theta + mu)) ** theta
        assert abs((draws == 0).mean() - p0) <= N_SE * math.sqrt(p0 * (1 - p0) / N_DRAWS)


def test_sample_counts_extremes_and_broadcasting():
    rng = np.random.default_rng(7)
    mu = np.array([1e-6, 1.0, 1e6])[:, None]
    theta = np.array([1e-4, 1.0, 1e8])
    draws = lk.sample_counts("zinb", rng, mu, theta, np.zeros((3, 3)))
    assert draws.shape == (3, 3) and draws.dtype == np.int64 and draws.min() >= 0
    big = lk.sample_counts("nb", rng, np.full(1000, 1e6), 1e8)
    assert abs(big.mean() - 1e6) < 5 * math.sqrt(1e6 * 1.01 / 1000)
    heavy = lk.sample_counts("nb", rng, np.full(1000, 1e6), 1e-4)
    assert heavy.min() >= 0
    for kind in KINDS:  # scalar parameters give a 0-d int64 array
        one = lk.sample_counts(kind, rng, 3.0, 2.0, 0.5)
        assert one.shape == () and one.dtype == np.int64


# ----------------------------------------------------------------------------- pmf / cdf
CDF_CASES = [
    ("poisson", 4.0, None, None),
    ("nb", 4.0, 0.7, None),
    ("nb", 30.0, 1e8, None),
    ("nb", 2.0, 1e-4, None),
    ("zinb", 6.0, 3.0, 0.5),
    ("zinb", 1e3, 20.0, -3.0),
]


@pytest.mark.parametrize(("kind", "mu", "theta", "gate"), CDF_CASES)
def test_cdf_is_cumulative_pmf(kind, mu, theta, gate):
    x = np.arange(-1, 3000)
    p = lk.pmf(kind, x, mu, theta, gate)
    c = lk.cdf(kind, x, mu, theta, gate)
    assert p.dtype == c.dtype == np.float64
    assert c[0] == 0.0 and p[0] == 0.0
    # scipy's incomplete beta carries ~2e-9 relative error at theta = 1e8 (the pmf is exact to 1e-13
    # there: test_host_pmf_matches_exact_product_formula), so the check is 1e-8 only for huge theta
    rtol = 1e-8 if theta is not None and theta >= 1e6 else 1e-10
    np.testing.assert_allclose(c, np.cumsum(p), rtol=rtol, atol=1e-14)
    assert np.all(np.diff(c) >= -1e-15) and c[-1] <= 1.0 + 1e-12
    if not (kind == "nb" and theta < 1e-3):  # theta=1e-4 has a tail far beyond 3000
        assert abs(p.sum() - 1.0) < 1e-9


def test_pmf_matches_jax_log_prob():
    x, mu, th, g = grid([0, 1, 5, 40], [0.3, 8.0, 200.0], [0.5, 4.0, 1e4], [-1.0, 2.0])
    with x64():
        for kind in KINDS:
            want = np.exp(np.asarray(lk.log_prob(kind, x, mu, th, g)))
            np.testing.assert_allclose(lk.pmf(kind, x, mu, th, g), want, rtol=1e-8, atol=0)
    pi = 1 / (1 + np.exp(-g))
    np.testing.assert_allclose(lk.cdf("zinb", 0, mu, th, g),
                               pi + (1 - pi) * (th / (th + mu)) ** th, rtol=1e-10)


@pytest.mark.parametrize("theta", [0.05, 3.0, 1e4, 1e8])
def test_host_pmf_matches_exact_product_formula(theta):
    """NB pmf against log p = sum_{i<x} log((t + i) / (t + mu)) - log x! + x log mu - t log1p(mu / t),
    summed exactly (math.fsum); no scipy in the reference."""
    mu = 30.0
    for x in (0, 1, 10, 30, 80):
        lp = (math.fsum(math.log1p((i - mu) / (theta + mu)) for i in range(x)) - math.lgamma(x + 1)
              + x * math.log(mu) - theta * math.log1p(mu / theta))
        assert lk.pmf("nb", np.array([float(x)]), mu, theta)[0] == pytest.approx(math.exp(lp), rel=1e-12)


# ----------------------------------------------------------------------------- mixture P(X < y), P(X = y)
def _scipy_below_at(kind, y, mu, theta, gate):
    """Reference from scipy.stats, per draw then averaged over axis 0."""
    if kind == "poisson":
        below, at = stats.poisson.cdf(y - 1, mu), stats.poisson.pmf(y, mu)
    else:
        p = theta / (theta + mu)
        below, at = stats.nbinom.cdf(y - 1, theta, p), stats.nbinom.pmf(y, theta, p)
    if kind == "zinb":
        pi = 1 / (1 + np.exp(-gate))
        below, at = np.where(y >= 1, pi + (1 - pi) * below, 0.0), (1 - pi) * at + pi * (y == 0)
    return below.mean(0), at.mean(0)


def _exact_nb_below_at(y, mu, theta):
    """NB P(X < y), P(X = y) per draw from log p(k) = sum_{i<k} log1p((i - mu) / (theta + mu))
    - log k! + k log mu - theta log1p(mu / theta) (no cancellation at any theta), summed over k."""
    below, at = np.empty(mu.shape), np.empty(mu.shape)
    for s, j in itertools.product(range(mu.shape[0]), range(mu.shape[1])):
        m, t, k = mu[s, j], theta[s, j], int(y[j])
        i = np.arange(k + 1, dtype=np.float64)
        logp = (np.r_[0.0, np.cumsum(np.log1p((i[:-1] - m) / (t + m)))] - gammaln(i + 1) + i * np.log(m)
                - t * np.log1p(m / t))
        p = np.exp(logp)
        below[s, j], at[s, j] = math.fsum(p[:-1]), p[-1]
    return below, at


@pytest.mark.parametrize("kind", KINDS)
def test_mixture_below_and_at_matches_scipy(kind):
    """The pmf recursion (counts up to max_steps) and its fallback (larger counts, near-underflow
    P(X = 0)) against scipy.stats over counts 0..80, the recursion's edge (64, 65) and large counts,
    means from 1e-3 to 900 and concentrations from 1e-3 to 1e8; a mixture of 3 draws per entry."""
    rng = np.random.default_rng(0)
    ys = np.r_[np.arange(0, 81), 64, 65, 200, 900, 3000].astype(np.float64)
    mus, thetas = [1e-3, 0.5, 3.0, 40.0, 900.0], [1e-3, 0.3, 5.0, 1e3, 1e8]
    y, mu, th = grid(ys, mus, thetas)
    # three draws per entry: the grid's parameters scaled by different factors
    mu_s = mu[None] * np.array([1.0, 0.7, 1.4])[:, None]
    th_s = th[None] * np.array([1.0, 1.3, 0.8])[:, None]
    g_s = rng.normal(-1.0, 1.0, size=mu_s.shape)
    th_k = None if kind == "poisson" else th_s
    g_k = g_s if kind == "zinb" else None
    below, at = lk.mixture_below_and_at(kind, y, mu_s, th_k, g_k)
    want_below, want_at = _scipy_below_at(kind, y, mu_s, th_s, g_s)
    assert below.dtype == at.dtype == np.float64 and below.shape == y.shape
    big = th >= 1e6 if kind != "poisson" else np.zeros(len(y), bool)
    for got, want in ((below, want_below), (at, want_at)):
        np.testing.assert_allclose(got[~big], want[~big], rtol=1e-10, atol=1e-14)
    if np.any(big):  # scipy's nbinom loses ~1e-5 relative at theta ~ 1e8: the product formula instead
        exact_below, exact_at = _exact_nb_below_at(y[big], mu_s[:, big], th_s[:, big])
        if kind == "zinb":
            pi = 1 / (1 + np.exp(-g_s[:, big]))
            yy = y[big]
            exact_below = np.where(yy >= 1, pi + (1 - pi) * exact_below, 0.0)
            exact_at = (1 - pi) * exact_at + pi * (yy == 0)
        np.testing.assert_allclose(below[big], exact_below.mean(0), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(at[big], exact_at.mean(0), rtol=1e-10, atol=1e-14)
    # the recursion and the special-function path agree to near machine precision
    old_below = lk.cdf(kind, y[None] - 1, mu_s, th_k, g_k).mean(0)
    old_at = lk.pmf(kind, y[None], mu_s, th_k, g_k).mean(0)
    np.testing.assert_allclose(below, old_below, rtol=1e-8 if kind != "poisson" else 1e-11, atol=1e-14)
    np.testing.assert_allclose(at, old_at, rtol=1e-11, atol=1e-300)
    no_rec = lk.mixture_below_and_at(kind, y, mu_s, th_k, g_k, max_steps=0)
    np.testing.assert_allclose(no_rec[0], old_below, rtol=0, atol=0)
    np.testing.assert_allclose(no_rec[1], old_at[:], rtol=0, atol=0)


def test_mixture_below_and_at_broadcasts_draws_over_entries():
    """Parameters (S, 1, G) broadcast against counts (n, G), as the GLM's per-gene theta does."""
    rng = np.random.default_rng(1)
    mu = rng.gamma(1.0, 3.0, size=(5, 4, 6))
    th = rng.gamma(2.0, 1.0, size=(5, 1, 6))
    y = rng.poisson(3.0, size=(4, 6)).astype(np.float64)
    below, at = lk.mixture_below_and_at("nb", y, mu, th)
    want_below, want_at = _scipy_below_at("nb", y, mu, th, None)
    np.testing.assert_allclose(below, want_below, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(at, want_at, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- inversion sampler
INVERSE_CASES = [  # small means (inversion, some past max_steps), large means (Gamma-Poisson), ZINB
    ("poisson", 0.3, None, None), ("poisson", 3.5, None, None), ("poisson", 40.0, None, None),
    ("nb", 0.05, 0.02, None), ("nb", 2.0, 0.5, None), ("nb", 3.9, 0.02, None), ("nb", 1.0, 1e8, None),
    ("nb", 30.0, 2.0, None), ("zinb", 2.0, 0.5, -1.0), ("zinb", 20.0, 3.0, 0.5),
]


@pytest.mark.parametrize(("kind", "mu", "theta", "gate"), INVERSE_CASES)
def test_sample_counts_inverse_matches_the_exact_pmf(kind, mu, theta, gate):
    """Chi-square goodness of fit of 200,000 draws against the exact pmf (cells with >= 20 expected,
    the rest pooled), plus the moments as in test_sample_counts_moments."""
    n = 200_000
    rng = np.random.default_rng(11)
    x = lk.sample_counts_inverse(kind, rng, np.full(n, mu), None if theta is None else np.full(n, theta),
                                 None if gate is None else np.full(n, gate))
    assert x.shape == (n,) and x.dtype == np.int64 and x.min() >= 0
    kmax = int(x.max())
    p = lk.pmf(kind, np.arange(kmax + 1.0), mu, theta, gate)
    expected = n * p
    keep = expected >= 20
    obs = np.r_[np.bincount(x, minlength=kmax + 1)[keep], n - np.bincount(x, minlength=kmax + 1)[keep].sum()]
    exp = np.r_[expected[keep], n - expected[keep].sum()]
    if exp[-1] < 20:  # fold a tiny pooled cell into the largest one
        obs, exp = obs[:-1], exp[:-1]
        obs[np.argmax(exp)] += n - obs.sum()
        exp[np.argmax(exp)] += n - exp.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-4
    pi = 0.0 if gate is None else float(1 / (1 + np.exp(-gate)))
    mean, var, se_mean, se_var = moments(mu, theta, pi)
    assert abs(x.mean() - mean) <= 5 * se_mean * math.sqrt(N_DRAWS / n)


@pytest.mark.parametrize(("kind", "mu", "theta"), [("nb", 3.0, 0.05), ("nb", 1.5, 4.0), ("poisson", 3.9, None)])
def test_inversion_by_recursion_equals_scipy_inverse_cdf(kind, mu, theta):
    """The recursion's inversion and scipy's ppf at the same uniforms (max_steps=0 sends every nonzero
    draw to scipy's ppf) give the same counts."""
    n = 100_000
    mus = np.random.default_rng(3).uniform(0.1, mu, n)
    th = None if theta is None else np.full(n, theta)
    a = lk.sample_counts_inverse(kind, np.random.default_rng(5), mus, th)
    b = lk.sample_counts_inverse(kind, np.random.default_rng(5), mus, th, max_steps=0)
    assert np.mean(a > 0) > 0.1
    np.testing.assert_array_equal(a, b)


def test_sample_counts_inverse_broadcasts_and_uses_given_zero_prob():
    rng = np.random.default_rng(2)
    mu = rng.gamma(1.0, 2.0, size=(4, 3, 5))
    th = rng.gamma(2.0, 1.0, size=(4, 1, 5))
    x = lk.sample_counts_inverse("nb", np.random.default_rng(0), mu, th)
    assert x.shape == (4, 3, 5) and x.dtype == np.int64
    y = lk.sample_counts_inverse("nb", np.random.default_rng(0), mu, th, p0=lk.zero_prob("nb", mu, th))
    np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(lk.zero_prob("nb", mu, th), stats.nbinom.pmf(0, th, th / (th + mu)), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_draws_mean_and_sample_agree_with_moments(kind):
    """Draws.mean is the first of Draws.moments (ZINB: (1 - pi) mu), and Draws.sample (inversion for
    small means, Gamma-Poisson above) has that mean."""
    from probgex.inference.predictive import Draws

    rng = np.random.default_rng(4)
    mu = rng.gamma(1.0, 3.0, size=(40, 3, 4))
    th = None if kind == "poisson" else rng.gamma(2.0, 1.0, size=(40, 1, 4))
    g = rng.normal(size=(40, 1, 4)) if kind == "zinb" else None
    d = Draws(kind, mu, th, g)
    m, sd = d.moments()
    np.testing.assert_allclose(d.mean(), m, rtol=1e-12)
    x = np.stack([d.sample(rng) for _ in range(250)]).astype(np.float64)  # (250, 40, 3, 4)
    se = sd / np.sqrt(x.shape[0] * x.shape[1])
    assert np.all(np.abs(x.mean((0, 1)) - m) < 5 * se)


@pytest.mark.parametrize("kind", ["poisson", "nb", "zinb"])
def test_logpmf_matches_scipy_and_stays_finite_in_far_tails(kind):
    """lk.logpmf against scipy's logpmf, including counts whose probability underflows to 0 in
    linear space (a held-out outlier must score a finite log density, not -inf)."""
    from scipy import stats
    mu = np.array([3.0, 50.0, 2000.0])
    theta = np.array([0.7, 5.0, 40.0])
    gate = np.array([-1.0, 0.5, -3.0])
    y = np.array([[0, 7, 1900], [400, 0, 20000]], float)  # the second row: far tails
    got = lk.logpmf(kind, y, mu, None if kind == "poisson" else theta, gate if kind == "zinb" else None)
    if kind == "poisson":
        want = stats.poisson.logpmf(y, mu)
    else:
        want = stats.nbinom.logpmf(y, theta, theta / (theta + mu))
        if kind == "zinb":
            pi = 1 / (1 + np.exp(-gate))
            want = np.where(y == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + want), np.log1p(-pi) + want)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-9)
