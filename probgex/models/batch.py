"""The minibatch every generative story consumes: fixed shapes, so the jitted step never recompiles."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Batch(NamedTuple):
    """A fixed-size block of observations; padded rows have `mask` False and contribute nothing.

    `scale` is n_train / n_real_rows_per_step, so a minibatch ELBO is an unbiased estimate of the full one.
    `x` is None when predicting from metadata alone.
    """

    x: jax.Array | None  # (B, G) float32 counts
    log_lib: jax.Array  # (B,) float32 log library size
    design: jax.Array  # (B, P) float32 design rows
    group: jax.Array  # (B,) int32 dispersion-group code (0 when dispersion is per gene)
    mask: jax.Array  # (B,) bool
    scale: jax.Array  # () float32
    offset: jax.Array | None = None  # (B, G) float32 log stage-1 mean fraction (residual story only)
