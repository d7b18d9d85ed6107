"""Diagnostics have power: a correctly specified model passes, misspecified ones fail clearly."""

import json

import anndata as ad
import arviz as az
import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import probgex as pg
from probgex import diagnostics as dg
from probgex.diagnostics.pit import genes_inside_band, simultaneous_band, uniformity
from probgex.diagnostics.scores import crps_from_samples, interval_score

LEVELS = (0.5, 0.8, 0.9, 0.95)


def simulate(rng, n, G=30, zero_inflation=0.0):
    """NB counts from a GLM with a two-level group effect and per-gene concentrations in [2, 20]."""
    group = rng.choice(["a", "b"], n)
    b0 = rng.uniform(-6, -3, G)
    b1 = rng.normal(0, 0.7, G)
    theta = np.exp(rng.uniform(np.log(2), np.log(20), G))
    lib = rng.lognormal(np.log(2000), 0.3, n)
    mu = lib[:, None] * np.exp(b0[None] + (group == "b")[:, None] * b1[None])
    x = rng.poisson(rng.gamma(theta[None], mu / theta[None]))
    x[rng.uniform(size=x.shape) < zero_inflation] = 0
    return ad.AnnData(x.astype(np.float32), obs=pd.DataFrame({"group": group}, index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))


@pytest.fixture(scope="module")
def nb_data():
    rng = np.random.default_rng(0)
    a = simulate(rng, 700)
    return a[:400].copy(), a[400:].copy()


@pytest.fixture(scope="module")
def zi_data():
    rng = np.random.default_rng(1)
    a = simulate(rng, 700, zero_inflation=0.3)
    return a[:400].copy(), a[400:].copy()


def fit(train, likelihood):
    # full batch, no held-out split (one compiled program): 600 Adam steps converge on 400 x 30
    return pg.Model("~ group", likelihood=likelihood).fit(train, seed=0, progress=False, empty="keep",
                                                          holdout=0.0, batch_size=512, max_epochs=600)


@pytest.fixture(scope="module")
def nb_fit(nb_data):
    return fit(nb_data[0], "nb")


def test_simultaneous_band_has_its_nominal_rejection_rate():
    band = simultaneous_band(300, 20, 0.99)
    rng = np.random.default_rng(5)
    u = rng.uniform(size=(300, 2000))  # 2,000 independent uniform samples of size 300
    reject = 1 - genes_inside_band(u, 0.99, 20).mean()
    assert band.lower.shape == band.z.shape
    assert abs(reject - 0.01) < 3 * np.sqrt(0.01 * 0.99 / 2000) + 0.002
    # power against a U-shaped PIT (an under-dispersed predictive) at n = 300: measured 0.99
    assert 1 - genes_inside_band(rng.beta(0.6, 0.6, (300, 500)), 0.99, 20).mean() > 0.9
    assert uniformity(rng.uniform(size=50_000))["inside_band"]
    assert not uniformity(rng.beta(1.1, 1.1, 50_000))["inside_band"]


def test_crps_sample_estimate_matches_exact_sum_for_nb():
    rng = np.random.default_rng(2)
    mu, theta, y = 7.0, 3.0, 12
    p = theta / (theta + mu)
    k = np.arange(0, 400)
    exact = np.sum((stats.nbinom.cdf(k, theta, p) - (y <= k)) ** 2)
    draws = stats.nbinom.rvs(theta, p, size=(200_000, 1), random_state=rng)
    est = crps_from_samples(draws, np.array([y]))[0]
    assert est == pytest.approx(exact, rel=0.02)


@pytest.mark.parametrize("S", [37, 200])
def test_intervals_from_sorted_samples_equal_numpy_inverted_cdf_quantiles(S):
    from probgex.inference.predictive import empirical_intervals

    x = np.random.default_rng(S).poisson(5, (S, 30, 40))
    q = np.quantile(x, [0.25, 0.05, 0.75, 0.95], axis=0, method="inverted_cdf")
    lo, hi = empirical_intervals(x, (0.5, 0.9))
    assert np.array_equal(lo, q[:2]) and np.array_equal(hi, q[2:])


def test_interval_score_closed_form():
    assert interval_score(np.array(2.0), np.array(6.0), np.array(4.0), 0.9) == 4.0
    assert interval_score(np.array(2.0), np.array(6.0), np.array(8.0), 0.9) == pytest.approx(4 + 2 / 0.1 * 2)


