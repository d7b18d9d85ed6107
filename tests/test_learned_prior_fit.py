"""A cVAE with a learned latent prior (Diffusion / Flow) through the whole API: spec and TOML, fitting
(VAE, then the prior on the aggregate posterior), prediction and scoring from the learned prior, the model
file (parameters in the npz, no pickle) and the shell."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app
from probgex.inference.prior_stage import encoder_means
from probgex.spec import ModelSpec


def energy_distance(x, y):
    d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).mean()  # noqa: E731
    return float(2 * d(x, y) - d(x, x) - d(y, y))


@pytest.mark.parametrize("latent", [pg.latent.Diffusion(dim=3, net=pg.latent.Network(hidden=(16,)), sampler="sde",
                                                        sde=pg.latent.SDE(solver="heun", n_steps=50), guidance=0.5),
                                    pg.latent.Diffusion(dim=2, parametrization="eps"),
                                    pg.latent.Flow(dim=4, net=pg.latent.Network(hidden=(32, 32), cond_dropout=0.0),
                                                   ode=pg.latent.ODE(rtol=1e-3))])
def test_learned_latent_toml_round_trip(latent, tmp_path):
    spec = ModelSpec.create("~ group", "zinb", latent, encoder=(8,))
    assert ModelSpec.from_toml(spec.to_toml()) == spec
    spec.save(tmp_path / "m.toml")
    assert ModelSpec.load(tmp_path / "m.toml").latent == latent
    assert ModelSpec.from_dict(spec.to_dict()).latent.kind == latent.kind


@pytest.mark.parametrize("bad, match", [
    (dict(kind="diffusion", sampler="langevin"), "sampler"),
    (dict(kind="diffusion", sde={"solver": "rk4"}), "SDE.solver"),
    (dict(kind="flow", sampler="sde"), "unknown key"),
    (dict(kind="flow", sde={"solver": "heun"}), "unknown key"),
    (dict(kind="flow", net={"hidden": []}), "at least one hidden layer"),
    (dict(kind="flow", guidance=1.0, net={"cond_dropout": 0.0}), "cond_dropout"),
    (dict(kind="diffusion", training={"learning_rate": 0}), "learning_rate"),
    (dict(kind="diffusion", training={"max_steps": 0}), "max_steps"),
    (dict(kind="diffusion", training={"max_step": 10}), "did you mean 'max_steps'"),
    (dict(kind="diffusion", parametrization="x0"), "parametrization"),
    (dict(kind="flow", parametrization="v"), "unknown key"),
    (dict(kind="diffusion", net={"cond_dropout": 1.0}), "cond_dropout"),
    (dict(kind="diffusion", ode={"solver": "rk4"}), "ODE.solver"),
    # the flat layout of files written before the nested options is read, and checked the same way
    (dict(kind="diffusion", sde_solver="rk4"), "SDE.solver"),
    (dict(kind="flow", net=[]), "at least one hidden layer"),
    (dict(kind="diffusion", max_steps=0), "max_steps"),
])
def test_learned_latent_rejects_bad_options(bad, match):
    with pytest.raises(pg.SpecError, match=match):
        ModelSpec.from_dict({"formula": "~ group", "latent": bad})


@pytest.fixture(scope="module", params=["diffusion", "flow"])
def learned_fit(request, small_adata):
    cls = {"diffusion": pg.latent.Diffusion, "flow": pg.latent.Flow}[request.param]
    model = pg.Model("~ group", likelihood="nb", latent=cls(dim=2, net=pg.latent.Network(hidden=(32, 32)),
                                                                 training=pg.latent.Training(max_steps=1500,
                                                                                             learning_rate=4e-3)),
                     encoder=(16,), decoder=(16,))
    return model.fit(small_adata, seed=0, max_epochs=8, progress=False)


def test_fit_trains_the_prior_on_the_encoder_means(learned_fit, small_adata):
    """The learned prior's draws given each cell's design match that cell group's encoder means better
    than the VAE-stage Gaussian prior network does (which the learned prior replaces)."""
    fit = learned_fit
    assert "learned_prior" in fit.params
    data = fit.data(small_adata)
    rows = np.arange(data.n_obs)
    z = encoder_means(fit.story, fit.params, data, rows)
    learned = fit.story.learned
    gaussian = {k: v for k, v in fit.params.items() if k != "learned_prior"}
    nets = fit.story._nets(gaussian)
    design = data.design[rows]
    z_learned = np.asarray(learned.sample(fit.params["learned_prior"], jax.random.PRNGKey(0), design))
    z_gauss = np.asarray(fit.story.gaussian.draw(gaussian, nets, jax.random.PRNGKey(0), design, 1))[0]
    for g in ("a", "b", "c"):
        m = np.asarray(small_adata.obs["group"] == g)
        assert energy_distance(z_learned[m], z[m]) < energy_distance(z_gauss[m], z[m])
    # the prior was standardised on the training cells' means
    np.testing.assert_allclose(fit.params["learned_prior"]["loc"], z[np.isin(data.obs.index, fit.heldout_obs,
                                                                                invert=True)].mean(0), rtol=1e-4,
                               atol=1e-5)


def test_predict_evaluate_and_model_file_with_a_learned_prior(learned_fit, small_adata, tmp_path):
    fit = learned_fit
    pred = fit.predict(small_adata.obs.iloc[:12], n_samples=20, seed=1)
    assert pred["counts"].shape == (20, 12, small_adata.n_vars) and np.isfinite(pred["mean"]).all()
    lpd = fit.log_predictive_density(small_adata[:16], n_samples=8)
    assert np.isfinite(lpd).all() and (lpd < 0).all()
    path = fit.save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as npz:  # the prior's weights are plain arrays in the file
        assert any(k.startswith("param['learned_prior']['net']") for k in npz.files)
    back = pg.load(path)
    assert back.spec == fit.spec
    again = back.predict(small_adata.obs.iloc[:12], n_samples=20, seed=1)
    np.testing.assert_array_equal(again["counts"].values, pred["counts"].values)
    np.testing.assert_allclose(back.log_predictive_density(small_adata[:16], n_samples=8), lpd, rtol=1e-5)


@pytest.mark.slow  # ODE sampling and log densities compiled for three shapes: 12-22 s per prior on 2 cores
def test_prior_samples_and_log_prob_come_from_the_learned_prior(learned_fit, small_adata):
    """`Fit.prior_samples` draws from the learned prior (closer to each group's encoder means than the
    VAE-stage Gaussian prior), and `Fit.prior_log_prob` is a normalised density: on a grid over the
    draws' range exp(log p(z | c)) integrates to 1."""
    fit = learned_fit
    obs = small_adata.obs
    zs = fit.prior_samples(obs, n_samples=1, seed=0)[0]
    z = fit.latent(small_adata)
    gaussian = {k: v for k, v in fit.params.items() if k != "learned_prior"}
    design = fit.data(small_adata).design
    z_gauss = np.asarray(fit.story.gaussian.draw(gaussian, fit.story._nets(gaussian), jax.random.PRNGKey(0), design,
                                                 1))[0]
    for g in ("a", "b", "c"):
        m = np.asarray(obs["group"] == g)
        assert energy_distance(zs[m], z[m]) < energy_distance(z_gauss[m], z[m])
    draws = fit.prior_samples(obs.iloc[:1], n_samples=400, seed=1)[:, 0]
    lo, hi = draws.min(0) - 3 * draws.std(0), draws.max(0) + 3 * draws.std(0)
    axes = [np.linspace(lo[i], hi[i], 50) for i in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2)
    lp = fit.prior_log_prob(obs.iloc[:1], grid, seed=2)[:, 0]
    cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
    assert np.exp(lp).sum() * cell == pytest.approx(1.0, abs=0.05)


