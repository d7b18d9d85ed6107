"""The learned priors' nested options (issue 15 item 7): defined and validated once (SpecError), the
same object whichever way it is given (object, mapping, the deprecated flat keywords), and a spec round
trip through TOML; no JAX is needed for any of it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import probgex as pg
from probgex.latent import ODE, SDE, Diffusion, Flow, Network, Training
from probgex.spec import ModelSpec


def test_nested_options_given_as_objects_or_mappings_are_equal():
    a = Diffusion(dim=3, net=Network(hidden=(16,), cond_dropout=0.2), training=Training(max_steps=50),
                  ode=ODE(rtol=1e-3), sampler="sde", sde=SDE(solver="heun", n_steps=20))
    b = Diffusion(dim=3, net={"hidden": [16], "cond_dropout": 0.2}, training={"max_steps": 50}, ode={"rtol": 1e-3},
                  sampler="sde", sde={"solver": "heun", "n_steps": 20})
    assert a == b and hash(a) == hash(b)
    assert a.net.hidden == (16,) and a.training.max_steps == 50 and a.training.batch_size == 256
    assert a.sde.n_steps == 20 and a.ode.atol == 1e-4


def test_the_flat_keywords_warn_and_build_the_nested_options():
    with pytest.warns(DeprecationWarning, match=r"Flow\(net=, max_steps=, rtol=.*deprecated"):
        old = Flow(dim=2, net=(8,), max_steps=40, rtol=1e-3)
    assert old == Flow(dim=2, net=Network(hidden=(8,)), training=Training(max_steps=40), ode=ODE(rtol=1e-3))
    with pytest.warns(DeprecationWarning):  # a flat key beside its nested option overrides only that field
        mixed = Diffusion(dim=2, training=Training(batch_size=32), max_steps=7, sde_steps=9)
    assert mixed.training == Training(batch_size=32, max_steps=7) and mixed.sde == SDE(n_steps=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested form and the defaults never warn
        Diffusion(dim=2)
        Flow(dim=2, training={"max_steps": 3})


@pytest.mark.parametrize("make, match", [
    (lambda: Network(hidden=()), "Network.hidden needs at least one hidden layer"),
    (lambda: Network(hidden=(8, 0)), "Network.hidden must contain positive ints"),
    (lambda: Network(cond_dropout=0.95), "Network.cond_dropout must be a number >= 0 and <= 0.9"),
    (lambda: Training(max_steps=0), "Training.max_steps must be a positive int"),
    (lambda: Training(batch_size=2.5), "Training.batch_size must be a positive int"),
    (lambda: Training(learning_rate=0), "Training.learning_rate must be a number > 0"),
    (lambda: Training(ema=1.0), "Training.ema must be a number >= 0 and < 1"),
    (lambda: ODE(solver="rk4"), "ODE.solver must be one of 'tsit5', 'dopri5', 'euler'"),
    (lambda: ODE(atol=0), "ODE.atol must be a number > 0"),
    (lambda: SDE(solver="milstein"), "SDE.solver must be one of 'euler', 'heun'"),
    (lambda: SDE(n_steps=-1), "SDE.n_steps must be a positive int"),
    (lambda: Diffusion(dim=2, sampler="langevin"), "Diffusion.sampler must be one of 'ode', 'sde'"),
    (lambda: Diffusion(dim=2, training={"max_step": 3}), "did you mean 'max_steps'"),
    (lambda: Diffusion(dim=2, net="wide"), "Network.hidden must be a sequence of positive ints"),
    (lambda: Diffusion(dim=2, ode=1e-3), r"Diffusion.ode must be ODE\(...\)"),
    (lambda: Flow(dim=2, sde=SDE()), "unknown key in Flow: 'sde'"),
    (lambda: Flow(dim=2, guidance=1.0, net=Network(cond_dropout=0.0)), "guidance > 0 needs net.cond_dropout > 0"),
])
def test_bad_options_raise_spec_errors_naming_the_field(make, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(pg.SpecError, match=match):
            make()


def test_spec_toml_round_trip_writes_the_options_as_sub_tables():
    latent = Diffusion(dim=3, net=Network(hidden=(16, 8)), training=Training(max_steps=30, patience=2), sampler="sde")
    spec = ModelSpec.create("~ group", "nb", latent)
    text = spec.to_toml()
    for table in ("[latent.net]", "[latent.training]", "[latent.ode]", "[latent.sde]"):
        assert table in text
    assert "patience = 2" in text and ModelSpec.from_toml(text) == spec


def test_a_flat_spec_table_reads_without_a_warning():
    """The layout of spec files and model-file headers written before the nested options."""
    text = ('formula = "~ group"\n[latent]\nkind = "flow"\ndim = 2\nnet = [8]\nmax_steps = 100\n'
            'cond_dropout = 0.0\natol = 0.001\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = ModelSpec.from_toml(text)
    assert spec.latent == Flow(dim=2, net=Network(hidden=(8,), cond_dropout=0.0), training=Training(max_steps=100),
                               ode=ODE(atol=1e-3))


def test_the_latent_kinds_are_one_list():
    """The shell's --prior and the spec's kinds (choices), the spec classes (latent) and the learned priors'
    dynamics (prior.learned) name the same priors."""
    from probgex import choices, latent
    from probgex.prior.learned import DYNAMICS

    assert tuple(latent.LATENT_KINDS) == choices.LATENT_KINDS
    assert tuple(DYNAMICS) == choices.LEARNED_PRIORS
    assert all(latent.LATENT_KINDS[k].sampler in choices.SAMPLERS for k in choices.LEARNED_PRIORS)


OLD_FILE = Path(__file__).parent / "data" / "flat_latent_diffusion.npz"  # written by 820707a, flat layout


def _load_old_file():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pg.load(OLD_FILE)


def test_a_model_file_written_before_the_nested_options_loads_to_the_nested_spec():
    """tests/data/flat_latent_diffusion.npz was written by the code of 820707a (the flat latent layout):
    it loads without a warning, its options nested as they were given flat."""
    from probgex.inference.modelfile import header

    assert isinstance(header(OLD_FILE)["spec"]["latent"]["net"], list)  # the flat layout on disk
    fit = _load_old_file()
    assert fit.spec.latent == Diffusion(dim=2, net=Network(hidden=(8,)), training=Training(max_steps=40, batch_size=64),
                                        ode=ODE(rtol=1e-3, atol=1e-3), sampler="sde", sde=SDE(n_steps=5))
    assert fit.learned_prior_status == "trained"


@pytest.mark.slow
def test_the_old_model_file_predicts_what_the_old_code_predicted():
    import numpy as np
    import pandas as pd

    fit, data = _load_old_file(), OLD_FILE.parent
    obs = pd.DataFrame({"group": ["a", "b", "c"]}, index=["o1", "o2", "o3"])
    pred = fit.predict(obs, n_samples=16, seed=0, library_size=500.0)
    np.testing.assert_allclose(pred["mean"].values, np.load(data / "flat_latent_diffusion_pred_mean.npy"), rtol=1e-6)
