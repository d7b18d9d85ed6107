"""Diagnostics have power: a correctly specified model passes, misspecified ones fail clearly."""

import json
import re

import anndata as ad
import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import probgex as pg
from probgex import rng
from probgex import diagnostics as dg
from probgex.diagnostics.pit import genes_inside_band, simultaneous_band, uniformity
from probgex.diagnostics.report_html import CAPTIONS
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
    assert s["verdict"]["status"] in ("calibrated", "partly calibrated")  # programs are judged apart


def test_poisson_on_overdispersed_counts_fails_clearly(nb_data):
    train, test = nb_data
    s = dg.check(fit(train, "poisson"), test, n_samples=100, progress=False).summary()
    assert s["coverage"]["0.9"] < 0.75
    assert not s["pit_uniformity"]["pooled"]["inside_band"]
    assert s["pit_uniformity"]["fraction_genes_passing"] < 0.3
    assert s["verdict"]["status"] == "miscalibrated" and "too narrow" in s["verdict"]["text"]


@pytest.mark.slow  # 14-18 s: the default suite stays under its 10 minutes
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
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    # reads for a biologist: the verdict agrees with the band test; a sentence per section; captions
    v = report["verdict"]
    assert (v["status"] == "miscalibrated") == (not report["pit_uniformity"]["pooled"]["inside_band"])
    assert f"Verdict: {v['status']}." in page
    assert page.count("What good looks like:") == len(re.findall(r"<h2>", page)) == 6
    srcs = re.findall(r"<img src='([^']*)'", page)
    assert len(srcs) == len(CAPTIONS) and all(s.startswith("data:image/png;base64,") for s in srcs)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == len(CAPTIONS) and not any(".png" in c or "_" in c for c in captions)
    assert {p.name for p in tmp_path.glob("*.png")} >= {"pit_ecdf.png", "coverage.png", "rootograms_worst_genes.png",
                                                       "summary_statistics.png", "mean_variance.png"}
    dt = dg.to_datatree(f, test, genes=["g0", "g1", "g2"], n_samples=40)
    assert set(dt.children) >= {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    assert dt.attrs["genes"] == ["g0", "g1", "g2"]
    assert dt["posterior_predictive"]["g1"].dims == ("chain", "draw", "obs")
    np.testing.assert_array_equal(dt["observed_data"]["g1"].values, test[:, "g1"].X.ravel())
    pit = az.loo_pit(dt)
    assert set(pit.data_vars) == {"g0", "g1", "g2"}
    assert all(pit[g].shape == (test.n_obs,) and np.all((pit[g] >= 0) & (pit[g] <= 1 + 1e-9)) for g in pit)
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
    rows, d = next(nb_fit.predictive_blocks(data, 50, rng.stream(0, "predictive")))  # check's draws at seed 0
    np.testing.assert_allclose(one.results["predicted_mean"].values[rows], d.moments()[0], rtol=1e-6)
    with pytest.raises(ValueError, match="workers"):
        dg.check(nb_fit, test, n_samples=50, progress=False, workers=0)


def simulate_program(rng, n, G=40, k=10, sd=0.5):
    """NB counts (as `simulate`) whose first k genes share a per-cell log-scale factor s_n ~ N(0, sd^2)
    that the metadata do not explain: a co-varying gene program. The other genes carry ~90% of each
    library, so the observed library size does not reveal s_n."""
    group = rng.choice(["a", "b"], n)
    b0 = np.concatenate([rng.uniform(-4.5, -3.5, k), rng.uniform(-4, -2, G - k)])
    b1 = rng.normal(0, 0.7, G)
    s = np.where(np.arange(G) < k, 1.0, 0.0)[None] * rng.normal(0, sd, (n, 1))
    lib = rng.lognormal(np.log(2000), 0.3, n)
    mu = lib[:, None] * np.exp(b0[None] + (group == "b")[:, None] * b1[None] + s)
    x = rng.poisson(rng.gamma(10.0, mu / 10.0))
    return ad.AnnData(x.astype(np.float32), obs=pd.DataFrame({"group": group}, index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))


@pytest.fixture(scope="module")
def program_data():
    a = simulate_program(np.random.default_rng(3), 900)
    return a[:500].copy(), a[500:].copy()


def program_check(f, train, test):
    s = dg.check(f, test, n_samples=100, progress=False, reference=train, program_size=10, n_top_genes=40)
    return s.summary()["gene_programs"]


@pytest.mark.slow  # 14-18 s: the default suite stays under its 10 minutes
def test_joint_calibration_finds_the_program_and_fails_an_independent_model(program_data):
    """Per-entry PIT cannot see gene-gene covariance; the PIT of program sums can. Chosen on the training
    data (`reference`), net of the library size and the design, the correlated program is the simulated
    one, and a model treating genes as independent given metadata under-covers its sums badly while
    random gene sets stay near nominal."""
    train, test = program_data
    prog = program_check(fit(train, "nb"), train, test)
    assert set(prog["correlated"]["genes"]) == {f"g{j}" for j in range(10)}
    assert prog["correlated"]["coverage"]["0.9"] < 0.7  # 0.525 when written; nominal 0.9, SE 0.015
    rand = np.mean([v["coverage"]["0.9"] for k, v in prog.items() if k.startswith("random")])
    # random 10-gene sets of the 40 top genes (a quarter of them in the program, on average): measured
    # 0.910 / 0.928 / 0.943 / 0.950 at seeds 0-3 of the test's draws with the streams before probgex.rng
    # and 0.945-0.948 with them (the old bound, |rand - 0.9| < 0.04, held at 2 of those 4 seeds: a lucky
    # seed, not a property); they over-cover a little and, unlike the program, never under-cover
    assert 0.88 < rand < 0.97
    assert rand - prog["correlated"]["coverage"]["0.9"] > 0.25


@pytest.mark.slow
def test_joint_calibration_of_a_latent_model_on_the_same_program(program_data):
    """A cVAE with a 2-D latent captures the shared factor: its program sums are calibrated (400 test
    cells: binomial SE 0.015 at 90%, 0.025 at 50%; 4 SE allowed)."""
    train, test = program_data
    f = pg.Model("~ group", likelihood="nb", latent=pg.latent.Gaussian(dim=2), encoder=(32,), decoder=(32,)).fit(
        train, seed=0, progress=False, empty="keep", holdout=0.0, batch_size=512, max_epochs=1500)
    cov = program_check(f, train, test)["correlated"]["coverage"]
    assert abs(cov["0.9"] - 0.9) < 4 * 0.015 and abs(cov["0.5"] - 0.5) < 4 * 0.025, cov
