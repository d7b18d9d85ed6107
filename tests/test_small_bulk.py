"""Small bulk designs on real counts (the embedded Schurch yeast set): the GLM's mean-dispersion trend
against an independent DESeq2-style computation, and held-out coverage of a small split (issue 13).

The trend test failed before issue 13 (with 1-2 residual degrees of freedom the ELBO's empirical Bayes
flattened the trend: a1 0.2-0.7 where the profile likelihood gives 1-7; the library was total counts); the coverage test still fails (strict xfail: see
its reason) and is the guard for the sample-quality work.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import optimize, stats

import probgex as pg

@pytest.fixture(scope="module")
def yeast():
    a = pg.datasets.schurch_yeast()
    a = a[~a.obs["flagged_bad_rep"].astype(bool)]
    return a


def _subset(a, names, n_genes=600, seed=0):
    b = a[names]
    x = np.asarray(b.X)
    genes = np.flatnonzero((x > 0).all(0) & (x.mean(0) >= 5))  # expressed genes, as a user filters
    genes = np.sort(np.random.default_rng(seed).choice(genes, n_genes, replace=False))
    return b[:, genes].copy()


def _profile_likelihood_trend(y: np.ndarray, groups: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """The trend written out with NumPy / SciPy, independently of probgex: median-of-ratios size factors,
    fitted means = group means of the normalised counts (one row pattern per coefficient), and the (a0, a1)
    maximising the Cox-Reid adjusted NB profile likelihood summed over all genes at
    alpha_g = a0 + a1 / m_g (edgeR's trended common dispersion, parametric)."""
    logy = np.log(y)
    sf = np.exp(np.median(logy - logy.mean(0), axis=1))
    yn = y / sf[:, None]
    levels = np.unique(groups)
    X = (groups[:, None] == levels[None]).astype(float)
    mu = sf[:, None] * (X @ np.linalg.lstsq(X, yn, rcond=None)[0])

    def neg_apl(theta):
        a = np.exp(theta[0]) + np.exp(theta[1]) / m  # (G,)
        ll = stats.nbinom.logpmf(y, 1 / a, 1 / (1 + a * mu)).sum(0)
        w = mu / (1 + a * mu)  # X'WX is diagonal for a one-hot design: its log det is a sum
        cr = np.log(np.einsum("ng,np->gp", w, X)).sum(1)
        return -(ll - 0.5 * cr).sum()

    res = optimize.minimize(neg_apl, np.log([0.05, 1.0]), method="Nelder-Mead",
                            options={"xatol": 1e-5, "fatol": 1e-6, "maxiter": 2000})
    return float(np.exp(res.x[0])), float(np.exp(res.x[1]))


def test_trend_with_one_residual_df_matches_an_independent_profile_likelihood_fit(yeast):
    """3 samples (2 WT + 1 Snf2), `~ strain`: 1 residual degree of freedom. The fitted trend's a0 and
    a1 within 2% of the independent computation (measured: 1e-5; they share the recipe, not the code: the tolerance
    covers float32, Adam's last steps and the GLM's mean normalised count, taken at the mean library)."""
    wt = list(yeast.obs_names[yeast.obs["strain"] == "WT"][:2])
    snf = list(yeast.obs_names[yeast.obs["strain"] == "Snf2"][:1])
    a = _subset(yeast, wt + snf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a0, a1 are placed before SVI and held: a few epochs suffice to read them back
        fit = pg.Model("~ strain", likelihood="nb").fit(a, seed=0, progress=False, max_epochs=5)
    assert fit.spec.library == "size_factors"  # "auto" on bulk counts
    y = np.asarray(a.X, float)
    lib = fit.data(a).library_size
    m = (y / lib[:, None]).mean(0) * lib.mean()  # the GLM's mean normalised count
    a0, a1 = _profile_likelihood_trend(y, np.asarray(a.obs["strain"]), m)
    got0, got1 = float(fit.params["disp_asymptote"]), float(fit.params["disp_extra_poisson"])
    assert got1 == pytest.approx(a1, rel=0.02), (got0, got1, a0, a1)
    assert got0 == pytest.approx(a0, rel=0.02), (got0, got1, a0, a1)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "open (issue 13): over-covers, 0.658 / 0.964 at 50 / 90% (2026-12-04; 0.709 / 0.968 before issue 13; the "
    "DESeq2 plug-in 0.639 / 0.948). A property of this training set, not of its 4 held-out samples: it covers "
    "0.658 / 0.969 of all 82 other clean replicates, and over 8 random 2+2 training draws one design's 50% "
    "coverage ranges 0.455-0.738 (pooled 0.526 / 0.884: the guard over draws is the pooled test below); "
    "benchmarks/README.md, 'The small-split guard over training draws'. Strict, so a fix turns this red"))
