"""Issue 17: no command harms a user's files, and bad input is one line (exit 2), not a traceback.

Most checks run before any fitting; one tiny GLM (`~ group + age`, 5 epochs) is fitted once for the
module and shared.
"""

import hashlib
import json
import os
import stat
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app

runner = CliRunner()


def _adata(n: int = 36, g: int = 10, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"group": np.array(["a", "b"])[np.arange(n) % 2], "age": np.linspace(1.0, 12.0, n)},
                       index=[f"c{i}" for i in range(n)])
    x = rng.poisson(20.0, (n, g)).astype(np.float32)
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res, " ".join(res.output.split())


def _refused(res, *words):
    msg = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    for w in words:
        assert w in msg, (w, msg)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """data.h5ad, meta.csv, meta.h5ad and a model fitted on data.h5ad (5 epochs)."""
    folder = tmp_path_factory.mktemp("safety")
    a = _adata()
    a.write_h5ad(folder / "data.h5ad")
    a.obs.iloc[:3].to_csv(folder / "meta.csv")
    a.write_h5ad(folder / "meta.h5ad")
    res, _ = _run("fit", folder / "data.h5ad", "--formula", "~ group + age", "--max-epochs", "5",
                  "--out", folder / "model.npz")
    assert res.exit_code == 0, res.output
    return folder


# ----------------------------------------------------------------------------- 1. no data loss through --out
def test_fit_refuses_to_write_over_its_data(files):
    before = _digest(files / "data.h5ad")
    res, _ = _run("fit", files / "data.h5ad", "--out", files / "data.h5ad")
    _refused(res, "also an input", "data.h5ad")
    assert _digest(files / "data.h5ad") == before


def test_predict_refuses_to_write_over_the_model_or_the_metadata(files):
    for target, inputs in (("model.npz", "model"), ("meta.h5ad", "metadata")):
        before = _digest(files / target)
        res, _ = _run("predict", files / "model.npz", "--obs", files / "meta.h5ad", "--out", files / target)
        _refused(res, "also an input", target)
        assert _digest(files / target) == before


def test_an_existing_output_needs_overwrite(files, tmp_path):
    out = tmp_path / "p.nc"
    out.write_text("earlier results")
    res, _ = _run("predict", files / "model.npz", "--obs", files / "meta.csv", "--n-samples", "5", "--out", out)
    _refused(res, "already exists", "--overwrite")
    assert out.read_text() == "earlier results"
    res, _ = _run("predict", files / "model.npz", "--obs", files / "meta.csv", "--n-samples", "5", "--out", out,
                  "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89HDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nc"]  # no temporary file left beside it


