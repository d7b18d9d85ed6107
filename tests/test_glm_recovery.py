"""Parameter recovery and calibration of the GLM story on counts simulated from a GLM with known
coefficients and dispersions: log mu_ng = log l_n + beta_0g + beta_b,g [group b] + beta_c,g [group c]
+ beta_x,g x_n, x_ng ~ NB(mu_ng, theta_g) (or Poisson).

The fit takes the observed total count as l_n. For the truth to be the fitted model's truth, the
simulated genes take a share of at most 0.9 of l_n in every observation and one extra "filler" gene
(Poisson, no covariate effects in the usual sense) takes the rest in expectation, so E[total] = l_n
exactly; the filler gene is fitted but left out of every check.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import gammaln

from probgex.fit import Model

G = 120  # simulated genes (+1 filler): 3 x 120 = 360 non-intercept (gene, coef) pairs
N_TRAIN, N_TEST = 300, 100
FORMULA = "~ group + x"
LEVELS = (0.5, 0.8, 0.9, 0.95)


def simulate(kind: str, seed: int):
    """AnnData of N_TRAIN + N_TEST observations, the true beta (4, G) and theta (G,)."""
    import anndata as ad

    n = N_TRAIN + N_TEST
    rng = np.random.default_rng(seed)
    group = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    x = rng.normal(0, 1, n)
    X = np.column_stack([np.ones(n), group == "b", group == "c", x])
    beta = np.vstack([rng.uniform(-1.5, 1.5, G), rng.normal(0, 0.5, (2, G)), rng.normal(0, 0.3, G)])
    beta[0] += np.log(0.3 / np.exp(beta[0]).sum())  # the genes take ~30% of a library at baseline
    rho = np.exp(X @ beta)
    assert rho.sum(1).max() < 0.9
    theta = np.exp(rng.uniform(np.log(2), np.log(50), G))  # dispersions spread over 2..50
    lib = np.exp(rng.normal(np.log(20000), 0.4, n))  # log-normal library sizes
    mu = lib[:, None] * rho
    y = rng.poisson(rng.gamma(theta, mu / theta)) if kind == "nb" else rng.poisson(mu)
    filler = rng.poisson(lib * (1 - rho.sum(1)))
    counts = np.column_stack([y, filler]).astype(np.float32)
    obs = pd.DataFrame({"group": group, "x": x}, index=[f"obs{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"gene{g}" for g in range(G)] + ["filler"])
    return ad.AnnData(X=counts, obs=obs, var=var), beta, theta, rho


def _recovery(fit, beta):
    """Posterior means, sds, 90% intervals of the simulated genes' coefficients, and their z-scores."""
    c = fit.coefficients(levels=(0.9,))
    assert list(c["coef"].values) == ["Intercept", "group[T.b]", "group[T.c]", "x"]
    mean, sd = c["mean"].values[:, :G], c["sd"].values[:, :G]
    lower, upper = c["lower"].sel(level=0.9).values[:, :G], c["upper"].sel(level=0.9).values[:, :G]
    return mean, sd, (lower <= beta) & (beta <= upper), (mean - beta) / sd


@pytest.fixture(scope="module")
def nb():
    adata, beta, theta, rho = simulate("nb", seed=0)
    train, test = adata[:N_TRAIN].copy(), adata[N_TRAIN:].copy()
    fit = Model(FORMULA, likelihood="nb", library="observed").fit(train, seed=0, progress=False)  # default settings, the simulation's library
    return fit, test, beta, theta, rho[N_TRAIN:]


# ------------------------------------------------------------------ NB: coefficients
def test_nb_coefficients_recovered(nb):
    fit, _, beta, _, _ = nb
    mean, sd, _, z = _recovery(fit, beta)
    # Posterior sds here are ~0.04-0.07 (median), so a calibrated posterior mean misses the truth by
    # ~0.8 sd ~ 0.04 on average; 0.08 is twice that, and far below the coefficients' spread (0.3-0.5).
    assert np.abs(mean[1:] - beta[1:]).mean() < 0.08
    assert np.abs(mean[0] - beta[0]).mean() < 0.08
    # Errors in units of the posterior sd: RMS 1 when the sds are right; with 360 pairs its sampling
    # sd is ~0.04, so [0.8, 1.2] (5 sd) flags sds that are too small or too large by 20%.
    assert 0.8 < np.sqrt(np.mean(z[1:] ** 2)) < 1.2
    assert np.isfinite(sd).all() and (sd > 0).all()


def test_nb_90pct_intervals_cover_the_truth(nb):
    fit, _, beta, _, _ = nb
    _, _, covered, _ = _recovery(fit, beta)
    # 360 (gene, coef) pairs; binomial sd of the share at 0.9 is 1.6%: [0.85, 0.95] is 3 sd
    assert 0.85 <= covered[1:].mean() <= 0.95


def test_nb_dispersions_recovered(nb):
    fit, _, _, theta, _ = nb
    P = fit.dims.n_design
    log_theta_hat = -fit.params["gp_loc"][:G, P]  # the column after the design holds log(1/theta)
    err = log_theta_hat - np.log(theta)
    # With ~270 observations and mean counts ~45 the sd of an estimate of log theta is ~0.1-0.2
    # (largest for theta ~ 50, near-Poisson genes), so the median absolute error should be ~0.1.
    assert np.median(np.abs(err)) < 0.2
    assert abs(np.median(err)) < 0.1  # no systematic shrinkage
    assert stats.spearmanr(log_theta_hat, theta)[0] > 0.9


