"""The shell contract: `probgex fit`, `predict`, `demo` through typer's runner."""

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def yeast_small(tmp_path_factory):
    """60 expressed yeast genes of the clean replicates, as a file."""
    a = pg.datasets.schurch_yeast()
    a = a[~a.obs["flagged_bad_rep"].astype(bool)]
    keep = np.flatnonzero(np.asarray(a.X.sum(0)).ravel() > 100)[:60]
    a = a[:, keep].copy()
    folder = tmp_path_factory.mktemp("cli")
    a.write_h5ad(folder / "y.h5ad")
    a.obs.iloc[[0, 1, -1]].assign(depth=[1e6, 2e6, 3e6]).to_csv(folder / "meta.csv")
    return folder, a


@pytest.fixture(scope="module")
def fitted(yeast_small):
    folder, _ = yeast_small
    res = runner.invoke(app, ["fit", str(folder / "y.h5ad"), "--formula", "~ strain", "--likelihood", "nb",
                              "--max-epochs", "60", "--seed", "1", "--out", str(folder / "m.npz")])
    assert res.exit_code == 0, res.output
    return folder / "m.npz"


def test_fit_writes_a_loadable_model(fitted, yeast_small):
    fit = pg.load(fitted)
    assert fit.spec.formula == "~ strain" and fit.spec.story == "glm"
    assert list(fit.var_names) == list(yeast_small[1].var_names)


def test_predict_writes_netcdf_with_requested_levels(fitted, yeast_small):
    folder, _ = yeast_small
    out = folder / "p.nc"
    res = runner.invoke(app, ["predict", str(fitted), "--obs", str(folder / "meta.csv"), "--n-samples", "40",
                              "--levels", "0.5,0.9", "--library-size", "depth", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out, engine="h5netcdf") as p:
        assert dict(p["counts"].sizes) == {"sample": 40, "obs": 3, "gene": 60}
        assert list(p["level"].values) == [0.5, 0.9]
        # two WT replicates at depths 1e6 and 2e6: the predictive mean is linear in the library size
        ratio = (p["mean"].isel(obs=1) / p["mean"].isel(obs=0)).values
        assert np.allclose(ratio, 2.0, rtol=1e-5)


def test_bad_input_in_the_shell_is_a_clear_error_not_a_traceback(fitted, yeast_small):
    folder, _ = yeast_small
    (folder / "bad.csv").write_text("strain,rep\nMutant,1\n")
    res = runner.invoke(app, ["predict", str(fitted), "--obs", str(folder / "bad.csv"), "--out",
                              str(folder / "x.nc")])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "unseen" in msg and "Mutant" in msg
    (folder / "junk.npz").write_bytes(b"not a model")
    res = runner.invoke(app, ["predict", str(folder / "junk.npz"), "--obs", str(folder / "meta.csv"), "--out",
                              str(folder / "x.nc")])
    assert res.exit_code == 2 and "not a readable probgex model file" in " ".join(res.output.split())


@pytest.mark.slow
def test_demo_runs_end_to_end_and_is_calibrated(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "report.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"model.npz", "predictions.nc", "report.json", "report.html", "coverage.png"}
    # 15 held-out replicates x ~7,000 genes: calibrated within a few points at every level
    for level, cov in summary["coverage"].items():
        assert abs(cov - float(level)) < 0.03, summary["coverage"]
    power = json.loads((out / "power" / "power.json").read_text())
    assert (out / "power" / "power.png").exists()
    est = [r["power"] for r in power["per_n"]]
    assert [r["n_per_group"] for r in power["per_n"]] == [3, 6, 12]
    assert all(0 < p < 1 for p in est) and est[0] < est[-1]  # more replicates, more power
    assert "power from a 3-vs-3 pilot" in res.output and f"{est[0]:.3f}" in res.output  # printed, not only written


def test_prediction_arguments_are_checked_before_any_jax_work(fitted, yeast_small):
    fit = pg.load(fitted)
    obs = yeast_small[1].obs.iloc[:3]
    with pytest.raises(pg.DataError, match="library_size has 2 values for 3 observations"):
        fit.predict(obs, n_samples=5, library_size=[1e6, 2e6])
    with pytest.raises(ValueError, match="positive integer"):
        fit.predict(obs, n_samples=0)
    with pytest.raises(pg.DataError, match="library_size must be positive"):
        fit.predict(obs, n_samples=5, library_size=-1.0)


@pytest.mark.slow  # 14-18 s: the default suite stays under its 10 minutes
def test_fit_from_a_spec_file_and_check_writes_the_report(yeast_small, tmp_path):
    folder, a = yeast_small
    spec = pg.ModelSpec.create("~ strain", "nb", dispersion="gene-group", dispersion_key="strain")
    spec.save(tmp_path / "spec.toml")
    model = tmp_path / "m.npz"
    res = runner.invoke(app, ["fit", str(folder / "y.h5ad"), "--spec", str(tmp_path / "spec.toml"),
                              "--max-epochs", "30", "--out", str(model)])
    assert res.exit_code == 0, res.output
    loaded = pg.load(model).spec  # library="auto" resolved at fit time, the rest as written
    assert loaded.library in ("observed", "size_factors") and loaded == dataclasses.replace(spec, library=loaded.library)
    res = runner.invoke(app, ["check", str(model), "--data", str(folder / "y.h5ad"), "--n-samples", "30",
                              "--reference", str(folder / "y.h5ad"), "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_obs"] == a.n_obs and report["n_genes"] == a.n_vars
    assert set(report["coverage"]) == {"0.5", "0.8", "0.9", "0.95"}
