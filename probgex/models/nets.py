"""Flax NNX building blocks of the generative stories."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """Fully connected network: hidden layers with ReLU, then one linear output layer per head.

    `hidden=()` makes it a linear map. Several heads share the trunk (e.g. NB means and ZINB gates).
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: Sequence[int], *, rngs: nnx.Rngs):
        sizes = [n_in, *hidden]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.heads = nnx.List([nnx.Linear(sizes[-1], k, rngs=rngs) for k in n_out])

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return tuple(head(x) for head in self.heads)


def gaussian_head(loc: jax.Array, raw_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Map two network outputs to a Gaussian's location and a positive, bounded-below scale."""
    return loc, jax.nn.softplus(raw_scale) + 1e-4


def concat(*arrays: jax.Array) -> jax.Array:
    return jnp.concatenate(arrays, axis=-1)