# ------------------------------------------------------------------ NB: held-out calibration
@pytest.fixture(scope="module")
def nb_eval(nb):
    fit, test, _, _, _ = nb
    return fit.evaluate(test, n_samples=50, levels=LEVELS)


def test_nb_heldout_pit_calibrated(nb_eval):
    """A correctly specified model predicts new observations with calibrated intervals: the share of
    randomized PIT values inside each central band equals its level."""
    ev = nb_eval
    pit = ev["pit"].values[:, :G]
    assert pit.shape == (N_TEST, G) and ((pit >= 0) & (pit <= 1)).all()
    coverage = np.array([np.mean((pit >= (1 - a) / 2) & (pit <= (1 + a) / 2)) for a in LEVELS])
    # 12,000 entries, correlated within a gene through its posterior and within an observation
    # through its library size: effective size >= ~3,000, binomial sd <= 0.009 at 50%; parameter
    # uncertainty widens the predictive by ~0.01. Tolerance 0.03 is 3 sd.
    np.testing.assert_allclose(coverage, LEVELS, atol=0.03)
    np.testing.assert_allclose(ev["coverage"].values, LEVELS, atol=0.03)
    assert ev["coverage_by_decile"].shape == (10, len(LEVELS))
    # the PIT is uniform, not just right at these bands
    assert stats.kstest(pit.ravel()[::7], "uniform").pvalue > 1e-3


def test_nb_log_predictive_density_near_the_truth(nb, nb_eval):
    """log p(x_n | c_n) per held-out observation is finite, and below the log-likelihood under the
    true parameters by a few nats per observation on average."""
    _, test, _, theta, rho = nb
    lpd = nb_eval["log_predictive_density"]
    assert lpd.dims == ("obs",) and list(lpd["obs"].values) == list(test.obs_names)
    assert np.isfinite(lpd.values).all()
    y = np.asarray(test.X, np.float64)
    lib = y.sum(1)
    mu = lib[:, None] * rho
    true_ll = stats.nbinom.logpmf(y[:, :G], theta, theta / (theta + mu)).sum(1)
    m = lib * (1 - rho.sum(1))  # the filler gene: Poisson, its mean not log-linear in x
    true_ll += y[:, G] * np.log(m) - m - gammaln(y[:, G] + 1)
    gap = true_ll - lpd.values
    # The truth beats any other density on average (the gap is a KL divergence, >= 0); ~600 fitted
    # gene parameters from 270 observations cost ~600 / (2 * 270) ~ 1 nat per new observation and the
    # misspecified filler gene ~1 more (measured ~2-3 in all, sd of the mean over 100 obs ~0.2). A
    # density missing a term (log x! alone is ~ -300 per observation here), using a wrong library size
    # or a wrong dispersion scale is off by far more than 5 nats.
    assert 0 < gap.mean() < 5


# ------------------------------------------------------------------ Poisson
@pytest.fixture(scope="module")
def poisson():
    """Poisson GLM, fitted to convergence: lr 0.002, no held-out split, 2000 epochs (6000 steps); the
    recovery test passes with this on every simulation seed tried (0-3; pooled coverage 0.89-0.92,
    RMS z 0.9-1.1); lr 0.005 with 3000 steps does not always (the scale of the `x` coefficient is
    still shrinking: coverage up to 0.96). With the defaults (lr 0.02, early stopping) the guide's
    scales are far from converged when the held-out loss stalls: test_poisson_default_settings_calibrated."""
    adata, beta, _, _ = simulate("poisson", seed=1)
    fit = Model(FORMULA, likelihood="poisson", library="observed").fit(adata[:N_TRAIN].copy(), seed=0, holdout=0.0,
                                                   max_epochs=2000, learning_rate=0.002, progress=False)
    return fit, beta


def test_poisson_coefficients_recovered_and_covered(poisson):
    fit, beta = poisson
    assert fit.params["gp_loc"].shape == (G + 1, 4)  # coefficients only, no dispersion column
    mean, sd, covered, z = _recovery(fit, beta)
    # posterior sds ~0.015-0.03: a calibrated posterior misses by ~0.02 on average
    assert np.abs(mean[1:] - beta[1:]).mean() < 0.04
    assert 0.8 < np.sqrt(np.mean(z[1:] ** 2)) < 1.2
    assert 0.85 <= covered[1:].mean() <= 0.95


def test_without_holdout_best_epoch_is_the_epoch_of_the_returned_params(poisson):
    fit, _ = poisson
    assert fit.history.heldout == []
    assert fit.history.best_epoch == len(fit.history.train) == 2000


@pytest.mark.slow
def test_poisson_default_settings_calibrated():
    """Default settings (Laplace start of the guide scales, learning-rate cuts on plateaus, early
    stopping): measured 0.87-0.92 coverage and RMS z 0.93-1.03 over simulation seeds 0-4."""
    adata, beta, _, _ = simulate("poisson", seed=1)
    fit = Model(FORMULA, likelihood="poisson", library="observed").fit(adata[:N_TRAIN].copy(), seed=0, progress=False)
    _, _, covered, z = _recovery(fit, beta)
    assert 0.85 <= covered[1:].mean() <= 0.95
    assert 0.8 < np.sqrt(np.mean(z[1:] ** 2)) < 1.2
