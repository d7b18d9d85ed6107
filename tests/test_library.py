"""Median-of-ratios library sizes (library="size_factors")."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import probgex as pg
from probgex import library


def bulk(rng, n=24, G=60, shift=0):
    """Bulk-like NB counts; in half of the samples gene 0 (a quarter of each library) goes up 4-fold, a
    composition change that moves every sample's total but not its size factor."""
    group = np.repeat(["a", "b"], n // 2)
    rate = np.exp(rng.uniform(-8, -4, G))
    rate[0] = rate[1:].sum() / 3
    sf = rng.lognormal(0, 0.3, n)
    mu = 1e6 * sf[:, None] * rate[None] * np.where((np.arange(n) >= n // 2)[:, None] & (np.arange(G) == 0)[None], 4, 1)
    x = rng.poisson(rng.gamma(50.0, mu / 50.0)).astype(np.float32)
    obs = pd.DataFrame({"group": group}, index=[f"s{i + shift}" for i in range(n)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(G)])), sf


def test_sizes_equal_a_direct_median_of_ratios_and_track_the_true_factors():
    a, sf = bulk(np.random.default_rng(0))
    data = pg.from_anndata(a, "~ group")
    rows = np.arange(a.n_obs)
    ref = library.reference(data, rows)
    lib = library.sizes(data, ref)
    y = np.asarray(a.X, np.float64)
    logy = np.log(y[:, (y > 0).all(0)])
    direct = np.exp(np.median(logy - logy.mean(0), axis=1) + np.log(y.sum(1)).mean())
    np.testing.assert_allclose(lib, direct, rtol=1e-10)
    # against the true factors: the totals of half the samples are 1.75x too high (gene 0, a quarter of
    # a library, up 4-fold), a log error of sd log(1.75) / 2 = 0.28; the size factors do not see it
    err = lambda v: np.std(np.log(v / sf) - np.mean(np.log(v / sf)))  # noqa: E731
    assert err(lib) < 0.05 and err(y.sum(1)) > 0.25


def test_size_factor_fit_saves_loads_and_scales_new_samples_against_training(tmp_path):
    a, _ = bulk(np.random.default_rng(1))
    new, _ = bulk(np.random.default_rng(2), n=6, shift=100)
    fit = pg.Model("~ group", "nb", library="size_factors").fit(a, seed=0, progress=False, max_epochs=50)
    expected = library.sizes(pg.from_anndata(new, "~ group"), fit.library_ref)
    np.testing.assert_allclose(fit.data(new).library_size, expected)
    back = pg.load(fit.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(back.library_ref, fit.library_ref)
    np.testing.assert_allclose(back.data(new).library_size, expected)
    assert np.isfinite(fit.evaluate(new)["coverage"]).all()


def test_size_factors_refuse_data_without_reference_genes():
    rng = np.random.default_rng(0)
    x = rng.poisson(0.3, (40, 50)).astype(np.float32)  # sparse, single-cell-like: no gene positive everywhere
    a = ad.AnnData(x, obs=pd.DataFrame({"group": ["a", "b"] * 20}, index=[f"c{i}" for i in range(40)]))
    with pytest.raises(pg.DataError, match="needs genes with a positive count in every training"):
        pg.Model("~ group", "nb", library="size_factors").fit(a, seed=0, progress=False, max_epochs=2)