def test_shell_prior_option_needs_the_cvae(tmp_path, small_adata):
    small_adata.write_h5ad(tmp_path / "x.h5ad")
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "m.npz"),
                                   "--prior", "flow"])
    assert res.exit_code != 0 and "needs --model cvae" in res.output


@pytest.mark.slow
def test_shell_fit_with_a_learned_prior_spec(tmp_path, small_adata):
    small_adata.write_h5ad(tmp_path / "x.h5ad")
    runner = CliRunner()
    spec = ModelSpec.create("~ group", "nb", pg.latent.Flow(dim=2, net={"hidden": (8,)}, training={"max_steps": 100}),
                            encoder=(8,),
                            decoder=(8,))
    spec.save(tmp_path / "m.toml")
    res = runner.invoke(app, ["fit", str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "m.npz"), "--spec",
                              str(tmp_path / "m.toml"), "--max-epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "learned_prior" in pg.load(tmp_path / "m.npz").params


# ----------------------------------------------------------------------------- checkpoints of the two stages
def test_interrupted_prior_stage_leaves_a_valid_vae_checkpoint(learned_fit, small_adata, tmp_path, monkeypatch):
    """Ctrl-C while the prior trains (after the VAE stage): the checkpoint is the VAE stage's, loads (saying
    the prior is not trained), predicts from the VAE-stage Gaussian prior, and `train_prior` completes it to
    the same model as the uninterrupted fit (`learned_fit`: same options and seed)."""
    from probgex.prior.learned import LearnedPrior

    path = tmp_path / "ckpt.npz"
    model = pg.Model(learned_fit.spec.formula, likelihood="nb", latent=learned_fit.spec.latent, encoder=(16,),
                     decoder=(16,), library=learned_fit.spec.library)
    assert model.spec == learned_fit.spec

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LearnedPrior, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(small_adata, seed=0, max_epochs=8, progress=False, checkpoint_path=path, checkpoint_every=3)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    with pytest.warns(pg.IncompleteFitWarning, match="not trained yet"):
        vae = pg.load(path)
    assert vae.learned_prior_status == "not trained" and "prior not trained" in repr(vae)
    assert vae.finished is True  # the VAE stage itself ran to its end
    assert "learned_prior" not in vae.params and vae.prior_history is None
    # the VAE stage is complete: its best parameters, the same as the uninterrupted fit's
    assert vae.history == learned_fit.history
    for k, v in vae.params.items():
        jax.tree.map(np.testing.assert_array_equal, v, learned_fit.params[k])
    pred = vae.predict(small_adata.obs.iloc[:6], n_samples=10, seed=1)
    assert pred["counts"].shape == (10, 6, small_adata.n_vars) and np.isfinite(pred["mean"]).all()
    assert np.isfinite(vae.log_predictive_density(small_adata[:8], n_samples=4)).all()
    # the Gaussian prior's predictions differ from the learned prior's (the status is not cosmetic)
    assert not np.array_equal(pred["counts"].values,
                              learned_fit.predict(small_adata.obs.iloc[:6], n_samples=10, seed=1)["counts"].values)

    done = vae.train_prior(small_adata, progress=False, checkpoint_path=path)
    assert done.learned_prior_status == "trained" and done.prior_history is not None
    jax.tree.map(np.testing.assert_array_equal, done.params["learned_prior"], learned_fit.params["learned_prior"])
    back = pg.load(path)  # no warning: the file now holds the trained prior (warnings are errors in tests)
    assert back.learned_prior_status == "trained" and back.prior_history == done.prior_history
    np.testing.assert_array_equal(back.predict(small_adata.obs.iloc[:6], n_samples=10, seed=1)["counts"].values,
                                  learned_fit.predict(small_adata.obs.iloc[:6], n_samples=10, seed=1)["counts"].values)


def test_train_prior_checks_its_inputs(learned_fit, cvae_fit, small_adata):
    with pytest.raises(pg.SpecError, match="learned latent prior"):
        cvae_fit.train_prior(small_adata, progress=False)
    held = np.isin(small_adata.obs_names, learned_fit.heldout_obs)
    with pytest.raises(pg.DataError, match="held-out observations are not in adata"):
        learned_fit.train_prior(small_adata[~held], progress=False)
    with pytest.raises(pg.DataError, match="every observation"):
        learned_fit.train_prior(small_adata[held], progress=False)


def test_a_diffusion_model_file_from_before_the_parametrization_option_reads_as_eps(learned_fit, tmp_path):
    """Files written before `parametrization` existed hold a noise-predicting network: they must load as
    "eps", not with the new default "v" (which would silently change what the network means)."""
    from probgex.inference import checkpoint

    if learned_fit.spec.latent.kind != "diffusion":
        pytest.skip("the option is the diffusion prior's")
    assert learned_fit.spec.latent.parametrization == "v"
    header, arrays = checkpoint.read(learned_fit.save(tmp_path / "new.npz"))
    header = {k: v for k, v in header.items() if k not in ("format", "version", "sha256")}
    del header["spec"]["latent"]["parametrization"]
    old = pg.load(checkpoint.write(tmp_path / "old.npz", header, arrays))
    assert old.spec.latent.parametrization == "eps" and old.story.learned.dynamics.parametrization == "eps"
    assert pg.load(tmp_path / "new.npz").story.learned.dynamics.parametrization == "v"


def _flat_latent(latent: dict) -> dict:
    """A latent table in the flat layout the code wrote before the nested options (its field order)."""
    flat = {"kind": latent["kind"], "dim": latent["dim"], "hidden": latent["hidden"], "net": latent["net"]["hidden"],
            **{k: latent["training"][k] for k in ("max_steps", "batch_size", "learning_rate")},
            "cond_dropout": latent["net"]["cond_dropout"], "guidance": latent["guidance"],
            "rtol": latent["ode"]["rtol"], "atol": latent["ode"]["atol"]}
    if latent["kind"] == "diffusion":
        flat |= {"sampler": latent["sampler"], "sde_solver": latent["sde"]["solver"],
                 "sde_steps": latent["sde"]["n_steps"], "parametrization": latent["parametrization"]}
    return flat


def test_a_model_file_with_the_flat_latent_layout_loads_and_predicts_the_same(learned_fit, small_adata, tmp_path):
    """Model files written before the nested prior options store them flat in the latent table: they load
    without a warning, to the same spec, and predict the same draws."""
    from probgex.inference import checkpoint

    header, arrays = checkpoint.read(learned_fit.save(tmp_path / "new.npz"))
    header = {k: v for k, v in header.items() if k not in ("format", "version", "sha256")}
    header["spec"]["latent"] = _flat_latent(header["spec"]["latent"])
    assert "training" not in header["spec"]["latent"] and isinstance(header["spec"]["latent"]["net"], list)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = pg.load(checkpoint.write(tmp_path / "old.npz", header, arrays))
    assert old.spec == learned_fit.spec
    new, before = (f.predict(small_adata.obs.iloc[:6], n_samples=8, seed=0) for f in (learned_fit, old))
    np.testing.assert_array_equal(before["mean"], new["mean"])


def test_checkpoint_from_the_middle_of_the_vae_stage(small_adata, tmp_path, monkeypatch):
    """Ctrl-C in the VAE stage after a periodic checkpoint: that checkpoint loads (saying it is unfinished
    and the prior untrained) and predicts; train_prior refuses it (the prior is trained on a finished VAE)."""
    path = tmp_path / "ckpt.npz"
    real_save = pg.Fit.save

    def interrupted_save(self, where):
        if len(self.history.train) == 4:
            raise KeyboardInterrupt
        return real_save(self, where)

    monkeypatch.setattr(pg.Fit, "save", interrupted_save)
    model = pg.Model("~ group", likelihood="nb", latent=pg.latent.Flow(dim=2, net={"hidden": (8,)},
                                                                            training={"max_steps": 50}), encoder=(8,),
                     decoder=(8,))
    with pytest.raises(KeyboardInterrupt):
        model.fit(small_adata, seed=0, max_epochs=20, progress=False, checkpoint_path=path, checkpoint_every=2)
    monkeypatch.undo()
    with pytest.warns(pg.IncompleteFitWarning, match="before the fit finished"):
        ckpt = pg.load(path)
    assert ckpt.finished is False and ckpt.learned_prior_status == "not trained" and len(ckpt.history.train) == 2
    assert "unfinished fit (epoch 2)" in repr(ckpt)
    pred = ckpt.predict(small_adata.obs.iloc[:5], n_samples=8, seed=0)
    assert np.isfinite(pred["mean"]).all()
    with pytest.raises(pg.ModelFileError, match="before it finished"):
        ckpt.train_prior(small_adata, progress=False)
