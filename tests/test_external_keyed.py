"""A residual model around a table of predictions keyed by metadata predicts new observations; one keyed by
obs name says, when asked to, how to get a predictor that can."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app
from probgex.mean import External


@pytest.fixture(scope="module")
def group_table(small_adata):
    """Per group, the pooled fraction of counts each gene takes (one row per level of `group`)."""
    x = pd.DataFrame(small_adata.X, index=small_adata.obs_names, columns=small_adata.var_names)
    sums = x.groupby(small_adata.obs["group"].to_numpy()).sum()
    return sums.div(sums.sum(axis=1), axis=0)


def test_keyed_table_looks_up_rows_by_metadata_values(group_table, small_adata):
    ext = External(group_table, scale="fraction", key="group")
    obs = pd.DataFrame({"group": ["c", "a", "c"]}, index=["new1", "new2", "new3"])  # names never seen
    lf = ext.log_fraction(obs, list(small_adata.var_names))
    np.testing.assert_allclose(lf, np.log(group_table.loc[["c", "a", "c"]].to_numpy()), rtol=1e-6)
    # the key as columns of the table, and two key columns (a MultiIndex), give the same lookups
    as_cols = External(group_table.rename_axis("group").reset_index(), scale="fraction", key=["group"])
    np.testing.assert_array_equal(as_cols.log_fraction(obs, list(small_adata.var_names)), lf)
    two = group_table.copy()
    two.index = pd.MultiIndex.from_arrays([two.index, ["x"] * 3], names=["group", "batch"])
    ext2 = External(two, scale="fraction", key=["group", "batch"])
    np.testing.assert_array_equal(ext2.log_fraction(obs.assign(batch="x"), list(small_adata.var_names)), lf)
    with pytest.raises(pg.DataError, match=r"no row for 1 observations.*\('c', 'y'\)"):
        ext2.log_fraction(obs.assign(batch=["x", "x", "y"]), list(small_adata.var_names))
    with pytest.raises(pg.DataError, match="lacks \\['batch'\\]"):
        ext2.log_fraction(obs, list(small_adata.var_names))


def test_keyed_table_survives_the_model_file_state(group_table, small_adata):
    ext = External(group_table, scale="fraction", key="group")
    header, arrays = ext.state()
    back = External.from_state(header, arrays)
    obs = pd.DataFrame({"group": ["b", "c"]}, index=["u1", "u2"])
    genes = list(small_adata.var_names)
    assert back.key == ["group"]
    np.testing.assert_array_equal(back.log_fraction(obs, genes), ext.log_fraction(obs, genes))


def test_keyed_table_bad_input_is_named(group_table):
    with pytest.raises(pg.DataError, match="expected counts cannot"):
        External(group_table, scale="counts", key="group")
    with pytest.raises(pg.DataError, match="more than once"):
        External(pd.concat([group_table, group_table.iloc[:1]]), scale="fraction", key="group")
    with pytest.raises(pg.DataError, match="neither these columns"):
        External(group_table, scale="fraction", key=["group", "batch"])


def test_a_table_keyed_by_obs_name_says_how_to_predict_new_metadata(group_table, small_adata):
    by_name = pd.DataFrame(group_table.loc[small_adata.obs["group"]].to_numpy(), index=small_adata.obs_names,
                           columns=small_adata.var_names)
    ext = External(by_name, scale="fraction")
    with pytest.raises(pg.DataError, match="key the table by metadata columns"):
        ext.log_fraction(pd.DataFrame({"group": ["a"]}, index=["unseen"]), list(small_adata.var_names))


@pytest.mark.slow  # one residual GLM fit (compile-bound: 10-40 s on 2 shared cores)
def test_a_residual_fit_around_a_table_keyed_by_metadata_predicts_new_metadata(group_table, small_adata, tmp_path):
    small_adata.write_h5ad(tmp_path / "d.h5ad")
    group_table.rename_axis("group").to_csv(tmp_path / "groups.csv")
    args = ["fit", str(tmp_path / "d.h5ad"), "--formula", "~ group", "--model", "residual", "--latent-dim", "0",
            "--mean", str(tmp_path / "groups.csv"), "--mean-scale", "fraction", "--max-epochs", "2"]
    res = CliRunner().invoke(app, [*args, "--mean-key", "group", "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    fit = pg.load(tmp_path / "m.npz")  # the keyed table travels in the model file
    np.testing.assert_allclose(fit.data(small_adata).offset,
                               np.log(group_table.loc[small_adata.obs["group"]].to_numpy()), rtol=1e-6)
    new = pd.DataFrame({"group": ["b", "a"]}, index=["unseen1", "unseen2"])  # names the table never saw
    np.testing.assert_allclose(fit.metadata(new, None).offset, np.log(group_table.loc[["b", "a"]].to_numpy()),
                               rtol=1e-6)
    pred = fit.predict(new, n_samples=20, library_size=1e3)
    assert pred["mean"].shape == (2, small_adata.n_vars) and np.isfinite(pred["mean"]).all()
    res = CliRunner().invoke(app, [*args, "--mean-key", "stage", "--out", str(tmp_path / "m2.npz")])
    assert res.exit_code == 2 and "neither these columns" in res.output
