"""Results into an AnnData (`probgex.annotate`, `Fit.annotate / latent / normalized`), in Python and in the
shell (`probgex annotate`, `probgex coef`), on the shared tiny GLM and cVAE fits."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app

runner = CliRunner()
N_SAMPLES = 30


@pytest.fixture(scope="module", params=["glm", "cvae"])
def annotated(request, small_adata):
    """(fit, the input, its state before, the annotated copy with both layers)."""
    fit = request.getfixturevalue(f"{request.param}_fit")
    before = small_adata.copy()
    out = fit.annotate(small_adata, layers=("mean", "normalized"), n_samples=N_SAMPLES, copy=True, seed=3)
    return fit, small_adata, before, out


def test_annotate_adds_the_keys_with_their_shapes_and_leaves_the_input_alone(annotated):
    fit, adata, before, out = annotated
    n, G = adata.shape
    assert out.obs["probgex_lpd"].shape == (n,) and np.isfinite(out.obs["probgex_lpd"]).all()
    assert out.obs["probgex_outlier"].shape == (n,) and (out.obs["probgex_outlier"] > 0).all()
    for name in ("mean", "normalized"):
        assert out.layers[f"probgex_{name}"].shape == (n, G)
    if fit.spec.latent is None:
        assert "X_probgex" not in out.obsm and list(out.var.columns) == ["probgex_dispersion"]
    else:
        assert out.obsm["X_probgex"].shape == (n, fit.spec.latent.dim)
        assert list(out.var.columns) == ["probgex_dispersion_x", "probgex_dispersion_y"]  # per batch level
    assert out.uns["probgex"]["story"] == fit.spec.story
    # counts and metadata untouched, in the copy and in the input (copy=True leaves the input as it was)
    for a in (out, adata):
        np.testing.assert_array_equal(a.X, before.X)
        pd.testing.assert_frame_equal(a.obs[list(before.obs.columns)], before.obs)
    assert list(adata.obs.columns) == list(before.obs.columns) and not adata.layers and not adata.obsm
    assert list(adata.var.columns) == list(before.var.columns)


def test_annotate_in_place_returns_none_and_adds_to_the_given_object(glm_fit, small_adata):
    a = small_adata.copy()
    x = a.X.copy()
    assert glm_fit.annotate(a, n_samples=N_SAMPLES) is None
    assert {"probgex_lpd", "probgex_outlier"} <= set(a.obs.columns) and "probgex_dispersion" in a.var
    np.testing.assert_array_equal(a.X, x)
    with pytest.raises(pg.DataError, match="view"):
        glm_fit.annotate(small_adata[:10], n_samples=N_SAMPLES)
    with pytest.raises(pg.SpecError, match="layers must be among"):
        glm_fit.annotate(a, layers=("scaled",), copy=True)


def test_lpd_is_the_fits_log_predictive_density_and_outlier_is_the_evaluate_pit_score(annotated):
    fit, adata, _, out = annotated
    lpd = fit.log_predictive_density(adata, n_samples=N_SAMPLES, seed=3)
    np.testing.assert_array_equal(out.obs["probgex_lpd"].to_numpy(), lpd.values)
    u = fit.evaluate(adata, n_samples=N_SAMPLES, seed=3)["pit"].values  # same streams: the same PIT values
    p = np.clip(2 * np.minimum(u, 1 - u), np.finfo(float).tiny, 1)
    np.testing.assert_allclose(out.obs["probgex_outlier"].to_numpy(), -np.log(p).mean(1), rtol=1e-12)


def test_outlier_score_is_about_one_on_the_models_own_counts_and_flags_a_corrupted_cell(glm_fit, small_adata):
    """Under the model -log(two-sided PIT p) ~ Exp(1) per entry: the mean over cells is ~1; a cell whose
    counts are scrambled across genes stands out."""
    a = small_adata.copy()
    x = a.X.copy()
    rng = np.random.default_rng(0)
    x[7] = rng.permutation(x[7]) * 4  # wrong genes, 4x the depth at the same library size: not the model's
    a.X = x
    s = pg.annotate.outlier_score(glm_fit, a, n_samples=N_SAMPLES)
    others = s.drop("cell7")
    assert abs(others.mean() - 1) < 0.1  # Exp(1) means of 24 genes, 149 cells: se ~ 0.02 (+ fit error)
    assert s["cell7"] > others.max()


def test_normalized_rows_sum_to_the_library_size_and_are_the_mean_composition(annotated, small_adata):
    fit, _, _, out = annotated
    norm_ = out.layers["probgex_normalized"].astype(np.float64)
    np.testing.assert_allclose(norm_.sum(1), 1e4, rtol=1e-5)
    mean = out.layers["probgex_mean"].astype(np.float64)
    if fit.spec.latent is not None and fit.spec.library == "observed":
        # the cVAE's mean is l x softmax: its frequencies are exactly mean / library size
        lib = np.asarray(small_adata.X.sum(1)).ravel()
        np.testing.assert_allclose(norm_, mean / lib[:, None] * 1e4, rtol=1e-4)
    else:  # per-draw composition vs the composition of the averaged mean: equal up to posterior spread
        np.testing.assert_allclose(norm_, mean / mean.sum(1, keepdims=True) * 1e4, rtol=0.02)
    # Fit.normalized is the layer (same seed and draws), as a DataFrame named like the data
    df = fit.normalized(small_adata, library_size=1e4, n_samples=N_SAMPLES, seed=3)
    assert list(df.index) == list(small_adata.obs_names) and list(df.columns) == list(fit.var_names)
    np.testing.assert_allclose(df.to_numpy(), norm_, rtol=1e-5)


def test_glm_dispersion_recovers_the_simulated_one(glm_fit):
    """small_adata is NB with theta = 10, i.e. alpha = 0.1 for every gene."""
    d = pg.annotate.dispersion(glm_fit)["dispersion"]
    assert 0.06 < d.median() < 0.15


def test_latent_means_and_errors(cvae_fit, glm_fit, small_adata):
    z = cvae_fit.latent(small_adata)
    assert z.shape == (small_adata.n_obs, 2) and np.isfinite(z).all() and z.std(0).min() > 0
    with pytest.raises(pg.SpecError, match="no latent"):
        glm_fit.latent(small_adata)
    with pytest.raises(pg.SpecError, match="no latent"):
        glm_fit.prior_samples(small_adata.obs)


def test_prior_samples_and_log_prob_agree_for_the_gaussian_prior(cvae_fit, small_adata):
    """The Gaussian prior's draws have the location and scale under which prior_log_prob is the normal density."""
    obs = small_adata.obs.iloc[:3]
    z = cvae_fit.prior_samples(obs, n_samples=4000, seed=1)
    assert z.shape == (4000, 3, 2)
    loc, scale = z.mean(0), z.std(0)
    lp = cvae_fit.prior_log_prob(obs, loc[None] + 0.5 * scale[None])
    expected = norm.logpdf(0.5, 0, 1) * 2 - np.log(scale).sum(-1)
    np.testing.assert_allclose(lp[0], expected, atol=0.05)
    with pytest.raises(pg.DataError, match="shape"):
        cvae_fit.prior_log_prob(obs, np.zeros((4, 2)))


