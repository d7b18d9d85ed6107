"""The vector-field network shared by both learned priors: v(z, t, c) in Flax NNX.

For the diffusion prior it predicts the noise eps (the score is -eps / sigma(t)); for the flow it is
the velocity field. The time enters through fixed Fourier features; the condition c (the design row)
is concatenated with a "condition present" flag, so classifier-free guidance can query the same
network unconditionally (c = 0, flag = 0), which training teaches by condition dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

N_FREQ = 8  # Fourier frequencies of the time embedding


def time_embedding(t: jax.Array, n_freq: int = N_FREQ) -> jax.Array:
    """(..., ) times in [0, 1] -> (..., 2 n_freq + 1) features: t, sin and cos of pi 2^k t."""
    freqs = jnp.pi * 2.0 ** jnp.arange(n_freq, dtype=jnp.float32)
    a = t[..., None] * freqs
    return jnp.concatenate([t[..., None], jnp.sin(a), jnp.cos(a)], axis=-1)


class VectorFieldNet(nnx.Module):
    """MLP with SiLU over [z, time features, c * keep, keep] -> R^dim."""

    def __init__(self, dim: int, n_cond: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
        self.dim, self.n_cond = dim, n_cond
        sizes = [dim + 2 * N_FREQ + 1 + n_cond + 1, *hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.out = nnx.Linear(sizes[-1], dim, rngs=rngs, kernel_init=nnx.initializers.zeros_init())

    def __call__(self, z: jax.Array, t: jax.Array, c: jax.Array, keep: jax.Array) -> jax.Array:
        """z (N, dim), t scalar or (N,), c (N, n_cond), keep (N,) in {0, 1} (0 = unconditional)."""
        t = jnp.broadcast_to(t, z.shape[:-1])
        keep = jnp.broadcast_to(keep, z.shape[:-1]).astype(z.dtype)
        h = jnp.concatenate([z, time_embedding(t), c * keep[..., None], keep[..., None]], axis=-1)
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.out(h)


def guided(net: VectorFieldNet, z: jax.Array, t: jax.Array, c: jax.Array, guidance: float) -> jax.Array:
    """Classifier-free guidance: (1 + w) v(z, t, c) - w v(z, t, null); w = 0 is the plain conditional net."""
    ones = jnp.ones(z.shape[:-1], z.dtype)
    v = net(z, t, c, ones)
    if guidance == 0.0:
        return v
    return (1.0 + guidance) * v - guidance * net(z, t, c, jnp.zeros_like(ones))
