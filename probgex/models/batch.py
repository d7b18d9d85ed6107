"""The minibatch every generative story consumes: fixed shapes, so the jitted step never recompiles."""

from __future__ import annotations

from typing import NamedTuple

import jax


class HighCounts(NamedTuple):
    """The entries of a batch with count >= 2 as a flat list of fixed length M (an upper bound for any
    batch of the data), sorted by row; padding entries have count 0 and the last row. The NB log-pmf's
    lgamma terms r(x, theta) are 0 at x = 0 and 1, so the training objective needs them only here."""

    row: jax.Array  # (M,) int32 row in the batch
    gene: jax.Array  # (M,) int32
    count: jax.Array  # (M,) float32


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
    high: HighCounts | None = None  # the entries x >= 2 (training objective's fast path), or None
    row: jax.Array | None = None  # (B,) int32 position of each row in the data (per-sample latents), or None
