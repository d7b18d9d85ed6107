"""The cVAE's conditional latent prior p(z | c) as a `LatentPrior` protocol: the Gaussian prior network
trained with the VAE, and a learned prior (diffusion / flow, `prior.learned`) trained after it on the
aggregate posterior (draws of the encoder's q(z | x, c)). The cVAE asks `prior_for(params)` which one the fitted parameters hold and never
branches on the kind; a new prior is one class implementing the protocol (and its spec in `latent`).
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from probgex.models.nets import gaussian_head


class LatentPrior(Protocol):
    """log p(z | c) and draws from it, as pure functions of the fitted parameters."""

    def draw(self, params: dict, nets: dict, key: jax.Array, design: jax.Array, n: int) -> jax.Array:
        """n latents per row of the design: (n, B, dim)."""

    def log_prob(self, params: dict, nets: dict, key: jax.Array, design: jax.Array, z: jax.Array) -> jax.Array:
        """log p(z | c) for latents z (..., B, dim): (..., B)."""


def draw_normal(d: dist.Distribution, key: jax.Array, n: int) -> jax.Array:
    """n reparameterised draws of a (possibly Independent) Normal, broadcasting explicitly: (n, *shape)."""
    base = d.base_dist if isinstance(d, dist.Independent) else d
    eps = jax.random.normal(key, (n, *base.loc.shape), base.loc.dtype)
    return base.loc[None] + base.scale[None] * eps


class GaussianPrior:
    """p(z | c) = N(m(c), diag s(c)^2) from the prior network (`nets["prior"]`), fitted with the VAE."""

    @staticmethod
    def distribution(prior_net, design) -> dist.Distribution:
        return dist.Normal(*gaussian_head(*prior_net(design))).to_event(1)

    def draw(self, params, nets, key, design, n):
        return draw_normal(self.distribution(nets["prior"], design), key, n)

    def log_prob(self, params, nets, key, design, z):
        return self.distribution(nets["prior"], design).log_prob(z)


class Learned:
    """A learned prior (`prior.learned.LearnedPrior`) with its parameters in params["learned_prior"]."""

    def __init__(self, prior, dim: int):
        self.prior, self.dim = prior, dim

    def draw(self, params, nets, key, design, n):
        c = jnp.broadcast_to(design, (n, *design.shape)).reshape(-1, design.shape[-1])
        return self.prior.sample(params["learned_prior"], key, c).reshape(n, design.shape[0], self.dim)

    def log_prob(self, params, nets, key, design, z):
        c = jnp.broadcast_to(design, z.shape[:-1] + design.shape[-1:]).reshape(-1, design.shape[-1])
        lp = self.prior.log_prob(params["learned_prior"], z.reshape(-1, self.dim), c, key=key)
        return lp.reshape(z.shape[:-1])