def test_dropped_empty_observation_gets_nan(glm_fit, small_adata):
    a = small_adata.copy()
    x = a.X.copy()
    x[5] = 0
    a.X = x
    with pytest.warns(pg.EmptyWarning):
        out = glm_fit.annotate(a, n_samples=N_SAMPLES, copy=True)
    assert np.isnan(out.obs["probgex_lpd"].iloc[5]) and np.isfinite(out.obs["probgex_lpd"].drop("cell5")).all()


def test_genes_the_model_was_not_fitted_on_get_nan(annotated):
    fit, adata, _, out = annotated
    extra = ad.AnnData(np.ones((adata.n_obs, 1), np.float32), obs=adata.obs[[]],
                       var=pd.DataFrame(index=["not_fitted"]))
    wider = ad.concat([extra, adata], axis=1, merge="first")  # the unknown gene first: columns are matched by name
    got = fit.annotate(wider, layers=("mean", "normalized"), n_samples=N_SAMPLES, copy=True, seed=3)
    assert np.isnan(got.layers["probgex_normalized"][:, 0]).all() and got.var.iloc[0].isna().all()
    np.testing.assert_array_equal(got.layers["probgex_normalized"][:, 1:], out.layers["probgex_normalized"])
    pd.testing.assert_frame_equal(got.var.iloc[1:], out.var)


