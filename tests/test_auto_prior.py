"""The cVAE's default latent prior `latent.Auto` (`probgex.inference.auto_prior`): the rule on arrays, the
spec (int latent, dict, TOML, the shell's --prior), a small fit that keeps the Gaussian (and equals the
explicit Gaussian fit), a fit that chooses the flow and its model file / `probgex info`, and resuming."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app
from probgex.fit import Fit
from probgex.inference import auto_prior
from probgex.inference.prior_stage import encoder_means
from probgex.latent import Auto, Flow, Gaussian, Training, latent_from_dict
from probgex.spec import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import _small_adata  # noqa: E402

runner = CliRunner()


def _params_equal(a: dict, b: dict) -> bool:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    return ta == tb and all(pa == pb and np.array_equal(np.asarray(x), np.asarray(y))
                            for (pa, x), (pb, y) in zip(la, lb, strict=True))


def _means(n: int, variances: list[float]) -> np.ndarray:
    """(n, len(variances)) encoder means whose column variances (ddof 0) are exactly `variances`: +-sqrt(v)
    alternating around an offset (n even)."""
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    return 0.7 + sign * np.sqrt(np.asarray(variances))[None, :]


# ----------------------------------------------------------------------------- the rule
def test_the_rule_chooses_the_flow_only_with_enough_cells_and_an_active_dimension():
    n, v = auto_prior.MIN_TRAIN_CELLS, auto_prior.ACTIVE_VARIANCE
    assert (n, v) == (200, 0.01)  # the benchmark's values (benchmarks/README.md), not tuned
    d = auto_prior.choose(_means(200, [0.0101, 0.0, 0.0099]))  # one of three just over the threshold
    assert (d["chosen"], d["n_train"], d["active_dims"], d["dim"]) == ("flow", 200, 1, 3)
    assert (d["min_train_cells"], d["active_variance"]) == (200, 0.01) and "200 training cells >= 200" in d["reason"]
    d = auto_prior.choose(_means(198, [0.5, 0.5, 0.5]))  # every dimension active, too few cells
    assert (d["chosen"], d["n_train"], d["active_dims"]) == ("gaussian", 198, 3) and "198 training cells < 200" in d["reason"]
    d = auto_prior.choose(_means(4000, [0.0099, 0.0, 1e-6]))  # many cells, no dimension active (a collapsed latent)
    assert (d["chosen"], d["active_dims"]) == ("gaussian", 0) and "no latent dimension active" in d["reason"]
    d = auto_prior.choose(_means(300, [0.02, 0.03, 0.0, 0.2]))
    assert (d["chosen"], d["active_dims"]) == ("flow", 3)
    assert json.loads(json.dumps(d)) == d  # plain data: it goes into the model file's JSON header
    with pytest.raises(ValueError, match="n_train, dim"):
        auto_prior.choose(np.zeros(10))


# ----------------------------------------------------------------------------- the spec
def test_an_int_latent_is_auto_for_the_cvae_and_gaussian_for_the_residual_story():
    assert ModelSpec.create("~ x", latent=5).latent == Auto(dim=5)
    assert pg.Model("~ x", latent=3).spec.latent == Auto(dim=3)
    assert ModelSpec.create("~ x", latent=5, mean="glm").latent == Gaussian(dim=5)
    assert ModelSpec.create("~ x", latent=Gaussian(dim=5)).latent == Gaussian(dim=5)  # explicit: unchanged
    with pytest.raises(pg.SpecError, match="residual story"):
        ModelSpec.create("~ x", latent=Auto(dim=2), mean="glm")
    with pytest.raises(pg.SpecError, match="Auto.dim"):
        Auto(dim=0)
    with pytest.raises(pg.SpecError, match="max_steps"):
        Auto(dim=2, training={"max_steps": 0})
    auto = Auto(dim=4, hidden=(8,), training=Training(max_steps=30))
    assert auto.resolve("gaussian") == Gaussian(dim=4, hidden=(8,))
    assert auto.resolve("flow") == Flow(dim=4, hidden=(8,), training=Training(max_steps=30))
    with pytest.raises(pg.SpecError, match="'gaussian' or 'flow'"):
        auto.resolve("diffusion")


def test_an_auto_spec_round_trips_through_dict_and_toml(tmp_path):
    spec = ModelSpec.create("~ group", "nb", Auto(dim=4, hidden=(8,), training={"max_steps": 30}), encoder=(8,))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_toml(spec.to_toml()) == spec
    assert "[latent]\nkind = \"auto\"" in spec.to_toml() and "[latent.training]" in spec.to_toml()
    spec.save(tmp_path / "m.toml")
    assert ModelSpec.load(tmp_path / "m.toml") == spec
    assert latent_from_dict({"kind": "auto", "dim": 3}) == Auto(dim=3)
    assert ModelSpec.from_toml('formula = "~ g"\n[latent]\nkind = "gaussian"\ndim = 3\n').latent == Gaussian(dim=3)


@pytest.mark.parametrize("args, kind, steps", [
    ([], "auto", 20_000), (["--prior-steps", "7"], "auto", 7), (["--prior", "gaussian"], "gaussian", None),
    (["--prior", "flow", "--prior-steps", "9"], "flow", 9), (["--prior", "auto"], "auto", 20_000)])
def test_the_shell_gives_the_cvae_the_auto_prior_unless_told(args, kind, steps, tmp_path, small_adata, monkeypatch):
    small_adata.write_h5ad(tmp_path / "d.h5ad")
    seen = {}
    monkeypatch.setattr(pg.Model, "fit", lambda self, adata, **kw: seen.update(spec=self.spec) or "fitted")
    res = runner.invoke(app, ["fit", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "f.npz"), "--model", "cvae",
                              "--latent-dim", "3", *args])
    assert res.exit_code == 0, res.output
    latent = seen["spec"].latent
    assert (latent.kind, latent.dim, getattr(getattr(latent, "training", None), "max_steps", None)) == (kind, 3, steps)
    seen.clear()
    res = runner.invoke(app, ["fit", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "r.npz"), "--model", "residual"])
    assert res.exit_code == 0, res.output
    assert seen["spec"].latent == Gaussian(dim=10)  # the residual story: unchanged
    res = runner.invoke(app, ["fit", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "g.npz"), "--model", "cvae",
                              "--prior", "gaussian", "--prior-steps", "5"])
    assert res.exit_code != 0 and "--prior-steps" in res.output


# ----------------------------------------------------------------------------- fits
def test_a_small_fit_keeps_the_gaussian_says_why_and_is_the_gaussian_fit(cvae_fit, small_adata):
    """The suite's 150-cell fixture (135 training cells) with the default latent: the Gaussian prior, the
    same parameters as the explicit Gaussian fit (`cvae_fit`), and the reason in fit_info."""
    model = pg.Model("~ group", likelihood="nb", latent=2, encoder=(16,), decoder=(16,),
                     dispersion="gene-group", dispersion_key="batch")
    assert model.spec.latent == Auto(dim=2)
    fit = model.fit(small_adata, seed=0, max_epochs=6, progress=False)
    assert fit.spec == cvae_fit.spec and fit.learned_prior_status == "none"
    assert _params_equal(fit.params, cvae_fit.params) and fit.history == cvae_fit.history
    choice = fit.fit_info["latent_choice"]
    assert (choice["chosen"], choice["n_train"]) == ("gaussian", 135) and "135 training cells < 200" in choice["reason"]
    assert "latent_choice" not in cvae_fit.fit_info  # an explicit prior records no choice
    assert "gaussian prior chosen by auto (135 training cells" in repr(fit)


FLOW_OPTIONS = dict(seed=0, max_epochs=6, progress=False)


def _flow_model() -> pg.Model:
    """`cvae_fit`'s model with the auto prior (the same shapes: its compiled programs are reused)."""
    return pg.Model("~ group", likelihood="nb", latent=Auto(dim=2, training=Training(max_steps=60, eval_every=30)),
                    encoder=(16,), decoder=(16,), dispersion="gene-group", dispersion_key="batch")


