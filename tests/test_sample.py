"""`pg.sample` / `Fit.sample` / `probgex sample`: synthetic count profiles per metadata row, as an AnnData
that concatenates with real data, drawn from the fitted predictive (checked against `Fit.predict`)."""

from __future__ import annotations

import anndata as ad
import jax
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app


@pytest.fixture(scope="module")
def meta(small_adata):
    """Three rows, one per group, with a column of library sizes."""
    m = small_adata.obs.iloc[:3].copy()
    m["depth"] = [300.0, 1000.0, 3000.0]
    return m


def test_shapes_metadata_flag_and_integer_counts(glm_fit, meta):
    s = pg.sample(glm_fit, meta, 4, seed=0)
    assert s.shape == (12, len(glm_fit.var_names))
    assert list(s.var_names) == list(glm_fit.var_names)
    assert sparse.issparse(s.X) and s.X.dtype == np.int32 and s.X.min() >= 0
    assert s.obs["synthetic"].all() and s.obs_names.is_unique
    assert list(s.obs["synthetic_source"]) == list(np.repeat(meta.index, 4))
    pd.testing.assert_frame_equal(s.obs[meta.columns].reset_index(drop=True),
                                  meta.iloc[np.repeat(np.arange(3), 4)].reset_index(drop=True))
    dense = glm_fit.sample(meta.iloc[:1], 2, seed=0, sparse=False)
    assert isinstance(dense.X, np.ndarray) and dense.X.dtype == np.int32


def test_same_seed_same_counts_other_seed_differs(glm_fit, meta):
    a = pg.sample(glm_fit, meta, 5, seed=3).X.toarray()
    assert np.array_equal(a, pg.sample(glm_fit, meta, 5, seed=3).X.toarray())
    assert np.array_equal(a, pg.sample(glm_fit, meta, 5, seed=jax.random.PRNGKey(3)).X.toarray())
    assert not np.array_equal(a, pg.sample(glm_fit, meta, 5, seed=4).X.toarray())


def test_concatenates_with_the_real_data(glm_fit, small_adata, meta):
    real = small_adata.copy()
    real.obs["synthetic"] = False
    both = ad.concat([real, pg.sample(glm_fit, meta, 2, seed=0)], join="outer")
    assert both.shape == (real.n_obs + 6, real.n_vars) and both.obs_names.is_unique
    assert int(both.obs["synthetic"].astype(bool).sum()) == 6
    np.testing.assert_array_equal(both[:real.n_obs].X.toarray(), real.X)
    assert list(both.obs["group"].iloc[-6:]) == ["a", "a", "b", "b", "c", "c"]


@pytest.mark.parametrize("which", ["glm", "cvae"])
@pytest.mark.parametrize("depth", [None, "depth"])
def test_draws_match_the_fitted_predictive(which, depth, glm_fit, cvae_fit, meta):
    """Mean of 2,000 profiles per row vs `Fit.predict`'s exact mixture mean (its own 2,000 parameter draws):
    within 4.5 Monte Carlo standard errors of the difference (sd * sqrt(2 / 2000)) for each of the 72
    entries, and the profiles' total counts likewise; with library sizes from a column the total is the
    column's value times the predicted fractions' sum (within 10% here: the model holds every gene)."""
    fit = {"glm": glm_fit, "cvae": cvae_fit}[which]
    n = 2000
    X = fit.sample(meta, n, seed=1, library_size=depth).X.toarray().reshape(3, n, -1).astype(np.float64)
    pred = fit.predict(meta, n_samples=n, seed=2, library_size=None if depth is None else meta[depth].to_numpy())
    mean, sd = pred["mean"].values, pred["sd"].values
    assert np.all(np.abs(X.mean(1) - mean) <= 4.5 * sd * np.sqrt(2 / n) + 1e-9)
    total = X.sum(-1)
    se = total.std(1) * np.sqrt(2 / n)
    assert np.all(np.abs(total.mean(1) - mean.sum(-1)) <= 4.5 * se)
    if depth is not None:
        np.testing.assert_allclose(total.mean(1), meta[depth].to_numpy(), rtol=0.1)