# ----- the shell
@pytest.fixture(scope="module")
def files(small_adata, glm_fit, glm_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotate")
    small_adata.write_h5ad(folder / "d.h5ad")
    return folder, glm_ckpt


def test_shell_annotate_writes_the_annotated_data(files, small_adata):
    folder, model = files
    res = runner.invoke(app, ["annotate", str(model), str(folder / "d.h5ad"), "--out", str(folder / "o.h5ad"),
                              "--layer", "normalized", "--n-samples", str(N_SAMPLES)])
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(folder / "o.h5ad")
    assert {"probgex_lpd", "probgex_outlier"} <= set(out.obs.columns) and "probgex_normalized" in out.layers
    np.testing.assert_array_equal(out.X, small_adata.X)
    again = runner.invoke(app, ["annotate", str(model), str(folder / "d.h5ad"), "--out", str(folder / "o.h5ad")])
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize("case", ["missing data", "out is input", "out is model", "bad layer", "not h5ad"])
def test_shell_annotate_bad_input_is_a_one_line_error(files, case):
    folder, model = files
    data, out, extra = folder / "d.h5ad", folder / f"{case.replace(' ', '_')}.h5ad", []
    if case == "missing data":
        data = folder / "nope.h5ad"
    elif case == "out is input":
        out = data
    elif case == "out is model":
        out = model
    elif case == "bad layer":
        extra = ["--layer", "scaled"]
    else:
        out = folder / "o.csv"
    stamp = data.stat().st_mtime_ns if data.exists() else None
    res = runner.invoke(app, ["annotate", str(model), str(data), "--out", str(out), *extra])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert {"missing data": "not found", "out is input": "also an input", "out is model": "also an input",
            "bad layer": "scaled", "not h5ad": ".h5ad"}[case] in res.output
    if stamp is not None:
        assert data.stat().st_mtime_ns == stamp


def test_shell_coef_matches_fit_coefficients(files, glm_fit):
    folder, model = files
    res = runner.invoke(app, ["coef", str(model), "--out", str(folder / "coef.csv"), "--levels", "0.8,0.95"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(folder / "coef.csv")
    ds = glm_fit.coefficients((0.8, 0.95))
    assert list(table.columns) == ["gene", "term", "mean", "sd", "lower_0.8", "upper_0.8", "lower_0.95", "upper_0.95"]
    assert len(table) == ds.sizes["gene"] * ds.sizes["coef"]
    for _, row in table.sample(10, random_state=0).iterrows():
        sel = {"gene": row["gene"], "coef": row["term"]}
        assert row["mean"] == pytest.approx(float(ds["mean"].sel(**sel)), rel=1e-6)
        assert row["sd"] == pytest.approx(float(ds["sd"].sel(**sel)), rel=1e-6)
        assert row["upper_0.95"] == pytest.approx(float(ds["upper"].sel(level=0.95, **sel)), rel=1e-6)


def test_shell_coef_refuses_a_model_without_coefficients(cvae_fit, tmp_path):
    cvae_fit.save(tmp_path / "c.npz")
    res = runner.invoke(app, ["coef", str(tmp_path / "c.npz"), "--out", str(tmp_path / "c.csv")])
    assert res.exit_code == 2 and "needs a glm" in res.output and not (tmp_path / "c.csv").exists()
    res = runner.invoke(app, ["coef", str(tmp_path / "c.npz"), "--out", str(tmp_path / "c.npz")])
    assert res.exit_code == 2 and "also an input" in res.output


# ----- the shell's fit offers what Python's does
def test_shell_fit_passes_dispersion_learning_rate_patience_and_prior_steps(files, monkeypatch):
    folder, _ = files
    seen = {}

    def fake_fit(self, adata, **options):
        seen.update(options, spec=self.spec)
        return "fitted"

    monkeypatch.setattr(pg.Model, "fit", fake_fit)
    res = runner.invoke(app, ["fit", str(folder / "d.h5ad"), "--out", str(folder / "f.npz"), "--model", "cvae",
                              "--prior", "flow", "--latent-dim", "2", "--prior-steps", "7", "--dispersion",
                              "gene-group", "--dispersion-key", "batch", "--learning-rate", "0.005", "--patience", "4"])
    assert res.exit_code == 0, res.output
    assert seen["learning_rate"] == 0.005 and seen["patience"] == 4
    spec = seen["spec"]
    assert (spec.dispersion, spec.dispersion_key, spec.latent.kind, spec.latent.training.max_steps) == ("gene-group", "batch",
                                                                                               "flow", 7)


@pytest.mark.parametrize("args,message", [
    (["--dispersion", "gene-group"], "dispersion_key"),
    (["--dispersion", "per-cell"], "per-cell"),
    (["--prior-steps", "10"], "--prior diffusion"),
    (["--model", "cvae", "--prior", "flow", "--prior-steps", "0"], "--prior-steps must be a positive"),
    (["--learning-rate", "0"], "learning_rate must be a positive"),
    (["--patience", "0"], "patience must be a positive"),
])
def test_shell_fit_refuses_bad_new_options_before_any_work(files, args, message):
    folder, _ = files
    res = runner.invoke(app, ["fit", str(folder / "d.h5ad"), "--out", str(folder / "bad.npz"), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (folder / "bad.npz").exists()


def test_shell_fit_refuses_new_options_next_to_a_spec_file(files, tmp_path):
    folder, _ = files
    pg.ModelSpec.create("~ group").save(tmp_path / "s.toml")
    res = runner.invoke(app, ["fit", str(folder / "d.h5ad"), "--out", str(tmp_path / "m.npz"), "--spec",
                              str(tmp_path / "s.toml"), "--dispersion", "gene-group", "--dispersion-key", "batch"])
    assert res.exit_code == 2 and "--dispersion, --dispersion-key was given too" in res.output
