"""The GLM's learned coefficient prior (`coef_prior="learned"`): one prior sd per formula term, fitted by the
ELBO from all genes. Counts simulated from `~ c * g` with known per-term effect sds; the cells of one c x g pair
are left out of the fit, as in the unseen-combination benchmark, so its interaction column is all zero."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from probgex.data import DesignWarning
from probgex.errors import SpecError
from probgex.fit import Model
from probgex.spec import ModelSpec

G, PER_PAIR = 150, 12
SD = {"c": 1.0, "g": 0.6, "c:g": 0.3}  # true sd of every term's coefficients across genes
UNSEEN = "c[T.d]:g[T.stim]"


def simulate(seed: int = 0) -> tuple[ad.AnnData, dict]:
    """The data and the realised root mean square of each term's simulated coefficients (what an empirical
    Bayes estimate of the term's sd can recover).
    Poisson counts (no dispersion trend to place: a quick fit), 4 levels of c x 2 of g, PER_PAIR cells per
    pair; the pair (d, stim) is left out. The fit takes median-of-ratios library sizes: the total count
    changes with c and g (every gene has effects), which would shift all genes' coefficients alike."""
    rng = np.random.default_rng(seed)
    c = np.repeat(np.array(list("abcd")), 2 * PER_PAIR)
    g = np.tile(np.repeat(["ctrl", "stim"], PER_PAIR), 4)
    keep = ~((c == "d") & (g == "stim"))
    c, g = c[keep], g[keep]
    ci, gi = np.searchsorted(list("abcd"), c), (g == "stim").astype(int)
    b_c = np.vstack([np.zeros(G), rng.normal(0, SD["c"], (3, G))])  # (4, G), level a the reference
    b_g = rng.normal(0, SD["g"], G)
    b_cg = np.vstack([np.zeros(G), rng.normal(0, SD["c:g"], (3, G))])
    b0 = np.log(rng.uniform(0.001, 0.004, G))
    lib = np.exp(rng.normal(np.log(30000), 0.3, len(c)))
    x = rng.poisson(lib[:, None] * np.exp(b0 + b_c[ci] + gi[:, None] * (b_g + b_cg[ci]))).astype(np.float32)
    obs = pd.DataFrame({"c": c, "g": g}, index=[f"cell{i}" for i in range(len(c))])
    rms = {"c": np.sqrt(np.mean(b_c[1:] ** 2)), "g": np.sqrt(np.mean(b_g**2)),
           "c:g": np.sqrt(np.mean(b_cg[1:3] ** 2))}  # the interactions of the pairs seen (d x stim is not)
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{i}" for i in range(G)])), rms



@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DesignWarning)  # the unseen pair's all-zero column
        adata, rms = simulate()
        return rms, Model("~ c * g", likelihood="poisson", library="size_factors", coef_prior="learned").fit(
            adata, seed=0, max_epochs=250, holdout=0, progress=False)


def test_term_sds_recovered(fitted):
    """Each term's learned sd is within 15% of the realised sd of its simulated coefficients and within 20% of
    the simulation's sd. The interaction is the hardest: 300 seen coefficients of sd 0.28, each estimated to
    ~0.1, give its sd to ~5% (one standard error); measured +8% (c 0%, g 0%)."""
    rms, fit = fitted
    tau = np.asarray(fit.params["coef_prior_sd"])
    assert tau.shape == (3,)  # c, g, c:g in formula order
    for t, name in zip(tau, ("c", "g", "c:g"), strict=True):
        assert abs(t / rms[name] - 1) < 0.15, (name, t, rms[name])
        assert abs(t / SD[name] - 1) < 0.2, (name, t, SD[name])


def test_unseen_interaction_keeps_its_learned_prior(fitted):
    """The all-zero column's posterior is its term's learned prior, N(0, tau^2), for every gene; the seen
    interaction columns are narrower (the data inform them)."""
    _, fitted = fitted
    tau = float(np.asarray(fitted.params["coef_prior_sd"])[2])
    coefs = fitted.coefficients(levels=(0.9,))
    sd = coefs["sd"].sel(coef=UNSEEN).values
    mean = coefs["mean"].sel(coef=UNSEEN).values
    np.testing.assert_allclose(sd, tau, rtol=1e-5)
    np.testing.assert_array_equal(mean, 0.0)
    seen = coefs["sd"].sel(coef="c[T.b]:g[T.stim]").values
    assert np.median(seen) < 0.8 * tau


def test_saved_learned_prior_loads(fitted, tmp_path):
    """The term sds travel with the model file; a file without the option loads as "fixed"."""
    from probgex.fit import Fit

    _, fitted = fitted
    path = tmp_path / "m.npz"
    fitted.save(path)
    back = Fit.load(path)
    assert back.spec.coef_prior == "learned" and back.dims.coef_terms == fitted.dims.coef_terms
    np.testing.assert_array_equal(np.asarray(back.params["coef_prior_sd"]), np.asarray(fitted.params["coef_prior_sd"]))
    assert ModelSpec.from_dict({"formula": "~ c"}).coef_prior == "fixed"


@pytest.mark.parametrize("kw, word", [(dict(coef_prior="maybe"), "coef_prior"),
                                      (dict(coef_prior="learned", latent=4), "cVAE"),
                                      (dict(coef_prior="learned-interactions", latent=4), "cVAE")])
def test_bad_coef_prior_refused(kw, word):
    with pytest.raises(SpecError, match=word):
        ModelSpec.create("~ c", **kw)


def test_independent_columns_keep_the_span():
    """The trend is placed on a largest independent set of columns: an all-zero column and one that is the sum
    of others (an interaction coded in full beside its main effect) are left out, the rest kept in order."""
    from probgex.inference.start import independent_columns

    rng = np.random.default_rng(0)
    a = (rng.random(40) < 0.5).astype(float)
    b = (rng.random(40) < 0.5).astype(float)
    design = np.column_stack([np.ones(40), a, b, np.zeros(40), a * b, a * (1 - b), b])
    np.testing.assert_array_equal(independent_columns(design), [0, 1, 2, 4])


def test_column_terms():
    """Each design column's term in formula order, -1 for the intercept; with interactions only, main effects
    are -1 too (they keep prior_scale). `c:s` with `s` numeric and not a term codes every level of c."""
    from probgex.data import encode_design
    from probgex.inference.coef_prior import column_terms

    obs = pd.DataFrame({"c": list("abcabc"), "g": ["x", "y"] * 3, "s": [0.0, 1.0] * 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DesignWarning)
        _, enc = encode_design("~ c + g + c:s", obs)
    assert enc.columns == ("Intercept", "c[T.b]", "c[T.c]", "g[T.y]", "c[a]:s", "c[b]:s", "c[c]:s")
    assert column_terms(enc, obs) == (-1, 0, 0, 1, 2, 2, 2)
    assert column_terms(enc, obs, interactions_only=True) == (-1, -1, -1, -1, 0, 0, 0)
