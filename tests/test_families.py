"""Every registered count family against SciPy and against its own pmf, driven by the registry.

Parameters are generated from each family's layout (a grid per role), so a new family is tested by
registering it; it only needs its SciPy reference below (`REFERENCE`, checked to cover the registry):
log-pmf values (JAX in float64 and float32, host), shapes under broadcasting, jit, vmap, gradients, the
count split, the NumPyro distribution, cdf, zero probability, moments and sampling.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import expit, gammaln

from probgex.errors import SpecError
from probgex.inference.predictive import Draws
from probgex.models import likelihoods as lk
from probgex.models.families import NAMES, family
from probgex.models.families.base import DISPERSION, LOGIT, MEAN
from probgex.spec import ModelSpec

GRID = {MEAN: [0.05, 1.0, 8.0, 150.0], DISPERSION: [0.2, 2.0, 50.0, 1e4], LOGIT: [-2.0, 0.0, 1.5]}
XS = np.array([0, 1, 2, 3, 7, 30, 200, 1500], np.float64)


# ----------------------------------------------------------------------------- SciPy references
def _nb(p):
    return p["theta"], p["theta"] / (p["theta"] + p["mu"])


def _zinb_logpmf(x, p):
    pi = expit(p["gate"])
    nb = np.log1p(-pi) + stats.nbinom.logpmf(x, *_nb(p))
    return np.where(x == 0, np.logaddexp(np.log(pi), nb), nb)


def _hurdle_logpmf(x, p):
    pi = expit(p["hurdle"])
    pos = np.log1p(-pi) + stats.nbinom.logpmf(x, *_nb(p)) - stats.nbinom.logsf(0, *_nb(p))
    return np.where(x == 0, np.log(pi), pos)


def _hurdle_cdf(x, p):
    pi = expit(p["hurdle"])
    trunc = (stats.nbinom.cdf(x, *_nb(p)) - stats.nbinom.pmf(0, *_nb(p))) / stats.nbinom.sf(0, *_nb(p))
    return np.where(x >= 0, pi + (1 - pi) * np.maximum(trunc, 0.0), 0.0)


REFERENCE = {  # name -> (logpmf(x, p), cdf(x, p)) from scipy.stats
    "poisson": (lambda x, p: stats.poisson.logpmf(x, p["mu"]), lambda x, p: stats.poisson.cdf(x, p["mu"])),
    "nb": (lambda x, p: stats.nbinom.logpmf(x, *_nb(p)), lambda x, p: stats.nbinom.cdf(x, *_nb(p))),
    "zinb": (_zinb_logpmf,
             lambda x, p: np.where(x >= 0, expit(p["gate"]) + expit(-p["gate"]) * stats.nbinom.cdf(x, *_nb(p)), 0.0)),
    "hurdle_nb": (_hurdle_logpmf, _hurdle_cdf),
}


def grid_params(fam, grid=GRID):
    """Every combination of the layout's grid values: a dict of 1-d float64 arrays."""
    axes = [grid[q.role] for q in fam.params]
    cols = np.array(list(itertools.product(*axes)), np.float64).T
    return dict(zip(fam.names, cols))


def some_params(fam, mu, dispersion=2.0, logit=-0.5):
    value = {MEAN: mu, DISPERSION: dispersion, LOGIT: logit}
    return {q.name: np.float64(value[q.role]) for q in fam.params}


@pytest.fixture(params=NAMES)
def fam(request):
    return family(request.param)


# ----------------------------------------------------------------------------- the registry
def test_registry_rows_are_complete_families():
    assert set(REFERENCE) == set(NAMES), "every registered family needs a SciPy reference in REFERENCE"
    for name in NAMES:
        f = family(name)
        assert f.name == name and f.params[0].name == "mu" and f.params[0].role == MEAN
        assert all(q.role in (MEAN, DISPERSION, LOGIT) for q in f.params)
        assert f.mean_family in NAMES
        assert ModelSpec("~ 1", likelihood=name).likelihood == name
    with pytest.raises(SpecError, match="unknown likelihood 'gaussian'"):
        family("gaussian")
    with pytest.raises(SpecError, match="likelihood"):
        ModelSpec("~ 1", likelihood="gaussian")