def test_fit_out_must_be_new_or_overwritten_and_is_checked_before_fitting(files, tmp_path):
    before = _digest(files / "model.npz")
    res, _ = _run("fit", files / "data.h5ad", "--out", files / "model.npz")
    _refused(res, "already exists", "--overwrite")
    assert _digest(files / "model.npz") == before
    res, _ = _run("fit", files / "data.h5ad", "--out", tmp_path)
    _refused(res, "is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res, _ = _run("fit", files / "data.h5ad", "--out", blocker / "m.npz")
    _refused(res, "is a file, not a folder")


def test_unwritable_output_folder_is_refused_before_any_work(files, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    monkeypatch.setattr("probgex._outputs.os.access", lambda p, m: False if str(p) == str(ro) else real(p, m))
    res, _ = _run("fit", files / "data.h5ad", "--max-epochs", "1000", "--out", ro / "m.npz")
    _refused(res, "permission denied", str(ro))
    ro.chmod(0o755)


def test_a_new_fit_keeps_the_old_model_until_it_finishes(files, tmp_path, monkeypatch):
    """Overwriting a finished model: checkpoints go beside it; killing the new fit leaves the old model
    intact (and the new checkpoint loadable); a completed fit replaces it."""
    path = tmp_path / "m.npz"
    path.write_bytes((files / "model.npz").read_bytes())
    before = _digest(path)
    real_save = pg.Fit.save

    def killed(self, where, **kw):
        if len(self.history.train) == 2:
            raise KeyboardInterrupt
        return real_save(self, where, **kw)

    monkeypatch.setattr(pg.Fit, "save", killed)
    model = pg.Model("~ group + age", likelihood="nb")
    with pytest.raises(KeyboardInterrupt):
        model.fit(_adata(), max_epochs=5, checkpoint_path=path, checkpoint_every=1, progress=False)
    monkeypatch.undo()
    assert _digest(path) == before
    with pytest.warns(pg.IncompleteFitWarning):
        assert len(pg.load(tmp_path / "m.partial.npz").history.train) == 1
    fit = model.fit(_adata(), max_epochs=3, checkpoint_path=path, progress=False)
    assert _digest(path) != before and len(pg.load(path).history.train) == len(fit.history.train)
    assert not (tmp_path / "m.partial.npz").exists()


def test_check_power_and_demo_refuse_existing_results_before_computing(files, tmp_path):
    (tmp_path / "report.json").write_text("{}")
    res, _ = _run("check", files / "model.npz", "--data", files / "data.h5ad", "--out", tmp_path)
    _refused(res, "already holds report.json", "--overwrite")
    (tmp_path / "power.json").write_text("{}")
    res, _ = _run("power", files / "model.npz", "--contrast", "group:b:a", "--out", tmp_path)
    _refused(res, "already holds power.json")
    (tmp_path / "model.npz").write_text("mine")
    res, _ = _run("demo", "--out", tmp_path)
    _refused(res, "already holds", "model.npz")
    assert (tmp_path / "model.npz").read_text() == "mine" and (tmp_path / "report.json").read_text() == "{}"


def test_python_save_replaces_by_default_refuses_on_request_and_uses_the_umask(files, tmp_path):
    fit = pg.load(files / "model.npz")
    path = tmp_path / "m.npz"
    old = os.umask(0o027)
    try:
        fit.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's 0o600
    finally:
        os.umask(old)
    fit.save(path)  # Python's rule: a write replaces
    with pytest.raises(pg.OutputError, match="already exists"):
        fit.save(path, overwrite=False)
    assert stat.S_IMODE((files / "model.npz").stat().st_mode) == 0o666 & ~old


# ----------------------------------------------------------------------------- 2. absurd counts
@pytest.mark.parametrize("value", [1e12, 2.0**31])
def test_counts_beyond_int32_are_refused_naming_row_and_gene(value, tmp_path):
    a = _adata()
    a.X[4, 7] = value
    with pytest.raises(pg.DataError, match=r"above 2,147,483,647 \(2\*\*31 - 1\).*obs 'c4', gene 'g7'"):
        pg.from_anndata(a, "~ group")
    import scipy.sparse as sp

    a.X = sp.csr_matrix(a.X)
    with pytest.raises(pg.DataError, match="obs 'c4', gene 'g7'"):
        pg.from_anndata(a, "~ group")
    a.write_h5ad(tmp_path / "huge.h5ad")
    res, _ = _run("fit", tmp_path / "huge.h5ad", "--out", tmp_path / "m.npz")
    _refused(res, "2**31 - 1", "'c4'", "'g7'")
    assert not (tmp_path / "m.npz").exists()


def test_counts_at_the_bound_are_accepted():
    a = _adata()
    a.X[0, 0] = 2.0**24
    assert pg.from_anndata(a, "~ group").n_obs == a.n_obs


def test_deep_bulk_counts_above_float32_precision_are_fitted_with_a_warning():
    """Deep bulk samples reach 2**24 (gtex_brain's largest count is 1.6e7): warned, not refused."""
    a = _adata()
    a.X[0, 0] = 5e7
    with pytest.warns(RuntimeWarning, match=r"1 value\(s\) above 16,777,216 \(2\*\*24\)"):
        assert pg.from_anndata(a, "~ group").n_obs == a.n_obs


# ----------------------------------------------------------------------------- 3. extrapolation, non-finite output
def test_numeric_covariate_outside_the_training_range(files, tmp_path):
    fit = pg.load(files / "model.npz")
    obs = pd.DataFrame({"group": ["a"], "age": [14.0]}, index=["n0"])
    with pytest.warns(pg.ExtrapolationWarning, match=r"'age'.*\[1, 12\].*14"):
        fit.predict(obs, n_samples=4)
    (tmp_path / "far.csv").write_text(",group,age\nn0,a,1000000\n")
    res, _ = _run("predict", files / "model.npz", "--obs", tmp_path / "far.csv", "--out", tmp_path / "p.nc")
    _refused(res, "'age'", "[1, 12]", "1e+06")
    assert not (tmp_path / "p.nc").exists()


def test_non_finite_predictions_are_never_written(files, tmp_path):
    res, _ = _run("predict", files / "model.npz", "--obs", files / "meta.csv", "--n-samples", "4",
                  "--library-size", "1e300", "--out", tmp_path / "p.nc")
    _refused(res, "non-finite", "10 genes, e.g. ['g0', 'g1', 'g2']", "nothing was written")
    assert not (tmp_path / "p.nc").exists()


# ----------------------------------------------------------------------------- 4. one rule for numeric columns
def test_a_numeric_column_with_a_stray_string_is_refused_at_fit_and_predict(files, tmp_path):
    a = _adata()
    age = a.obs["age"].astype(object)
    age.iloc[5] = "unknown"
    a.obs["age"] = age
    with pytest.raises(pg.DataError, match=r"'age' holds numbers and the non-numeric value\(s\) \['unknown'\].*'c5'"):
        pg.from_anndata(a, "~ age")
    fit = pg.load(files / "model.npz")
    with pytest.raises(pg.DataError, match=r"'age' must be numeric.*\['unknown'\]"):
        fit.predict(pd.DataFrame({"group": ["a", "b"], "age": [3, "unknown"]}), n_samples=4)
    # numbers stored as text are numbers at both ends
    assert fit.predict(pd.DataFrame({"group": ["a"], "age": ["3.5"]}), n_samples=4)["mean"].shape == (1, 10)
    a.obs["age"] = a.obs["age"].astype("category")  # an explicit factor is a factor
    assert pg.from_anndata(a, "~ age").n_design == len(a.obs["age"].cat.categories)


# ----------------------------------------------------------------------------- 5. sizes
def test_sizes_beyond_memory_are_refused_with_the_estimate(files, tmp_path):
    res, _ = _run("fit", files / "data.h5ad", "--model", "cvae", "--latent-dim", "1000000000",
                  "--out", tmp_path / "m.npz")
    _refused(res, "GiB", "--latent-dim")
    res, _ = _run("predict", files / "model.npz", "--obs", files / "meta.csv", "--n-samples", "1000000000",
                  "--out", tmp_path / "p.nc")
    _refused(res, "GiB", "--n-samples")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 6. power
def test_power_pilot_must_be_the_fitted_data_and_a_contrast_two_levels(files, tmp_path):
    other = _adata(g=12, seed=1)
    other.var_names = [f"x{j}" for j in range(12)]
    other.write_h5ad(tmp_path / "other.h5ad")
    res, _ = _run("power", files / "model.npz", "--contrast", "group:b:a", "--pilot", tmp_path / "other.h5ad",
                  "--out", tmp_path / "p")
    _refused(res, "not the data the model was fitted on", "10 genes", "12")
    res, _ = _run("power", files / "model.npz", "--contrast", "group:a:a", "--out", tmp_path / "p")
    _refused(res, "'group:a:a' compares level 'a' with itself")
    with pytest.raises(pg.SpecError, match="with itself"):
        pg.power.curve(pg.load(files / "model.npz"), ("group", "b", "b"), key=None)
    assert not (tmp_path / "p").exists()


@pytest.mark.slow  # 9 s quiet (the default suite is at its 10-minute budget)
def test_power_json_is_valid_json(files, tmp_path):
    res, _ = _run("power", files / "model.npz", "--contrast", "group:b:a", "--n", "3", "--n-draws", "2",
                  "--n-rep", "1", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "p" / "power.json").read_text()

    def no_constants(c):
        raise AssertionError(f"power.json holds {c}")

    s = json.loads(text, parse_constant=no_constants)
    assert s["settings"]["dispersion_level_se"] is None  # no pilot: unknown, not NaN


# ----------------------------------------------------------------------------- tracebacks -> one line
def test_bad_data_files_are_one_line_errors(files, tmp_path):
    (tmp_path / "text.h5ad").write_text("gene,c1\n")
    blob = (files / "data.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(blob[: len(blob) // 2])
    for path, words in ((tmp_path / "missing.h5ad", ("not found",)), (tmp_path / "text.h5ad", ("not an .h5ad",)),
                        (tmp_path / "cut.h5ad", ("truncated or damaged",))):
        res, _ = _run("fit", path, "--out", tmp_path / "m.npz")
        _refused(res, str(path.name), *words)
        res, _ = _run("predict", files / "model.npz", "--obs", path, "--out", tmp_path / "p.nc")
        _refused(res, str(path.name))
    (tmp_path / "empty.csv").write_text("")
    res, _ = _run("predict", files / "model.npz", "--obs", tmp_path / "empty.csv", "--out", tmp_path / "p.nc")
    _refused(res, "empty.csv", "cannot be read as a table")
    res, _ = _run("fit", files / "data.h5ad", "--spec", tmp_path / "nope.toml", "--out", tmp_path / "m.npz")
    _refused(res, "nope.toml", "no such file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.h5ad", "empty.csv", "text.h5ad"]


def test_bad_options_are_one_line_errors_before_reading_data(files, tmp_path):
    nothing = tmp_path / "missing.h5ad"  # never read: the options are checked first
    for opt, words in ((["--max-epochs", "0"], ("max_epochs", "positive")),
                       (["--batch-size", "0"], ("batch_size", "positive"))):
        res, _ = _run("fit", nothing, *opt, "--out", tmp_path / "m.npz")
        _refused(res, *words)
    for opt, words in ((["--n-samples", "0"], ("--n-samples", "positive")),
                       (["--n-samples", "-3"], ("--n-samples",)),
                       (["--levels", "90,95"], ("--levels", "0.9 for a 90% interval")),
                       (["--levels", "0.5,1.5"], ("--levels", "strictly between 0 and 1"))):
        res, _ = _run("predict", nothing, "--obs", nothing, *opt, "--out", tmp_path / "p.nc")
        _refused(res, *words)
        res, _ = _run("check", nothing, "--data", nothing, *opt, "--out", tmp_path / "r")
        _refused(res, *words)
    (tmp_path / "spec.toml").write_text('formula = "~ group"\n')
    res, _ = _run("fit", files / "data.h5ad", "--spec", tmp_path / "spec.toml", "--formula", "~ age",
                  "--out", tmp_path / "m.npz")
    _refused(res, "--spec", "--formula", "nothing is silently overridden")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_text_library_size_column_and_fractional_draws(files, tmp_path):
    (tmp_path / "m.csv").write_text(",group,age,depth\nc0,a,3,deep\nc1,b,4,1000\n")
    res, _ = _run("predict", files / "model.npz", "--obs", tmp_path / "m.csv", "--library-size", "depth",
                  "--out", tmp_path / "p.nc")
    _refused(res, "--library-size column 'depth'", "deep")
    fit = pg.load(files / "model.npz")
    with pytest.raises(pg.SpecError, match="positive integer"):
        fit.predict(fit_obs(), n_samples=5.5)


def fit_obs():
    return pd.DataFrame({"group": ["a"], "age": [3.0]})


def test_check_with_one_heldout_observation(files, tmp_path):
    _adata()[:1].write_h5ad(tmp_path / "one.h5ad")
    res, _ = _run("check", files / "model.npz", "--data", tmp_path / "one.h5ad", "--out", tmp_path / "r")
    _refused(res, "1 observation", "more held-out observations")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- warnings and refusals at fit
def test_design_warnings_and_duplicate_names():
    a = _adata()
    a.obs["batch"] = "only"
    with pytest.warns(pg.DesignWarning, match=r"\['batch'\] have a single level"):
        pg.from_anndata(a, "~ group + batch")
    a.obs["age2"] = 2 * a.obs["age"]
    with pytest.warns(pg.DesignWarning, match=r"collinear.*'age2'"):
        pg.from_anndata(a, "~ age + age2")
    dup = a.copy()
    dup.obs_names = ["c0"] + list(a.obs_names[1:-1]) + ["c0"]
    with pytest.warns(pg.DesignWarning, match=r"duplicated.*'c0'"):
        pg.from_anndata(dup, "~ group")
    dup = a.copy()
    dup.var_names = ["g0"] + list(a.var_names[1:])
    dup.var_names = list(dup.var_names[:-1]) + ["g0"]
    with pytest.raises(pg.DataError, match=r"gene names must be unique.*'g0'"):
        pg.from_anndata(dup, "~ group")
    with pytest.warns(pg.DesignWarning, match="one observation"):
        pg.from_anndata(a[:1].copy(), "~ 1")
    with pytest.warns(pg.DesignWarning, match="one gene"):
        pg.from_anndata(a[:, :1].copy(), "~ group")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pg.from_anndata(a, "~ group + age")  # a sound design: no warning