def test_true_nb_model_passes(nb_data, nb_fit):
    test = nb_data[1]
    rep = dg.check(nb_fit, test, n_samples=100, progress=False)
    s = rep.summary()
    n_entries = test.n_obs * test.n_vars
    for a, c in s["coverage"].items():
        a = float(a)
        # entries are nearly independent given the true parameters: binomial MC error, 4 SE
        assert abs(c - a) < 4 * np.sqrt(a * (1 - a) / n_entries) + 0.005, s["coverage"]
    assert s["pit_uniformity"]["pooled"]["inside_band"]
    assert s["pit_uniformity"]["fraction_genes_passing"] >= 0.9


def test_poisson_on_overdispersed_counts_fails_clearly(nb_data):
    train, test = nb_data
    s = dg.check(fit(train, "poisson"), test, n_samples=100, progress=False).summary()
    assert s["coverage"]["0.9"] < 0.75
    assert not s["pit_uniformity"]["pooled"]["inside_band"]
    assert s["pit_uniformity"]["fraction_genes_passing"] < 0.3


def test_nb_on_zero_inflated_counts_fails_and_zinb_passes(zi_data):
    train, test = zi_data
    nb = dg.check(fit(train, "nb"), test, n_samples=100, progress=False).summary()
    assert not nb["pit_uniformity"]["pooled"]["inside_band"]
    assert nb["pit_uniformity"]["pooled"]["max_excursion"] > 2
    zinb = dg.check(fit(train, "zinb"), test, n_samples=100, progress=False).summary()
    assert zinb["pit_uniformity"]["pooled"]["max_excursion"] < nb["pit_uniformity"]["pooled"]["max_excursion"] / 2


def test_report_files_and_arviz_export(nb_data, nb_fit, tmp_path):
    test, f = nb_data[1], nb_fit
    rep = dg.check(f, test, n_samples=50, progress=False)
    rep.save(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["coverage"]) == {"0.5", "0.8", "0.9", "0.95"}
    for key in ("coverage_by_decile", "pit_uniformity", "mean_log_predictive_density", "n_obs", "n_genes"):
        assert key in report
    assert report["n_obs"] == test.n_obs and report["n_genes"] == test.n_vars
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    assert {p.name for p in tmp_path.glob("*.png")} >= {"pit_ecdf.png", "coverage.png", "rootograms_worst_genes.png",
                                                       "summary_statistics.png", "mean_variance.png"}
    dt = dg.to_datatree(f, test, genes=["g0", "g1", "g2"], n_samples=40)
    assert set(dt.children) >= {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    assert dt["posterior_predictive"]["x"].dims == ("chain", "draw", "obs", "gene")
    pit = az.loo_pit(dt)["x"].values
    assert pit.shape == (test.n_obs, 3) and np.all((pit >= 0) & (pit <= 1 + 1e-9))
    one = dt.sel(gene="g0")  # ArviZ's count plots take one-dimensional observations
    assert az.plot_ppc_pit(one) is not None and az.plot_ppc_rootogram(one) is not None
    with pytest.raises(ValueError, match="genes not in the model"):
        dg.to_datatree(f, test, genes=["nope"])


def test_check_results_do_not_depend_on_the_number_of_threads(nb_data, nb_fit):
    """Blocks are scored on worker threads with per-block random streams: the same numbers from 1 or 3
    workers (two blocks of observations here), and the predictive mean is the exact mixture mean."""
    test = nb_data[1]
    one = dg.check(nb_fit, test, n_samples=50, progress=False, workers=1)
    three = dg.check(nb_fit, test, n_samples=50, progress=False, workers=3)
    for name in ("pit", "predicted_mean", "crps", "interval_score", "program_pit", "coverage_by_decile"):
        np.testing.assert_array_equal(one.results[name].values, three.results[name].values)
    np.testing.assert_array_equal(one.ppc.rep_sum, three.ppc.rep_sum)
    data = nb_fit.data(test)
    rows, d = next(nb_fit.predictive_blocks(data, 50, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(one.results["predicted_mean"].values[rows], d.moments()[0], rtol=1e-6)
    with pytest.raises(ValueError, match="workers"):
        dg.check(nb_fit, test, n_samples=50, progress=False, workers=0)