def test_likelihoods_by_name_route_through_the_registry(fam):
    """`likelihoods.logpmf / pmf / cdf / zero_prob(name, x, mu, ...)` (`log_prob`: test_likelihoods) are the family's own
    methods, for every registered family (a new one needs no edit there), with the parameters in the
    layout's order; a missing one is named in the error."""
    p = grid_params(fam)
    args = [p[n] for n in fam.names]
    x = XS[:, None]
    np.testing.assert_array_equal(lk.logpmf(fam.name, x, *args), fam.logpmf(x, p))
    np.testing.assert_array_equal(lk.pmf(fam.name, x, *args), fam.pmf(x, p))
    np.testing.assert_array_equal(lk.cdf(fam.name, x, *args), fam.cdf(x, p))
    np.testing.assert_array_equal(lk.zero_prob(fam.name, *args), fam.zero_prob(p))
    if len(args) > 1:
        with pytest.raises(ValueError, match=f"needs {fam.names[-1]}"):
            lk.pmf(fam.name, x, *args[:-1])
    # the Gamma-Poisson kernels (and `explain`) apply to the families that say so; theirs agree
    if fam.gamma_poisson:
        theta, gate = p.get("theta"), next((p[q.name] for q in fam.role(LOGIT)), None)
        np.testing.assert_allclose(lk.gp_pmf(x, p["mu"], theta, gate), fam.pmf(x, p), rtol=1e-12)


# ----------------------------------------------------------------------------- JAX log-pmf
def test_log_prob_matches_scipy(fam):
    """JAX in float64 (1e-8 relative), the host logpmf (1e-9) and exp(logpmf) = pmf."""
    p = grid_params(fam)
    x = XS[:, None]
    want = REFERENCE[fam.name][0](x, p)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(fam.log_prob)(x, p))
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fam.logpmf(x, p), want, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fam.pmf(x, p), np.exp(want), rtol=1e-8, atol=1e-300)
    assert np.all(fam.logpmf(np.array([-1.0]), p) == -np.inf) and np.all(fam.pmf(np.array([-1.0]), p) == 0)


def test_log_prob_float32_and_gradients(fam):
    """The fit runs in float32: 1e-4 relative + 1e-4 absolute, with finite gradients in every parameter."""
    p = {k: v.astype(np.float32) for k, v in grid_params(fam).items()}
    x = XS[:, None].astype(np.float32)
    got = jax.jit(fam.log_prob)(x, p)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, REFERENCE[fam.name][0](XS[:, None], grid_params(fam)), rtol=1e-4, atol=1e-4)
    grads = jax.jit(jax.grad(lambda q: fam.log_prob(x, q).sum()))(p)
    assert set(grads) == set(fam.names) and all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())


