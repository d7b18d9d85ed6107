"""PRNG discipline (probgex.rng): named streams from one int seed or JAX key, and per entry point
(fit, predict, evaluate, check, power.curve): the same seed gives the same result, another seed another,
and an int seed s means jax.random.PRNGKey(s)."""

import jax
import numpy as np
import pytest

import probgex as pg
from probgex import rng
from probgex.diagnostics import check
from probgex.power import curve


# ---------------------------------------------------------------- the module


def test_int_raw_key_and_typed_key_are_one_root():
    for s in (0, 7, 2**31 - 1):
        raw = np.asarray(jax.random.PRNGKey(s))
        for seed in (s, np.int64(s), jax.random.PRNGKey(s), jax.random.key(s)):
            np.testing.assert_array_equal(np.asarray(rng.as_key(seed)), raw)
            assert rng.seed_int(seed) == s


def test_streams_are_distinct_and_stable():
    keys = {name: tuple(rng.key_words(rng.stream(3, name))) for name in rng.STREAMS}
    assert len(set(keys.values())) == len(rng.STREAMS)  # no two uses share a stream
    assert len(set(rng.STREAMS.values())) == len(rng.STREAMS)
    assert keys["holdout"] == tuple(rng.key_words(jax.random.fold_in(jax.random.PRNGKey(3), rng.STREAMS["holdout"])))
    a, b = rng.host_rng(3, "blocks", 0).random(4), rng.host_rng(3, "blocks", 1).random(4)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, rng.host_rng(jax.random.key(3), "blocks", 0).random(4))


def test_seed_int_of_another_key_is_reproducible():
    k = jax.random.fold_in(jax.random.PRNGKey(0), 123)
    assert rng.seed_int(k) == rng.seed_int(k) and 0 <= rng.seed_int(k) < 2**31


@pytest.mark.parametrize("bad", [True, -1, 2**31, 1.5, "0", np.zeros(3, np.uint32), None])
def test_bad_seed_is_a_spec_error(bad):
    with pytest.raises(pg.SpecError, match="seed must be an int"):
        rng.as_key(bad)


def test_unknown_stream_name():
    with pytest.raises(KeyError, match="unknown random stream 'nope'"):
        rng.stream(0, "nope")


# ---------------------------------------------------------------- entry points


def _fit(adata, seed):
    # the shared GLM's data and shapes: its compiled step is reused from the session's XLA cache
    return pg.Model("~ group", likelihood="nb").fit(adata, seed=seed, max_epochs=3, progress=False)


def _same_params(a, b) -> bool:
    flat_a, flat_b = jax.tree.leaves(a.params), jax.tree.leaves(b.params)
    return all(np.array_equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))


def test_fit_same_seed_same_result(glm_fit, small_adata):
    a, b, c = _fit(small_adata, 0), _fit(small_adata, jax.random.PRNGKey(0)), _fit(small_adata, 1)
    assert _same_params(a, b) and a.history == b.history
    np.testing.assert_array_equal(a.heldout_obs, b.heldout_obs)
    assert not _same_params(a, c)
    assert set(a.heldout_obs) != set(c.heldout_obs)  # the held-out split follows the seed too


def test_predict_same_seed_same_result(glm_fit, small_adata):
    obs = small_adata.obs.iloc[:12]
    a = glm_fit.predict(obs, n_samples=6, seed=0)
    for same in (0, jax.random.PRNGKey(0), jax.random.key(0)):
        b = glm_fit.predict(obs, n_samples=6, seed=same)
        np.testing.assert_array_equal(a["counts"].values, b["counts"].values)
        np.testing.assert_array_equal(a["mean"].values, b["mean"].values)
    c = glm_fit.predict(obs, n_samples=6, seed=1)
    assert not np.array_equal(a["counts"].values, c["counts"].values)


def test_evaluate_same_seed_same_result(glm_fit, small_adata):
    data = small_adata[:12]
    a = glm_fit.evaluate(data, n_samples=6, seed=0)
    b = glm_fit.evaluate(data, n_samples=6, seed=jax.random.key(0))
    c = glm_fit.evaluate(data, n_samples=6, seed=1)
    np.testing.assert_array_equal(a["pit"].values, b["pit"].values)
    np.testing.assert_array_equal(a["log_predictive_density"].values, b["log_predictive_density"].values)
    assert not np.array_equal(a["pit"].values, c["pit"].values)
    assert not np.array_equal(a["log_predictive_density"].values, c["log_predictive_density"].values)


def test_check_same_seed_same_result(glm_fit, small_adata):
    data = small_adata[:30]
    opts = dict(n_samples=8, n_top_genes=8, program_size=3, n_random_programs=1, progress=False)
    a = check(glm_fit, data, seed=0, workers=1, **opts)
    b = check(glm_fit, data, seed=jax.random.PRNGKey(0), workers=2, **opts)
    c = check(glm_fit, data, seed=1, workers=1, **opts)
    for name in ("pit", "crps", "program_pit", "log_predictive_density"):
        np.testing.assert_array_equal(a.results[name].values, b.results[name].values)
    assert not np.array_equal(a.results["pit"].values, c.results["pit"].values)


def test_power_curve_same_key_same_result(glm_fit):
    opts = dict(n_draws=2, n_rep=1, depth=600.0, fdr=0.1, lfc=1.0, de_fraction=0.25, progress=False)
    a = curve(glm_fit, ("group", "b", "a"), [3], key=0, **opts)
    b = curve(glm_fit, ("group", "b", "a"), [3], key=jax.random.PRNGKey(0), **opts)
    c = curve(glm_fit, ("group", "b", "a"), [3], key=1, **opts)
    np.testing.assert_array_equal(a["power"].values, b["power"].values)
    np.testing.assert_array_equal(a["fdp"].values, b["fdp"].values)
    assert not (np.array_equal(a["power"].values, c["power"].values)
                and np.array_equal(a["fdp"].values, c["fdp"].values))