@pytest.fixture(scope="module")
def flow_adata():
    return _small_adata(n_obs=240)  # 216 training cells, 24 held out


@pytest.fixture(scope="module")
def flow_fit(flow_adata, tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "flow.npz"
    return _flow_model().fit(flow_adata, checkpoint_path=path, **FLOW_OPTIONS), path


@pytest.mark.slow  # a 240-cell fit compiles its own programs and the flow's: ~14 CPU s, ~20 s wall (2 loaded cores)
def test_a_fit_with_enough_active_cells_chooses_the_flow_and_its_file_is_a_flow_fit(flow_fit, flow_adata):
    fit, path = flow_fit
    assert fit.spec.latent == Flow(dim=2, training=Training(max_steps=60, eval_every=30))
    assert fit.learned_prior_status == "trained" and fit.prior_history is not None
    choice = fit.fit_info["latent_choice"]
    data = fit.data(flow_adata)
    train = np.flatnonzero(~data.obs.index.isin(fit.heldout_obs))
    active = int(np.sum(encoder_means(fit.story, fit.params, data, train).var(0) > 0.01))
    assert (choice["chosen"], choice["n_train"], choice["active_dims"]) == ("flow", 216, active) and active >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete model: no IncompleteFitWarning
        again = pg.load(path)
    assert again.spec == fit.spec and again.fit_info == fit.fit_info and again.learned_prior_status == "trained"
    assert _params_equal(again.params, fit.params)
    assert again.story.prior_for(again.params) is again.story.learned_prior  # predicts from the flow
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["spec"]["latent"]["kind"] == "flow" and info["fit_info"]["latent_choice"] == choice


@pytest.mark.slow
def test_an_auto_fit_resumes_its_vae_stage_then_decides(flow_fit, flow_adata, tmp_path, monkeypatch):
    """Killed in the VAE stage, or after it before the choice: the checkpoint says "auto" (loads with a
    warning, predicts from the Gaussian network), resuming (or `train_prior`) ends with the uninterrupted
    fit's model; resuming the finished model returns it."""
    full, full_path = flow_fit
    model = _flow_model()

    def killed_at(epoch):
        real = Fit.save

        def save(self, where, **kw):
            if len(self.history.train) == epoch and self.finished is False:
                raise KeyboardInterrupt
            return real(self, where, **kw)
        return save

    path = tmp_path / "killed.npz"
    monkeypatch.setattr(Fit, "save", killed_at(2))
    with pytest.raises(KeyboardInterrupt):
        model.fit(flow_adata, checkpoint_path=path, checkpoint_every=1, **FLOW_OPTIONS)
    monkeypatch.undo()
    resumed = model.fit(flow_adata, resume=path, **FLOW_OPTIONS)
    assert resumed.spec == full.spec and resumed.fit_info["latent_choice"] == full.fit_info["latent_choice"]
    assert _params_equal(resumed.params, full.params)

    path = tmp_path / "undecided.npz"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(auto_prior, "decide", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(flow_adata, checkpoint_path=path, **FLOW_OPTIONS)
    monkeypatch.undo()
    with pytest.warns(pg.IncompleteFitWarning, match="not chosen"):
        vae = pg.load(path)
    assert vae.spec.latent == model.spec.latent and vae.learned_prior_status == "not trained"
    assert "learned_prior" not in vae.params and "latent_choice" not in vae.fit_info
    completed = vae.train_prior(flow_adata, progress=False)
    assert completed.spec == full.spec and _params_equal(completed.params, full.params)
    assert completed.fit_info["latent_choice"] == full.fit_info["latent_choice"]
    again = model.fit(flow_adata, resume=path, **FLOW_OPTIONS)
    assert again.spec == full.spec and _params_equal(again.params, full.params)
    with pytest.warns(UserWarning, match="nothing to resume"):
        done = model.fit(flow_adata, resume=full_path, **FLOW_OPTIONS)
    assert done.spec == full.spec and _params_equal(done.params, full.params)
    assert done.fit_info == full.fit_info