def test_unnormalized_count_split_and_distribution(fam):
    """normalized=False drops exactly log x!; count_term=False drops exactly nb_count_term (count-split
    families only, the others refuse it); the NumPyro distribution has the same log-pmf and shape."""
    p = grid_params(fam)
    x = XS[:, None]

    def parts(x, p):
        out = {"full": fam.log_prob(x, p), "unnorm": fam.log_prob(x, p, normalized=False),
               "dist": fam.distribution(p).log_prob(x)}
        if fam.count_split:
            out["part"] = fam.log_prob(x, p, normalized=False, count_term=False)
            out["part_dist"] = fam.distribution(p, normalized=False, count_term=False).log_prob(x)
            out["r"] = lk.nb_count_term(x, p["theta"])
        return out

    with jax.enable_x64(True):
        o = {k: np.asarray(v) for k, v in jax.jit(parts)(x, p).items()}
    full, unnorm = o["full"], o["unnorm"]
    np.testing.assert_allclose(unnorm - gammaln(x + 1), full, rtol=1e-12, atol=1e-9)
    assert fam.distribution(p).batch_shape == (len(p["mu"]),)
    np.testing.assert_allclose(o["dist"], full, rtol=1e-12, atol=1e-12)
    if fam.count_split:
        part = o["part"]
        np.testing.assert_allclose(part + o["r"], unnorm, rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(part[0], unnorm[0])  # r(x, theta) = 0 at x = 0 ...
        np.testing.assert_allclose(part[1], unnorm[1], rtol=1e-12, atol=1e-12)  # ... and at x = 1
        np.testing.assert_allclose(o["part_dist"], part, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="count_term=False"):
        fam.log_prob(x, p, count_term=False)  # normalized: refused for every family
    if not fam.count_split:
        with pytest.raises(ValueError, match="count_split"):
            fam.log_prob(x, p, normalized=False, count_term=False)


def test_broadcasting_jit_and_vmap(fam):
    """Counts (2, 3, 1) against a mean (4,) and other parameters (3, 1): shape (2, 3, 4) under jit, and
    under vmap over an axis of counts and parameters, equal to the host logpmf."""
    x = np.arange(6.0).reshape(2, 3, 1)
    p = {q.name: np.array([0.5, 4.0, 30.0, 2.0]) if q.role == MEAN
         else np.array(GRID[q.role][:3]).reshape(3, 1) for q in fam.params}
    want = fam.logpmf(x, p)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    jitted = jax.jit(fam.log_prob)(x, p32)
    assert jitted.shape == want.shape == (2, 3, 4)
    np.testing.assert_allclose(jitted, want, rtol=1e-5, atol=1e-5)
    rows = {k: jnp.broadcast_to(v, (3, 4)) for k, v in p32.items()}  # row i: the parameters of x[:, i]
    per_row = jax.jit(jax.vmap(fam.log_prob, in_axes=(1, 0), out_axes=1))(x, rows)
    np.testing.assert_allclose(per_row, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- host pmf, cdf, moments
HOST = {MEAN: [0.05, 1.0, 8.0, 40.0], DISPERSION: [0.7, 5.0, 1e3], LOGIT: [-2.0, 1.0]}
KMAX = 4000


def test_cdf_zero_prob_and_moments_match_scipy_and_the_pmf(fam):
    """cdf against SciPy and against the cumulative pmf; P(X = 0) = pmf(0); E[X] and E[X^2] from
    `moments` (and `mean`) against sums over the pmf; the pmf sums to 1."""
    p = grid_params(fam, HOST)
    x = np.arange(-1, KMAX + 1, dtype=np.float64)[:, None]
    pmf, cdf = fam.pmf(x, p), fam.cdf(x, p)
    assert pmf.dtype == cdf.dtype == np.float64 and np.all(cdf[0] == 0)
    np.testing.assert_allclose(cdf[:200], REFERENCE[fam.name][1](x[:200], p), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cdf, np.cumsum(pmf, 0), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(pmf.sum(0), 1.0, rtol=1e-10)
    np.testing.assert_allclose(fam.zero_prob(p), pmf[1], rtol=1e-12, atol=1e-300)
    m, second = fam.moments(p)
    np.testing.assert_allclose(m, (x * pmf).sum(0), rtol=1e-9)
    np.testing.assert_allclose(second, (x**2 * pmf).sum(0), rtol=1e-9)
    np.testing.assert_allclose(fam.mean(p), m, rtol=1e-12)


def test_mixture_fast_paths_equal_their_definition(fam):
    """Draws' P(X < y), P(X = y) (the families' fast paths) are the draw-averaged cdf and pmf; Draws'
    moments are the law of total variance over the family's moments."""
    rng = np.random.default_rng(0)
    S, n, G = 6, 5, 4
    p = {q.name: rng.gamma(2.0, 2.0, (S, n, G)) if q.role == MEAN
         else rng.gamma(2.0, 1.0, (S, 1, G)) if q.role == DISPERSION else rng.normal(-0.5, 1.0, (S, 1, G))
         for q in fam.params}
    d = Draws.of(fam, p)
    y = rng.poisson(3.0, (n, G)).astype(np.float64)
    y[0, 0] = 90.0  # beyond the recursion's max_steps
    below, at = d.below_and_at(y)
    np.testing.assert_allclose(below, fam.cdf(y[None] - 1, d.params).mean(0), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(at, fam.pmf(y[None], d.params).mean(0), rtol=1e-9, atol=1e-14)
    m, second = fam.moments(d.params)
    mean, sd = d.moments()
    np.testing.assert_allclose(mean, m.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sd**2, second.mean(0) - m.mean(0) ** 2, rtol=1e-9)
    np.testing.assert_allclose(d.mean(), mean, rtol=1e-12)


# ----------------------------------------------------------------------------- sampling
N_DRAWS = 100_000


@pytest.mark.parametrize("mu", [0.4, 6.0, 60.0])
def test_sampling_moments_and_goodness_of_fit(fam, mu):
    """`sample` and Draws' sampler (the family's fast path): mean and variance within 5 standard errors
    of the pmf's, and a chi-square test of the counts against the pmf."""
    p = some_params(fam, mu)
    x = np.arange(KMAX + 1.0)
    w = fam.pmf(x, p)
    m = (x * w).sum()
    var = ((x - m) ** 2 * w).sum()
    c4 = ((x - m) ** 4 * w).sum()
    se_m, se_v = math.sqrt(var / N_DRAWS), math.sqrt((c4 - var**2) / N_DRAWS)
    rng = np.random.default_rng(20261202)
    direct = fam.sample(rng, p, size=(N_DRAWS,))
    fast = Draws.of(fam, {k: np.full((N_DRAWS, 1, 1), v) for k, v in p.items()}).sample(rng).ravel()
    for draws in (direct, fast):
        assert draws.shape == (N_DRAWS,) and draws.dtype == np.int64 and draws.min() >= 0
        assert abs(draws.mean() - m) <= 5 * se_m
        assert abs(draws.var(ddof=1) - var) <= 5 * se_v
        counts = np.bincount(draws, minlength=len(x))[: len(x)]
        expected = N_DRAWS * w
        keep = expected >= 20
        obs = np.r_[counts[keep], N_DRAWS - counts[keep].sum()]
        exp = np.r_[expected[keep], N_DRAWS - expected[keep].sum()]
        if exp[-1] < 20:
            obs, exp = obs[:-1], exp[:-1]
            exp = exp * obs.sum() / exp.sum()
        assert stats.chisquare(obs, exp).pvalue > 1e-4
    one = fam.sample(rng, p)
    assert one.shape == () and one.dtype == np.int64


# ----------------------------------------------------------------------------- fitting
def simulate(fam, seed: int = 0, n: int = 160):
    """Counts from `fam` under the GLM ~ group: mu_ng = l_n rho_g(group) with known library sizes l_n
    (a Poisson "filler" gene takes the rest of each library, so the observed total is l_n up to noise),
    theta = 3 and the logits spread over [-1.5, 1.5] across the genes. Returns AnnData and the truth."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    grp = np.repeat(["a", "b"], n // 2)
    lib = np.exp(rng.normal(np.log(2000.0), 0.3, n))
    rho = np.array([[1.0, 3.0, 8.0, 20.0, 2.0, 5.0], [2.0, 3.0, 4.0, 40.0, 6.0, 5.0]])[(grp == "b").astype(int)] / 2000
    G = rho.shape[1]
    p = {"mu": lib[:, None] * rho}
    for q in fam.params[1:]:
        p[q.name] = np.full((n, G), 3.0) if q.role == DISPERSION else np.broadcast_to(np.linspace(-1.5, 1.5, G), (n, G))
    x = fam.sample(rng, p)
    filler = rng.poisson(lib * (1 - rho.sum(1)))
    obs = pd.DataFrame({"group": pd.Categorical(grp)}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(np.column_stack([x, filler]).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(G)] + ["filler"]))
    return adata, p


def check_glm_fit(name: str, *, calibration: bool):
    """A GLM of family `name` on counts simulated from it: per gene the predictive P(X = 0) within 0.08
    of the truth and the mean within a factor 1.33 (and, with `calibration`, the 90% PIT coverage of
    the simulated genes within 0.05 of 0.9)."""
    from probgex.fit import Model

    fam = family(name)
    adata, p = simulate(fam)
    G = p["mu"].shape[1]
    fit = Model("~ group", likelihood=name, library="observed").fit(adata, seed=0, progress=False, batch_size=160,
                                                                    max_epochs=600)
    mean, zero = np.zeros(p["mu"].shape), np.zeros(p["mu"].shape)
    for rows, d in fit.predictive_blocks(fit.data(adata), 200, jax.random.PRNGKey(0)):
        d = d.genes(np.arange(G))
        mean[rows] = d.moments()[0]
        zero[rows] = d.below_and_at(np.zeros((len(rows), G)))[1]
    true_mean = fam.moments(p)[0]
    for sel in (adata.obs["group"] == "a", adata.obs["group"] == "b"):
        sel = np.asarray(sel)
        assert np.all(np.abs(zero[sel].mean(0) - fam.zero_prob(p)[sel].mean(0)) < 0.08)
        ratio = mean[sel].mean(0) / true_mean[sel].mean(0)
        assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio
    if calibration:
        pit = fit.evaluate(adata, n_samples=100, seed=0)["pit"].values[:, :G]
        assert abs(np.mean((pit >= 0.05) & (pit <= 0.95)) - 0.9) < 0.05
    return fit, adata


@pytest.mark.slow  # 10-14 s: the default suite measured 11:25 in .ci/run with 727 tests
def test_hurdle_nb_glm_tiny_fit():
    """The new family through `Model` (likelihood="hurdle_nb"): the GLM's vector per gene is
    [Intercept, group, log alpha, hurdle logit], and it recovers the simulated zero probabilities and
    means (`check_glm_fit`; its calibration check runs in the slow step)."""
    fit, _ = check_glm_fit("hurdle_nb", calibration=False)
    assert fit.story.D == 2 + 1 + 1 and fit.spec.likelihood == "hurdle_nb"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # coverage by decile: 7 genes leave some deciles empty
def test_hurdle_nb_calibration_cvae_and_model_file(tmp_path):
    """The hurdle-NB GLM is calibrated on its own simulation and round-trips through a model file; a
    hurdle-NB cVAE (30 steps) trains, with a decoder head for the hurdle, and predicts finite counts."""
    from probgex.fit import Model, load

    fit, adata = check_glm_fit("hurdle_nb", calibration=True)
    kw = dict(n_samples=10, library_size=2000.0, seed=3)
    again = load(fit.save(tmp_path / "hurdle.npz"))
    assert again.spec.likelihood == "hurdle_nb"
    np.testing.assert_array_equal(again.predict(adata.obs.iloc[:4], **kw)["counts"].values,
                                  fit.predict(adata.obs.iloc[:4], **kw)["counts"].values)
    vae = Model("~ group", likelihood="hurdle_nb", latent=2, encoder=(8,), decoder=(8,), library="observed").fit(
        adata, seed=0, progress=False, batch_size=160, max_epochs=30, learning_rate=0.01, holdout=0.0)
    assert vae.history.train[-1] < vae.history.train[0]
    assert len(vae.story.decoder.heads) == 2 and "log_theta" in vae.params  # mean and hurdle heads
    pred = vae.predict(adata.obs.iloc[:8], **kw)
    assert np.all(np.isfinite(pred["mean"].values)) and pred["counts"].values.min() >= 0