def test_profiles_stay_with_their_row_when_draws_are_chunked(glm_fit, meta, monkeypatch):
    """With the draw budget cut so that 7 profiles take 3 passes, every profile still sits under its own
    metadata row: totals follow the rows' library sizes (300 / 1,000 / 3,000)."""
    import probgex.inference.predict

    monkeypatch.setattr(probgex.inference.predict, "BLOCK_ENTRIES", 8 * len(glm_fit.var_names) * 3)  # 3 draws per pass
    s = pg.sample(glm_fit, meta, 7, seed=0, library_size="depth")
    total = np.asarray(s.X.sum(1)).ravel().reshape(3, 7)
    assert total[0].max() < total[1].min() and total[1].max() < total[2].min()
    assert len(set(map(tuple, s.X.toarray()))) == 21  # no profile repeated across passes


@pytest.mark.slow
def test_learned_prior_story_samples(small_adata, meta):
    """A cVAE with a flow prior samples through the same path (its latents from the learned prior)."""
    flow = pg.Model("~ group", latent=pg.latent.Flow(dim=2, net={"hidden": (8,)}, training={"max_steps": 20}), encoder=(8,), decoder=(8,))
    fit = flow.fit(small_adata, seed=0, max_epochs=2, progress=False)
    assert fit.learned_prior_status == "trained"
    s = fit.sample(meta, 3, seed=0)
    assert s.shape == (9, small_adata.n_vars) and s.X.min() >= 0
    assert s.uns["probgex_sample"]["story"] == fit.spec.story


@pytest.mark.slow
def test_residual_story_samples(small_adata, meta):
    """Around a stage-1 table keyed by obs name: the metadata rows it predicts sample; new rows are
    refused by the table, by name."""
    frac = pd.DataFrame(np.full((small_adata.n_obs, small_adata.n_vars), 1 / small_adata.n_vars),
                        index=small_adata.obs_names, columns=small_adata.var_names)
    residual = pg.Model("~ group", latent=2, mean=pg.mean.External(frac, scale="fraction"), encoder=(8,),
                        decoder=(8,)).fit(small_adata, seed=0, max_epochs=2, progress=False)
    s = residual.sample(meta, 2, seed=0, library_size="depth")
    assert s.shape == (6, small_adata.n_vars) and s.uns["probgex_sample"]["story"] == "residual"
    with pytest.raises(pg.DataError, match="no row"):
        residual.sample(meta.rename(index=lambda i: f"new-{i}"), 2)


def test_bad_input_is_refused_with_its_name(glm_fit, meta):
    with pytest.raises(pg.SpecError, match="n must be a positive integer"):
        pg.sample(glm_fit, meta, 0)
    with pytest.raises(pg.DataError, match="not a column"):
        pg.sample(glm_fit, meta, 2, library_size="nope")
    with pytest.raises(pg.DataError, match="positive numbers"):
        pg.sample(glm_fit, meta, 2, library_size="group")
    with pytest.raises(pg.DataError, match="positive and finite"):
        pg.sample(glm_fit, meta, 2, library_size=[1.0, -1.0, 2.0])
    with pytest.raises(pg.DataError, match="3 metadata rows"):
        pg.sample(glm_fit, meta, 2, library_size=[1.0, 2.0])
    with pytest.raises(pg.DataError, match="DataFrame or an AnnData"):
        pg.sample(glm_fit, [1, 2], 2)


def test_shell_writes_the_synthetic_anndata(glm_ckpt, glm_fit, meta, tmp_path):
    meta.to_csv(tmp_path / "meta.csv")
    out = tmp_path / "synth.h5ad"
    runner = CliRunner()
    res = runner.invoke(app, ["sample", str(glm_ckpt), "--obs", str(tmp_path / "meta.csv"), "--n", "3", "--out",
                              str(out), "--library-size", "depth", "--seed", "5"])
    assert res.exit_code == 0, res.output
    s = ad.read_h5ad(out)
    assert s.shape == (9, len(glm_fit.var_names)) and s.obs["synthetic"].all()
    assert np.array_equal(s.X.toarray(), pg.sample(glm_fit, meta, 3, seed=5, library_size="depth").X.toarray())
    for args, message in [(["--n", "0"], "--n must be a positive"),
                          (["--n", "2", "--library-size", "nope"], "neither a number nor a column"),
                          (["--n", "2"], "already exists")]:
        target = out if "already exists" in message else tmp_path / "other.h5ad"
        res = runner.invoke(app, ["sample", str(glm_ckpt), "--obs", str(tmp_path / "meta.csv"), "--out",
                                  str(target), *args])
        assert res.exit_code == 2 and message in res.output, res.output
