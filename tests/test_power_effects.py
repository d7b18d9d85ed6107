"""Truths with their own fold changes (probgex.power.effects, Truth.lfc, power_grid's reference_n and
min_abs_lfc): the empirical-Bayes shrinkage against closed forms, the reference-called DE set against
the true one, and power predicted from a fit's posterior fold changes against the empirical power of
the truth that generated the data."""

import jax
import numpy as np
import pytest
from scipy import stats

from probgex.errors import DataError, SpecError
from probgex.power import Truth, curve, power_grid, truth_from_fit
from probgex.power.effects import fit_normal_mixture, shrink_draws

CONTRAST = ("group", "b", "a")


def test_mixture_recovers_null_share():
    rng = np.random.default_rng(0)
    G = 4000
    b = np.where(rng.random(G) < 0.7, 0.0, rng.normal(0, 2.0, G))
    s = rng.uniform(0.3, 0.8, G)
    pi, grid = fit_normal_mixture(b + s * rng.normal(size=G), s)
    assert grid[0] == 0 and abs(pi.sum() - 1) < 1e-9
    assert abs(pi[grid <= 0.1].sum() - 0.7) < 0.06, pi  # (near-)null: sigma <= 0.1 is no change at s >= 0.3
    assert pi[0] > 0.5  # the null-biased penalty keeps that weight on the point mass
    big = pi[grid > 1.0].sum()
    assert abs(big - 0.3) < 0.06, big


def test_shrunk_draws_match_the_closed_form_posterior():
    """One gene, two prior components (point mass + N(0, 1)): mean, variance and P(b = 0) of the
    mapped draws against the exact mixture posterior."""
    rng = np.random.default_rng(1)
    b_hat, s = np.array([0.9]), np.array([0.5])
    grid, pi = np.array([0.0, 1.0]), np.array([0.6, 0.4])
    draws = b_hat + s * rng.normal(size=(200_000, 1))
    out = shrink_draws(draws, b_hat, s, pi, grid, rng)[:, 0]
    w = pi * stats.norm.pdf(b_hat[0], 0, np.sqrt(grid**2 + s[0] ** 2))
    w /= w.sum()
    m1, v1 = b_hat[0] / (1 + s[0] ** 2), s[0] ** 2 / (1 + s[0] ** 2)
    assert abs((out == 0).mean() - w[0]) < 0.005
    assert abs(out.mean() - w[1] * m1) < 0.005
    assert abs(out.var() - (w[1] * (v1 + m1**2) - (w[1] * m1) ** 2)) < 0.005


def _truth(n_draws=4):
    rng = np.random.default_rng(2)
    G = 60
    lfc = np.where(np.arange(G) < 20, 2.0, np.where(np.arange(G) < 30, 0.5, 0.0)) * rng.choice([-1, 1], G)
    return Truth.fixed(rng.uniform(0.005, 0.03, G), 0.05, n_draws=n_draws, lfc=lfc), lfc


@pytest.mark.slow  # 10-14 s: the default suite measured 11:25 in .ci/run with 727 tests
def test_reference_called_set_matches_the_true_set():
    """A large reference experiment calls (nearly) the truly DE genes, so power scored against it
    matches power scored against the true set; power among |log2FC| > 1 is that of the strong genes."""
    truth, lfc = _truth()
    opts = dict(fdr=0.05, depth=2000.0, depth_sd=0.2, n_rep=6, progress=False, min_abs_lfc=(1.0,))
    true_set = power_grid(truth, [3, 5], key=jax.random.PRNGKey(0), **opts)
    ref_set = power_grid(truth, [3, 5], key=jax.random.PRNGKey(0), reference_n=40, **opts)
    # the 30 DE genes are found, plus a few false calls (the test's FDR runs above nominal on 60 genes:
    # the dispersion trend and prior are fitted on few genes)
    n_ref = ref_set["n_de_reference"].values
    assert np.all((n_ref >= 28) & (n_ref <= 36)), n_ref
    for n in (3, 5):
        a, b = true_set.sel(n=n), ref_set.sel(n=n)
        se = np.hypot(float(a["power_mc_se"]), float(b["power_mc_se"]))
        assert abs(float(a["power_mean"]) - float(b["power_mean"])) < 3 * se + 0.03
        strong = float(a["power_lfc_mean"].sel(min_abs_lfc=1.0))
        assert strong > float(a["power_mean"]) + 0.05  # the 0.5 genes are harder
    assert ref_set.attrs["reference_n"] == 40 and true_set.attrs["reference_n"] == -1


