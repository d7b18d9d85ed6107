"""Tests of probgex.data: AnnData -> validated CountData."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from probgex.data import (
    CountData,
    DesignEncoding,
    EmptyWarning,
    encode_design,
    from_anndata,
    read_obs_table,
    validate_counts,
)
from probgex.errors import DataError

YEAST = Path(__file__).parents[1] / "probgex/_data/schurch_yeast.h5ad"
if not YEAST.exists():
    YEAST = Path("/work/shared/data/schurch_yeast.h5ad")


def make_adata(n=12, g=5, sparse=False, dtype=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(5.0, size=(n, g)).astype(dtype) + 1
    obs = pd.DataFrame(
        {
            "cluster": pd.Categorical(np.array(["b", "a", "c"])[np.arange(n) % 3]),
            "group": np.array(["ctrl", "stim"])[np.arange(n) % 2],
            "age": np.linspace(1.0, 2.0, n),
            "flag": np.arange(n) % 4 == 0,
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(g)])
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)


def with_x(adata, x):
    return ad.AnnData(X=x, obs=adata.obs.copy(), var=adata.var.copy())


# ---------------------------------------------------------------- happy paths


@pytest.mark.parametrize("sparse", [False, True])
def test_from_anndata_dense_and_csr(sparse):
    adata = make_adata(sparse=sparse)
    dense = adata.X.toarray() if sparse else adata.X
    data = from_anndata(adata, "~ cluster + group + age")
    assert isinstance(data, CountData)
    assert sp.isspmatrix_csr(data.counts) == sparse
    assert data.counts.dtype == np.int64
    assert (data.n_obs, data.n_genes) == dense.shape
    assert data.n_design == 5
    assert data.design.dtype == np.float32
    assert data.library_size.dtype == np.float64
    np.testing.assert_array_equal(data.library_size, dense.sum(axis=1))
    assert data.encoding.columns == ("Intercept", "cluster[T.b]", "cluster[T.c]", "group[T.stim]", "age")
    assert data.encoding.levels == {"cluster": ["a", "b", "c"], "group": ["ctrl", "stim"]}
    assert data.encoding.numeric == ("age",)
    assert set(data.encoding.variables()) == {"cluster", "group", "age"}
    idx = np.array([3, 0, 7])
    rows = data.rows(idx)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, dense[idx])
    sub = data.subset(idx)
    assert sub.n_obs == 3 and list(sub.obs.index) == ["cell3", "cell0", "cell7"]
    np.testing.assert_array_equal(sub.design, data.design[idx])
    np.testing.assert_array_equal(sub.rows(np.arange(3)), dense[idx])


def test_csc_converted_and_float_integers_accepted():
    adata = make_adata(dtype=np.float32)
    data = from_anndata(with_x(adata, sp.csc_matrix(adata.X)), "~ group")
    assert sp.isspmatrix_csr(data.counts)
    np.testing.assert_array_equal(data.rows(np.arange(adata.n_obs)), adata.X)


def test_layer_and_intercept_only():
    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X.astype(float))
    data = from_anndata(adata, "~ 1", layer="counts")
    assert data.design.shape == (adata.n_obs, 1)
    assert data.encoding.columns == ("Intercept",)
    np.testing.assert_array_equal(from_anndata(adata, layer="counts").design, data.design)


def test_groups():
    adata = make_adata()
    data = from_anndata(adata, "~ 1", group_key="cluster")
    assert data.group_levels == ["a", "b", "c"]
    assert data.groups.dtype == np.int32
    np.testing.assert_array_equal(data.groups, np.tile([1, 0, 2], 4))  # cluster cycles b, a, c
    with pytest.raises(DataError, match="unseen levels"):
        from_anndata(adata, "~ 1", group_key="cluster", group_levels=["a", "b"])
    with pytest.raises(DataError, match="group_key 'nope' is not an obs column"):
        from_anndata(adata, "~ 1", group_key="nope")


def test_yeast_real_data():
    adata = ad.read_h5ad(YEAST)
    data = from_anndata(adata, "~ strain", empty="keep")
    assert data.n_obs == 96 and data.n_genes == 7126
    assert data.n_design == 2
    np.testing.assert_array_equal(data.library_size, np.asarray(adata.X).sum(axis=1))
    assert set(data.design[:, 1]) == {0.0, 1.0}


# ---------------------------------------------------------------- design encoding


def test_encoding_round_trip_json():
    obs = make_adata().obs
    design, enc = encode_design("~ cluster * group + age + flag", obs)
    enc2 = DesignEncoding.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert enc2 == enc
    np.testing.assert_array_equal(enc2.transform(obs), design)


def test_reencode_subset_of_levels_same_columns():
    obs = make_adata().obs
    design, enc = encode_design("~ cluster + group", obs)
    new = pd.DataFrame({"cluster": ["c", "c"], "group": ["stim", "stim"]})
    x = enc.transform(new)
    assert x.shape == (2, len(enc.columns))
    np.testing.assert_array_equal(x, design[[5, 11]])  # cells 5 and 11 are (c, stim)


def test_numeric_column_as_factor():
    obs = pd.DataFrame({"rep": np.arange(8) % 4})
    design, enc = encode_design("~ C(rep)", obs)
    assert enc.columns == ("Intercept", "C(rep)[T.1]", "C(rep)[T.2]", "C(rep)[T.3]")
    assert enc.levels == {"rep": ["0", "1", "2", "3"]}
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"rep": [3, 1]})), design[[3, 1]])


def test_categorical_order_kept():
    obs = pd.DataFrame({"t": pd.Categorical(["hi", "lo", "hi"], categories=["lo", "mid", "hi"])})
    _, enc = encode_design("~ t", obs)
    assert enc.levels == {"t": ["lo", "hi"]}


def test_transform_errors():
    obs = make_adata().obs
    _, enc = encode_design("~ cluster + age", obs)
    with pytest.raises(DataError, match=r"missing column\(s\) \['age'\]"):
        enc.transform(obs.drop(columns="age"))
    bad = obs.copy()
    bad.loc["cell1", "age"] = np.nan
    with pytest.raises(DataError, match="'age' has 1 missing"):
        enc.transform(bad)
    bad = obs.assign(cluster=["z"] + list(obs.cluster[1:]))
    with pytest.raises(DataError, match=r"unseen categories \['z'\]; known levels: \['a', 'b', 'c'\]"):
        enc.transform(bad)
    with pytest.raises(DataError, match="'age' must be numeric"):
        enc.transform(obs.assign(age="old"))


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("cluster + group", "one-sided formula string"),
        (3, "one-sided formula string"),
        ("y ~ cluster", "drop any left-hand side"),
        ("~ cluster +* group", "cannot parse formula"),
        ("~ center(age)", "stateful transforms"),
        ("~ poly(age, 2)", "stateful transforms"),
    ],
)
def test_bad_formulas(formula, match):
    with pytest.raises(DataError, match=match):
        encode_design(formula, make_adata().obs)


def test_from_anndata_metadata_errors():
    adata = make_adata()
    with pytest.raises(DataError, match=r"uses column\(s\) \['batch'\] missing from obs"):
        from_anndata(adata, "~ batch + group")
    adata.obs.loc["cell2", "group"] = None
    with pytest.raises(DataError, match="'group' has 1 missing"):
        from_anndata(adata, "~ group")


def test_encoding_reused_for_heldout():
    adata = make_adata()
    fit = from_anndata(adata, "~ cluster + group")
    held = adata[adata.obs.cluster == "a"].copy()
    data = from_anndata(held, encoding=fit.encoding, genes=list(fit.var_names[::-1]))
    assert data.encoding is fit.encoding
    assert list(data.var_names) == list(fit.var_names[::-1])
    np.testing.assert_array_equal(data.rows(np.arange(held.n_obs)), held.X[:, ::-1])
    held.obs["cluster"] = held.obs["cluster"].cat.rename_categories({"a": "new"})
    with pytest.raises(DataError, match=r"unseen categories \['new'\]"):
        from_anndata(held, encoding=fit.encoding)


# ---------------------------------------------------------------- bad counts


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-3.0, r"adata.X contain 1 negative values .*non-negative integers; pass the raw count layer"),
        (np.nan, "adata.X contain 1 NaN or infinite values"),
        (np.inf, "adata.X contain 1 NaN or infinite values"),
        (0.5, r"adata.X contain 1 non-integer values .*normalized or log-transformed"),
    ],
)
def test_bad_count_values(sparse, value, match):
    x = make_adata(dtype=np.float64).X
    x[1, 2] = value
    adata = with_x(make_adata(), sp.csr_matrix(x) if sparse else x)
    with pytest.raises(DataError, match=match):
        from_anndata(adata, "~ 1")


def test_negative_int_and_layer_name_in_message():
    adata = make_adata()
    adata.layers["raw"] = adata.X.copy()
    adata.layers["raw"][0, 0] = -1
    with pytest.raises(DataError, match=r"adata.layers\['raw'\] contain 1 negative"):
        from_anndata(adata, "~ 1", layer="raw")


def test_validate_counts_directly():
    validate_counts(np.array([[0, 1], [2, 3]], dtype=np.uint8), "poisson")
    with pytest.raises(DataError, match="unknown likelihood 'gamma'"):
        validate_counts(np.zeros((2, 2)), "gamma")
    with pytest.raises(DataError, match="have dtype <U1"):
        validate_counts(np.array([["a"]]), "nb")
    with pytest.raises(DataError, match="in M contain 2 non-integer"):
        validate_counts(np.log1p(np.array([[1.0, 2.0]], dtype=np.float32)), "zinb", name="M")


def test_input_errors():
    adata = make_adata()
    with pytest.raises(DataError, match="expected an AnnData object, got ndarray"):
        from_anndata(adata.X, "~ 1")
    with pytest.raises(DataError, match=r"layer 'counts' not found in adata.layers; available layers: \[\]"):
        from_anndata(adata, "~ 1", layer="counts")
    with pytest.raises(DataError, match="unknown likelihood 'normal'"):
        from_anndata(adata, "~ 1", likelihood="normal")
    with pytest.raises(DataError, match=r"empty='maybe' is not one of"):
        from_anndata(adata, "~ 1", empty="maybe")
    with pytest.raises(DataError, match=r"2 of 3 required genes not found .*\['zz', 'yy'\]"):
        from_anndata(adata, "~ 1", genes=["g0", "zz", "yy"])
    with pytest.raises(DataError, match="adata.X is empty"):
        from_anndata(adata[:0].copy(), "~ 1")
    with pytest.raises(DataError, match="adata.X is empty"):
        from_anndata(adata[:, :0].copy(), "~ 1")


def test_shape_mismatch():
    data = from_anndata(make_adata(), "~ group")
    with pytest.raises(DataError, match="shape mismatch: design rows = 11 but counts have 12 rows"):
        CountData(data.counts, data.library_size, data.design[:11], data.encoding, data.obs, data.var_names)


# ---------------------------------------------------------------- empty genes and cells


@pytest.mark.parametrize("sparse", [False, True])
def test_empty_genes_and_cells(sparse):
    adata = make_adata()
    x = adata.X.copy()
    x[:, 1] = 0
    x[4, :] = 0
    adata = with_x(adata, sp.csr_matrix(x) if sparse else x)
    with pytest.warns(EmptyWarning, match="1 all-zero genes and 1 all-zero cells"):
        data = from_anndata(adata, "~ group")
    assert list(data.var_names) == ["g0", "g2", "g3", "g4"]
    assert data.n_obs == 11 and "cell4" not in data.obs.index
    np.testing.assert_array_equal(data.rows(np.arange(11)), np.delete(np.delete(x, 4, 0), 1, 1))
    with pytest.raises(DataError, match="1 all-zero genes and 1 all-zero cells .*empty='warn'"):
        from_anndata(adata, "~ group", empty="error")
    kept = from_anndata(adata, "~ group", empty="keep")
    assert kept.counts.shape == x.shape
    with pytest.warns(EmptyWarning, match="0 all-zero genes and 1 all-zero cells"):
        fixed = from_anndata(adata, "~ group", genes=list(adata.var_names))
    assert fixed.n_genes == 5


def test_all_empty():
    adata = with_x(make_adata(), np.zeros((12, 5), dtype=np.int32))
    with pytest.warns(EmptyWarning), pytest.raises(DataError, match="nothing is left"):
        from_anndata(adata, "~ 1")


def test_backed_anndata(tmp_path):
    adata = make_adata(sparse=True)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    try:
        data = from_anndata(backed, "~ group")
    finally:
        backed.file.close()
    assert sp.isspmatrix_csr(data.counts)
    np.testing.assert_array_equal(data.rows(np.arange(12)), adata.X.toarray())


def test_data_module_does_not_import_jax():
    import ast

    import probgex.data

    tree = ast.parse(Path(probgex.data.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("jax", "numpyro")}


# ---------------------------------------------------------------- metadata tables


def test_read_obs_table(tmp_path):
    obs = make_adata().obs
    obs.to_csv(tmp_path / "m.csv")
    obs.to_csv(tmp_path / "m.tsv", sep="\t")
    make_adata().write_h5ad(tmp_path / "m.h5ad")
    _, enc = encode_design("~ cluster + group + age", obs)
    for name in ("m.csv", "m.tsv", "m.h5ad"):
        table = read_obs_table(tmp_path / name)
        assert list(table.index) == list(obs.index)
        np.testing.assert_array_equal(enc.transform(table), enc.transform(obs))
    with pytest.raises(DataError, match="use a .csv, .tsv or .h5ad file"):
        (tmp_path / "m.xlsx").write_text("x")
        read_obs_table(tmp_path / "m.xlsx")
    with pytest.raises(DataError, match="not found"):
        read_obs_table(tmp_path / "missing.csv")
