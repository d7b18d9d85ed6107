"""Named random streams from one key or seed: the only place probgex derives randomness.

The convention, for every entry point (`Model.fit(seed=)`, `Fit.predict(seed=)`, `Fit.evaluate(seed=)`,
`Fit.log_predictive_density(seed=)`, `diagnostics.check(seed=)`, `power.curve(key=)` and the other power
functions that take `key`): the argument is either an int seed or a JAX PRNG key (a raw
`jax.random.PRNGKey(s)` or a typed `jax.random.key(s)`); an int `s` means `jax.random.PRNGKey(s)`, so
`seed=3` and `seed=jax.random.PRNGKey(3)` give the same result. The same argument gives the same result.

Each use of randomness takes its own stream, `stream(seed, "name")` = `fold_in(root, STREAMS["name"])`,
JAX side, or `host_rng(seed, "name")`, a NumPy generator seeded by that stream's key. Streams are named
in one table, so two uses never share one by accident (no `seed + 1` arithmetic, no fixed keys), and a
new use is a new row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from probgex._checks import check_seed
from probgex.errors import SpecError

# stream name -> the integer folded into the root key; never reuse or renumber a row (results move)
STREAMS: dict[str, int] = {
    # fitting
    "holdout": 1,  # which observations are held out for early stopping
    "shuffle": 2,  # minibatch order: epoch e's permutation is child e of this stream (a pure function of
    # (seed, epoch), so a resumed fit needs no generator state)
    "init": 3,  # SVI / optimizer initialisation
    "networks": 4,  # initial weights of a story's networks
    "prior_network": 5,  # initial weights of a learned latent prior's network
    "prior_stage": 6,  # training of the learned latent prior
    "trend_rows": 7,  # the training rows the GLM's mean-dispersion trend is placed on
    "stage1": 8,  # the stage-1 mean predictor's own fit
    "svi_steps": 9,  # the SVI step keys: epoch e starts from fold_in(this stream, e)
    # prediction and scoring
    "predictive": 10,  # parameter and latent draws of the predictive
    "sampling": 11,  # count draws, library sizes and PIT randomisation on the host
    "log_density": 12,  # importance / posterior draws of log p(x | c)
    "programs": 13,  # random gene programs and their PIT randomisation (check)
    "blocks": 14,  # per-block host streams of the check's scores
    "rootogram": 15,  # the report's rootogram pass
    # power
    "posterior": 20,  # posterior draws of the truth
    "effect_moments": 21,  # extra posterior draws for the shrinkage prior's moments
    "shrinkage": 22,  # mapping draws through the shrinkage prior
    "dispersion_level": 23,  # the pilot's dispersion-level uncertainty
    "experiments": 24,  # simulated experiments
    "pilot": 25,  # which pilot replicates a demo draws
    # variance explained
    "explain_obs": 30,  # the subset of observations beyond max_obs
    "explain_counts": 31,  # count draws of the decomposition
    "explain_draws": 32,  # posterior and latent draws of the decomposition
    # synthetic data
    "synthetic": 40,  # parameter and latent draws of `sample`
    "synthetic_counts": 41,  # library sizes and counts of `sample` (child (chunk, block) per block)
}


def as_key(seed) -> jax.Array:
    """The root key of an int seed or a JAX key (typed keys are returned as their raw uint32 data)."""
    if _is_int(seed):
        return jax.random.PRNGKey(int(seed))
    if isinstance(seed, jax.Array | np.ndarray):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            seed = jax.random.key_data(seed)
        if seed.shape == (2,) and seed.dtype == np.uint32:  # one threefry key
            return jnp.asarray(seed)
    raise SpecError(f"seed must be an int or one JAX PRNG key (jax.random.PRNGKey(0) or jax.random.key(0)), "
                    f"got {type(seed).__name__} {getattr(seed, 'shape', '')}".rstrip())


_is_int = check_seed  # True for an int seed (checked, without JAX), False for anything else


def stream(seed, name: str) -> jax.Array:
    """The key of stream `name` under the root `seed` (an int or a key)."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; add it to probgex.rng.STREAMS")
    return jax.random.fold_in(as_key(seed), STREAMS[name])


def key_words(key: jax.Array) -> list[int]:
    """A key's bits as Python ints (a NumPy SeedSequence's entropy); a key of another PRNG than
    threefry (other than two words) is refused by `as_key`."""
    return [int(x) for x in np.asarray(as_key(key)).ravel()]


def host_rng(seed, name: str, *index: int) -> np.random.Generator:
    """A NumPy generator for stream `name`; `index` picks an independent child (e.g. a block number)."""
    return np.random.default_rng(np.random.SeedSequence(key_words(stream(seed, name)), spawn_key=index))


def seed_int(seed) -> int:
    """An int seed that stands for `seed` where one must be stored (a model file): an int as it is, the
    key `PRNGKey(s)` as s (so both give the same fit), any other key as an int drawn from it. Everything
    a fitted model derives later (its networks, the prior stage) uses this int, so a refit or a resumed
    stage with it reproduces the fit."""
    if _is_int(seed):
        return int(seed)
    hi, lo = key_words(seed)
    if hi == 0 and lo < 2**31:
        return lo
    return int(jax.random.randint(as_key(seed), (), 0, 2**31 - 1))