def test_posterior_fold_changes_centre_on_the_truth(glm_fit):
    rng = np.random.default_rng(0)  # conftest._small_adata's draws: batch, base rates, effects
    rng.integers(0, 2, 150)
    base = rng.uniform(0.02, 0.08, 24)
    eff = rng.normal(0, 0.7, (2, 24))[0]
    # the GLM's library is the sample's total count, so its 'b' rates are shares of b's total: the
    # identifiable log fold change is the effect minus log of b's total relative to a's
    true_l2 = (eff - np.log((base * np.exp(eff)).sum() / base.sum())) / np.log(2)
    post = truth_from_fit(glm_fit, CONTRAST, 400, jax.random.PRNGKey(3), effects="posterior")
    z = (post.lfc.mean(0) - true_l2) / post.lfc.std(0)
    assert np.mean(np.abs(z)) < 1.5 and np.max(np.abs(z)) < 4, z
    shrunk = truth_from_fit(glm_fit, CONTRAST, 400, jax.random.PRNGKey(3), effects="shrunk")
    assert np.all(np.abs(shrunk.lfc.mean(0)) <= np.abs(post.lfc.mean(0)) + 0.05)  # shrinks toward 0
    assert np.allclose(shrunk.log_rate, post.log_rate) and np.allclose(shrunk.alpha, post.alpha)


def test_predicted_power_with_posterior_effects_matches_the_truth(glm_fit):
    """Power predicted from the fit's own posterior fold changes (DE set called on a reference
    experiment per draw) matches the empirical power of the generating truth scored the same way."""
    rng = np.random.default_rng(0)
    rng.integers(0, 2, 150)
    beta0 = np.log(rng.uniform(0.02, 0.08, 24))
    true_l2 = rng.normal(0, 0.7, (2, 24))[0] / np.log(2)
    frac = np.exp(beta0) / np.exp(beta0).sum()
    opts = dict(fdr=0.1, n_rep=4, progress=False, depth=600.0, depth_sd=0.3)
    pred = curve(glm_fit, CONTRAST, [3, 6], key=jax.random.PRNGKey(4), n_draws=12, effects="posterior",
                 reference_n=30, **opts)
    emp = power_grid(Truth.fixed(frac, 0.1, n_draws=12, lfc=true_l2), [3, 6], key=jax.random.PRNGKey(5),
                     reference_n=30, **opts)
    for n in (3, 6):
        p, e = pred.sel(n=n), emp.sel(n=n)
        se = np.hypot(float(p["power_mc_se"]), float(e["power_mc_se"]))
        assert abs(float(p["power_mean"]) - float(e["power_mean"])) < 3 * se + 0.03, (n, float(p["power_mean"]),
                                                                                      float(e["power_mean"]))


def test_errors(glm_fit):
    truth, lfc = _truth()
    key = jax.random.PRNGKey(0)
    with pytest.raises(SpecError, match="reference_n calls"):
        power_grid(Truth.fixed(np.full(5, 0.01), 0.1), [3], key=key, reference_n=10, progress=False)
    with pytest.raises(SpecError, match="reference_n must be"):
        power_grid(truth, [3], key=key, reference_n=1, progress=False)
    with pytest.raises(SpecError, match="min_abs_lfc"):
        power_grid(truth, [3], key=key, min_abs_lfc=(-1.0,), progress=False)
    with pytest.raises(DataError, match="one log2 fold change per gene"):
        Truth.fixed(np.full(5, 0.01), 0.1, lfc=np.zeros(4))
    with pytest.raises(DataError, match="Truth.lfc"):
        Truth(truth.log_rate, truth.alpha, truth.genes, np.zeros((1, 3)))
    with pytest.raises(SpecError, match="effects must be"):
        truth_from_fit(glm_fit, CONTRAST, 4, key, effects="ash")
    with pytest.raises(SpecError, match="pass reference_n"):
        curve(glm_fit, CONTRAST, [3], key=key, effects="shrunk", progress=False)
    with pytest.raises(DataError, match="positive standard errors"):
        fit_normal_mixture(np.zeros(3), np.array([0.1, 0.0, 0.2]))
    with pytest.raises(DataError, match="null_weight"):
        fit_normal_mixture(np.zeros(3), np.full(3, 0.1), null_weight=0.5)


def test_nested_experiments_are_subsamples_of_the_reference():
    """With n = reference_n a nested experiment is the reference experiment itself (samples permuted
    within groups): it calls exactly the reference's genes, so power is 1 and the FDP 0."""
    truth, _ = _truth(n_draws=3)
    ds = power_grid(truth, [4, 6], key=jax.random.PRNGKey(7), reference_n=6, nested=True, fdr=0.05, depth=2000.0,
                    n_rep=2, progress=False)
    assert np.allclose(ds["power"].sel(n=6), 1.0) and np.allclose(ds["fdp"].sel(n=6), 0.0)
    assert float(ds["power_mean"].sel(n=4)) < 1.0
    with pytest.raises(SpecError, match="nested"):
        power_grid(truth, [8], key=jax.random.PRNGKey(7), reference_n=6, nested=True, progress=False)
