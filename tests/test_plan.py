"""The training plan (story-dependent defaults), the shared early-stopping rule and the Story protocol."""

import numpy as np
import pandas as pd
import pytest

from probgex.errors import DataError
from probgex.inference import plan
from probgex.inference.loop import EarlyStopping, scale_learning_rate
from probgex.spec import ModelSpec


def _spec(latent=None):
    from probgex.latent import Gaussian

    return ModelSpec.create("~ g", "nb", Gaussian(dim=4) if latent else None)


def test_plan_defaults_by_story_and_size():
    glm, cvae = _spec(), _spec(latent=True)
    # a small bulk GLM holds none out; 50+ observations and every network hold out 10%
    assert plan.holdout_fraction(glm, 12, None) == 0.0
    assert plan.holdout_fraction(glm, 50, None) == 0.1
    assert plan.holdout_fraction(cvae, 12, None) == 0.1
    assert plan.holdout_fraction(glm, 12, 0.25) == 0.25
    # 6 samples, batch 128: one step an epoch, so ~3000 epochs for the GLM; patience 100 steps
    p = plan.plan(glm, 6, holdout=0.0, batch_size=128)
    assert (p.max_epochs, p.patience, p.learning_rate, p.lr_reductions, p.step_scale) == (3000, 100, 0.02, 2, ())
    # 10,000 cells in batches of 128: 79 steps an epoch; the cVAE's 4000 steps are under its 400 epochs
    q = plan.plan(cvae, 10_000, holdout=0.1, batch_size=128)
    assert (q.max_epochs, q.patience, q.learning_rate, q.lr_reductions) == (400, 10, 1e-3, 0)
    # the gene concentrations and the per-cell dispersion scales' prior (sample_quality "on") step 20x
    assert dict(q.step_scale) == {k: plan.THETA_STEP_SCALE for k in ("log_theta", "quality_mean", "quality_sd")}
    # what the user sets is kept
    r = plan.plan(cvae, 10_000, holdout=0.1, batch_size=64, max_epochs=7, patience=3, learning_rate=0.5,
                  lr_reductions=1)
    assert (r.max_epochs, r.patience, r.learning_rate, r.lr_reductions, r.batch_size) == (7, 3, 0.5, 1, 64)


def test_train_config_defaults_are_the_network_plan():
    from probgex.inference.svi import TrainConfig

    c = TrainConfig()
    n = plan.NETWORK
    assert (c.learning_rate, c.lr_reductions, c.max_epochs, c.param_step_scale) == (
        n.learning_rate, n.lr_reductions, n.min_epochs, n.step_scale)
    built = plan.plan(_spec(), 6, holdout=0.0, batch_size=4).train_config(checkpoint_every=5, progress=False)
    assert (built.max_epochs, built.learning_rate, built.checkpoint_every, built.progress) == (1500, 0.02, 5, False)


def test_split_by_name_and_fraction():
    names = pd.Index([f"o{i}" for i in range(20)])
    tr, ho = plan.split(names, 0.25, None, seed=3)
    assert len(ho) == 5 and len(tr) == 15 and not set(tr) & set(ho)
    assert np.array_equal(ho, plan.split(names, 0.25, None, seed=3)[1])  # the seed decides
    tr, ho = plan.split(names, 0.0, ["o2", "o7"], seed=0)
    assert list(ho) == [2, 7]
    with pytest.raises(DataError, match="none of heldout_obs"):
        plan.split(names, 0.0, ["x"], seed=0)
    with pytest.raises(DataError, match="fraction"):
        plan.split(names, 1.5, None, seed=0)


def test_early_stopping_cuts_then_stops():
    s = EarlyStopping(patience=4, reductions=1)
    seq = [s.observe(v) for v in (3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5)]
    # two stale epochs (patience // 2) cut the rate once and restart the count; then four stale stop
    assert seq == ["improved", "improved", "stale", "cut", "stale", "stale", "stale", "stop"]
    assert s.best == 2.0
    t = EarlyStopping(patience=2, min_delta=0.1)
    assert [t.observe(v) for v in (1.0, 0.95, 0.85)] == ["improved", "stale", "improved"]


def test_learning_rate_cut_on_optax_state():
    import jax.numpy as jnp
    import optax

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=0.1))
    state = (0, ({"a": 1}, tx.init({"a": jnp.ones(2)})))  # numpyro's (step, (params, optax state)) wrapping
    cut = scale_learning_rate(state, 0.2)
    assert float(optax.tree_utils.tree_get(cut, "learning_rate")) == pytest.approx(0.02)
    assert float(optax.tree_utils.tree_get(state, "learning_rate")) == pytest.approx(0.1)  # a new state


def test_every_registered_story_implements_the_protocol():
    from probgex.latent import Gaussian
    from probgex.models.dims import Dims
    from probgex.models.story import STORIES, Story, build_story

    dims = Dims(n_design=2, n_genes=5, n_groups=1, intercept=0, lib_loc=7.0, lib_scale=0.3, seed=0)
    for name in STORIES:
        latent = None if name in ("glm", "residual_glm") else Gaussian(dim=2)
        mean = "glm" if name.startswith("residual") else None
        spec = ModelSpec.create("~ g", "nb", latent, mean=mean)
        assert spec.story == name
        story = build_story(spec, dims, np.zeros(5, np.float32))
        assert isinstance(story, Story)
        assert story.learned is None and story.prior_template() == {}
        assert isinstance(story.count_split, bool)
