"""Power curves (probgex.power.curve): with a known NB truth, the power predicted from a GLM fitted on
data from that truth matches the empirical power of the same test on experiments simulated from the
truth itself, within Monte Carlo error; outputs, intervals, figure and errors."""

import jax
import numpy as np
import pytest

import probgex as pg
from probgex.errors import DataError, SpecError
from probgex.power import Truth, curve, plot_curve, power_grid

CONTRAST = ("group", "b", "a")
NS = [3, 6]
OPTS = dict(fdr=0.1, lfc=1.0, de_fraction=0.25, n_rep=4, progress=False)


def true_fractions():
    """The reference-group ('a') truth of conftest's small_adata: expected share of the observed total
    count per gene (the fit's library size), and the NB dispersion 1/theta = 0.1."""
    rng = np.random.default_rng(0)
    n_obs, n_genes = 150, 24
    rng.integers(0, 2, n_obs)  # batch (same draws as conftest._small_adata)
    beta0 = np.log(rng.uniform(0.02, 0.08, n_genes))
    return np.exp(beta0) / np.exp(beta0).sum(), 0.1


@pytest.fixture(scope="module")
def predicted(glm_fit):
    return curve(glm_fit, CONTRAST, NS, key=jax.random.PRNGKey(0), n_draws=20, depth=600.0, depth_sd=0.3, **OPTS)


def test_predicted_power_matches_empirical_power_of_the_truth(predicted):
    frac, alpha = true_fractions()
    truth = Truth.fixed(frac, alpha, n_draws=20)
    empirical = power_grid(truth, NS, key=jax.random.PRNGKey(1), depth=600.0, depth_sd=0.3, **OPTS)
    for n in NS:
        p, e = predicted.sel(n=n), empirical.sel(n=n)
        se = np.hypot(float(p["power_mc_se"]), float(e["power_mc_se"]))
        assert abs(float(p["power_mean"]) - float(e["power_mean"])) < 3 * se + 0.02, (n, float(p["power_mean"]),
                                                                                     float(e["power_mean"]), se)
        assert float(p["power_lower"]) <= float(e["power_mean"]) <= float(p["power_upper"])
    # power grows with n; the realized FDR stays near the nominal level
    assert float(predicted["power_mean"].sel(n=6)) > float(predicted["power_mean"].sel(n=3))
    assert float(empirical["fdp_mean"].max()) < 0.1 + 3 * float(empirical["fdp_mc_se"].max()) + 0.02


def test_curve_outputs(predicted, tmp_path):
    ds = predicted
    assert set(ds["n"].values) == set(NS)
    for v in ("power_mean", "power_lower", "power_upper", "fdp_mean", "power_stratum_mean"):
        assert v in ds
    assert (ds["power_lower"] <= ds["power_mean"] + 1e-12).all() and (ds["power_mean"] <= ds["power_upper"] + 1e-12).all()
    assert ds["power"].dims == ("n", "draw", "rep") and ds.sizes["draw"] == 20
    # the smallest n reaching the target is consistent with the curve
    reached = [n for n in NS if float(ds["power_mean"].sel(n=n)) >= ds.attrs["target"]]
    assert ds.attrs["n_at_target"] == (reached[0] if reached else float("inf"))
    path = plot_curve(ds, tmp_path / "power.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ds.to_netcdf(tmp_path / "power.nc")


def test_posterior_draws_vary_around_the_truth(glm_fit):
    """Each simulated experiment takes its own posterior draw: the draws differ (a fixed truth does
    not) and centre on the true reference-group shares and dispersion."""
    frac, alpha = true_fractions()
    fixed = Truth.fixed(frac, alpha, n_draws=20)
    post = pg.power.truth_from_fit(glm_fit, CONTRAST, 200, jax.random.PRNGKey(2))
    assert post.log_rate.std(0).min() > 1e-3 and fixed.log_rate.std(0).max() < 1e-12
    assert np.all(np.abs(np.log(np.exp(post.log_rate).mean(0) / frac)) < 0.25)
    assert abs(np.log(np.median(post.alpha) / alpha)) < 0.5


def test_errors(glm_fit, cvae_fit):
    key = jax.random.PRNGKey(0)
    with pytest.raises(SpecError, match="level 'z'"):
        curve(glm_fit, ("group", "z", "a"), [3], key=key, progress=False)
    with pytest.raises(SpecError, match="no factor"):
        curve(glm_fit, ("strain", "b", "a"), [3], key=key, progress=False)
    with pytest.raises(SpecError, match="integers >= 2"):
        curve(glm_fit, CONTRAST, [1, 3], key=key, progress=False)
    with pytest.raises(SpecError, match="GLM"):
        curve(cvae_fit, CONTRAST, [3], key=key, progress=False)
    with pytest.raises(SpecError, match="lfc"):
        curve(glm_fit, CONTRAST, [3], key=key, lfc=-1.0, n_draws=2, n_rep=1, progress=False)
    with pytest.raises(SpecError, match="PRNG key"):
        curve(glm_fit, CONTRAST, [3], key=None, progress=False)
    with pytest.raises(DataError, match="one per gene"):
        curve(glm_fit, CONTRAST, [3], key=key, lfc=np.ones(5), n_draws=2, n_rep=1, progress=False)