def test_heldout_coverage_of_a_small_split(yeast):
    """Train on 4 samples (2 per strain, 2 residual df), predict 4 other samples from their strain
    and size factors; randomized PIT over the 600 genes. Bands: 50% within [0.42, 0.60], 90% within
    [0.84, 0.95] (binomial SE over 2,400 correlated entries ~1-2 pp; the bands leave room for the
    between-sample spread, not for a predictive too wide by a factor)."""
    wt = list(yeast.obs_names[yeast.obs["strain"] == "WT"])
    snf = list(yeast.obs_names[yeast.obs["strain"] == "Snf2"])
    train_names, test_names = wt[:2] + snf[:2], wt[10:12] + snf[10:12]
    a = _subset(yeast, train_names + test_names)
    train, test = a[train_names].copy(), a[test_names].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pg.Model("~ strain", likelihood="nb").fit(train, seed=0, progress=False)
    ev = fit.evaluate(test, n_samples=200, levels=(0.5, 0.9), seed=0)
    cov = ev["coverage"].values
    assert 0.42 <= cov[0] <= 0.60 and 0.84 <= cov[1] <= 0.95, cov
    assert np.isfinite(ev.attrs["mean_log_predictive_density"])


@pytest.mark.slow
def test_heldout_coverage_pooled_over_random_two_vs_two_splits(yeast):
    """Four random 2-vs-2 training designs of clean yeast replicates (2 residual df), each predicting one
    other replicate per strain; randomized PIT over 600 genes, pooled (9,600 entries). Measured 0.555 /
    0.906 at 50 / 90% (the DESeq2-style defaults; the same splits gave 0.539 / 0.910 before issue 13, whose
    misses were on other data). Bands: 50% within [0.48, 0.60], 90% within [0.86, 0.94]; and a finite
    held-out log density for every sample."""
    wt = list(yeast.obs_names[yeast.obs["strain"] == "WT"])
    snf = list(yeast.obs_names[yeast.obs["strain"] == "Snf2"])
    pits = []
    for draw in range(4):
        rng = np.random.default_rng(draw)
        w, s = list(rng.choice(wt, 3, replace=False)), list(rng.choice(snf, 3, replace=False))
        train_names, test_names = w[:2] + s[:2], [w[2], s[2]]
        a = _subset(yeast, train_names + test_names, seed=draw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = pg.Model("~ strain", likelihood="nb").fit(a[train_names].copy(), seed=0, progress=False)
        ev = fit.evaluate(a[test_names].copy(), n_samples=200, levels=(0.5, 0.9), seed=0)
        assert np.isfinite(ev["log_predictive_density"].values).all()
        pits.append(ev["pit"].values.ravel())
    p = np.concatenate(pits)
    cov50, cov90 = (np.mean(np.abs(p - 0.5) <= lv / 2) for lv in (0.5, 0.9))
    assert 0.48 <= cov50 <= 0.60 and 0.86 <= cov90 <= 0.94, (cov50, cov90)



class _NBGLMTruth:
    """The GLM's own generative story with known parameters: one factor, log mean + level effects, NB
    dispersions alpha_g = (a0 + a1 / m_g) exp(e_g), e_g ~ N(0, s^2), library sizes exp(N(0, 0.25^2))."""

    def __init__(self, rng, K=3, G=400, s=0.6, a0=0.02, a1=3.0):
        self.log_mean = rng.normal(np.log(200.0), 1.8, G)
        self.eff = rng.normal(0.0, 0.5, (K, G)) * (rng.random((K, G)) < 0.3)
        self.eff[0] = 0.0
        self.theta = 1.0 / ((a0 + a1 / np.exp(self.log_mean)) * np.exp(rng.normal(0.0, s, G)))

    def samples(self, rng, n_per_level, prefix):
        import anndata as ad
        import pandas as pd
        x, grp = [], []
        for k, n in enumerate(n_per_level):
            mu = np.exp(rng.normal(0.0, 0.25, n))[:, None] * np.exp(self.log_mean + self.eff[k])[None]
            x.append(rng.poisson(rng.gamma(self.theta[None], mu / self.theta[None])))
            grp += [f"g{k}"] * n
        G = len(self.theta)
        return ad.AnnData(np.concatenate(x).astype(np.float32),
                          obs=pd.DataFrame({"grp": grp}, index=[f"{prefix}{i}" for i in range(len(grp))]),
                          var=pd.DataFrame(index=[f"gene{j}" for j in range(G)]))


@pytest.mark.slow  # ~20 s quiet, 1.5 min on a loaded 2-core machine (3,000 epochs on 4 samples)
def test_a_correctly_specified_design_with_one_residual_df_is_calibrated():
    """What the real-data rows cannot separate from their few held-out samples (benchmarks/
    calibration_noise.py): is the default fit calibrated at 1 residual df when the model is right?
    Training: 2 + 1 + 1 samples of three levels (`~ grp`); 20 new samples per level predicted from their
    level; randomized PIT over the genes with test mean >= 5 (new samples are independent here, so ~12,000
    entries give a coverage to ~1-2 pp). Measured 0.51-0.54 / 0.89-0.91 at 50 / 90% over 3 seeds of the
    1,000-gene version (benchmarks/README.md), 0.518 / 0.895 here. Bands [0.46, 0.58] and [0.86, 0.94]."""
    rng = np.random.default_rng(3)
    truth = _NBGLMTruth(rng)
    train, test = truth.samples(rng, (2, 1, 1), "train"), truth.samples(rng, (20, 20, 20), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pg.Model("~ grp", likelihood="nb").fit(train, seed=0, progress=False)
    ev = fit.evaluate(test, n_samples=200, levels=(0.5, 0.9), seed=0)
    pit = ev["pit"]
    genes = pit[pit.dims[1]].values
    keep = np.asarray(test[:, genes].X).mean(0) >= 5
    p = pit.values[:, keep]
    cov50, cov90 = (np.mean(np.abs(p - 0.5) <= lv / 2) for lv in (0.5, 0.9))
    assert 0.46 <= cov50 <= 0.58 and 0.86 <= cov90 <= 0.94, (cov50, cov90)


def _trend_inputs(s_true: float):
    """(truth, y, X, size factors, mean normalised counts) of 2 + 1 + 1 samples of 2,000 genes from the GLM's
    own story with log dispersions N(trend, s_true^2): what `place_trend` takes."""
    import formulaic

    rng = np.random.default_rng(0)
    truth = _NBGLMTruth(rng, G=2000, s=s_true)
    a = truth.samples(rng, (2, 1, 1), "t")
    y = np.asarray(a.X, np.float64)
    X = np.asarray(formulaic.model_matrix("~ grp", a.obs), np.float64)
    logy = np.log(np.where(y > 0, y, np.nan))
    ok = np.isfinite(logy).all(0)
    sf = np.exp(np.median(logy[:, ok] - logy[:, ok].mean(0), axis=1))
    return truth, y, X, sf, (y / sf[:, None]).mean(0)


def _placed_prior_sd(s_true: float) -> float:
    from probgex.models.trend import place_trend

    _, y, X, sf, m = _trend_inputs(s_true)
    return place_trend(y, X, sf, np.log(np.maximum(m, 1e-8)))[2]


@pytest.mark.parametrize("s_true", [0.4, 1.0])
def test_the_trends_prior_sd_is_recovered_at_one_residual_df(s_true):
    """Counts from the GLM's own story (2 + 1 + 1 samples, 2,000 genes, log dispersions N(trend, s^2)):
    the placed prior sd tracks the truth above DESeq2's floor 0.5 and sits at the floor below it. Measured
    by marginal likelihood before the floor 0.30-0.36 for s = 0.4 and 0.73-0.81 for s = 1.0 (3 seeds, 1,000
    genes): a low bias at 1 df. The moment rule it replaced gave its floor 0.5 for both. Bands: 0.6-1.2 x
    the truth, or the floor for a truth below it."""
    s = _placed_prior_sd(s_true)  # warnings are errors here: no DispersionPriorWarning below the grid's top
    if s_true < 0.5:
        assert s == pytest.approx(0.5, abs=1e-4), s
    else:
        assert 0.6 * s_true <= s <= 1.2 * s_true, s


def test_a_prior_sd_at_the_grids_top_warns():
    """Dispersions scattered with sd 5 around the trend (what a left-out interaction or batch does to
    gene-wise dispersions, gse60450 at 1-2 df): the marginal-likelihood s stops at its largest candidate
    3.0, and the fit says so instead of silently widening every interval."""
    from probgex.models.trend import S_GRID

    with pytest.warns(pg.DispersionPriorWarning, match="leaves out"):
        s = _placed_prior_sd(5.0)
    assert s == pytest.approx(S_GRID[1], rel=1e-3)


def test_the_prior_location_option_recovers_a_known_median_below_the_trended_common_dispersion():
    """Log dispersions N(log(a0 + a1 / m), 1) (2 + 1 + 1 samples, 2,000 genes): the trended common dispersion
    (the profile-likelihood trend, a mean-type estimate) sits above the dispersions' median, 1.73 x it here;
    `location="marginal"` (`models.trend.marginal_prior`) places the prior's median by the marginal
    likelihood: measured 1.05 x the truth, s 0.98. Bands: median within [0.85, 1.2] x the truth, s within
    [0.8, 1.2]; the default location stays above 1.4 x (not the default: it lowered held-out LPD,
    benchmarks/README.md 'The prior's location by marginal likelihood')."""
    from probgex.models.trend import place_trend

    truth, y, X, sf, m = _trend_inputs(1.0)
    true_median = 0.02 + 3.0 / np.exp(truth.log_mean)  # _NBGLMTruth's a0, a1 at the true means
    ratio = {}
    for loc in ("trend", "marginal"):
        a0, a1, s = place_trend(y, X, sf, np.log(np.maximum(m, 1e-8)), location=loc)
        ratio[loc] = (float(np.median((a0 + a1 / np.maximum(m, 1e-8)) / true_median)), s)
    assert 0.85 <= ratio["marginal"][0] <= 1.2 and 0.8 <= ratio["marginal"][1] <= 1.2, ratio
    assert ratio["trend"][0] > 1.4, ratio
    with pytest.raises(ValueError, match="location"):
        place_trend(y, X, sf, np.log(np.maximum(m, 1e-8)), location="median")
