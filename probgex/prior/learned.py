"""A learned conditional prior p(z | c) as plain functions of a parameter dict, so it can live inside
the jitted prediction of a fitted model and be saved with the other parameters (no pickle).

Parameters: {"net": the network's weights (pure dict), "loc": (dim,), "scale": (dim,)}. The network
works on standardised latents (z - loc) / scale, the training latents' mean and sd per dimension;
log p(z | c) adds the Jacobian -sum log scale.

Trained on the aggregate posterior: given the encoder's means and scales of q(z | x, c) per cell, every
minibatch draws fresh z ~ q(z | x, c) (what the decoder was trained on), and loc / scale are the aggregate
posterior's moments. Trained on the means alone, a latent that does not vary between cells (posterior
collapse, e.g. a bulk design the formula explains) gave scale ~1e-6: a point mass of that width, under
which the encoder-proposal draws of the held-out log density (sd ~0.5) scored about -1e13.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from probgex import rng as streams
from probgex.choices import SAMPLERS
from probgex.errors import SpecError
from probgex.prior.dynamics import VPSDE, FlowMatching
from probgex.prior.nets import VectorFieldNet
from probgex.prior.ode import EXACT_TRACE_MAX_DIM, nfe, ode_log_prob, ode_sample
from probgex.prior.options import Training
from probgex.prior.sde_sampler import sde_sample
from probgex.prior.train import PriorHistory, train_network

# how each learned prior turns noise into latents (its loss and ODE vector field), from its spec: a new
# learned prior is a spec class in probgex.latent and a row here
DYNAMICS = {"diffusion": lambda spec: VPSDE(parametrization=spec.parametrization),
            "flow": lambda spec: FlowMatching()}


class LearnedPrior:
    """The prior a `probgex.latent.Diffusion` / `Flow` spec describes, over its `dim` latents given `n_cond`
    covariates: a diffusion (VP-SDE score model) or flow-matching prior. Every option comes from the spec
    (validated there, once): the network (`spec.net`), the training schedule (`spec.training`), the ODE
    (`spec.ode`) and, for the diffusion, the sampler, the reverse SDE and the parametrization."""

    def __init__(self, spec, n_cond: int, *, seed: int = 0):
        self.spec, self.kind, self.dim, self.n_cond = spec, spec.kind, spec.dim, int(n_cond)
        self.cond_dropout, self.guidance, self.sampler = spec.net.cond_dropout, spec.guidance, spec.sampler
        self.ode, self.sde = spec.ode, spec.sde  # sde: None for the flow
        self.dynamics = DYNAMICS[spec.kind](spec)
        rngs = nnx.Rngs(streams.stream(seed, "prior_network"))
        self.net = VectorFieldNet(self.dim, self.n_cond, spec.net.hidden, rngs=rngs)
        self._graphdef, state = nnx.split(self.net)
        self._state_template = state

    # ----- parameters
    def template(self) -> dict:
        """Parameters of an untrained prior (the structure that save/load fills)."""
        return {"net": jax.tree.map(np.asarray, nnx.to_pure_dict(self._state_template)),
                "loc": np.zeros(self.dim, np.float32), "scale": np.ones(self.dim, np.float32)}

    def network(self, params: dict) -> VectorFieldNet:
        state = jax.tree.map(lambda a: a, self._state_template)
        nnx.replace_by_pure_dict(state, params["net"])
        return nnx.merge(self._graphdef, state)

    # ----- sampling and scoring (pure, jittable; `params` from `fit` or a model file)
    def sample(self, params: dict, key: jax.Array, c: jax.Array, *, sampler: str | None = None,
               guidance: float | None = None, return_nfe: bool = False):
        """One latent per row of the design `c` (N, n_cond): (N, dim) [and the number of network evaluations]."""
        net = self.network(params)
        sampler = sampler or self.sampler
        w = self.guidance if guidance is None else float(guidance)
        c = jnp.asarray(c, jnp.float32)
        d = self.dynamics
        if sampler == "sde":
            if self.sde is None:
                raise SpecError("the reverse-SDE sampler exists for the diffusion prior only; use sampler='ode'")
            u = sde_sample(d, net, key, c, self.dim, self.sde, w)
            evals = jnp.asarray(self.sde.n_steps * self.sde.evals_per_step + int(self.sde.denoise))
        elif sampler == "ode":
            u, evals = ode_sample(d.velocity, net, key, c, self.dim, d.t_noise, d.t_data, self.ode, w,
                                  return_nfe=True)
        else:
            raise SpecError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        evals = evals * (2 if w else 1)
        z = params["loc"] + params["scale"] * u
        return (z, evals) if return_nfe else z

    def log_prob(self, params: dict, z: jax.Array, c: jax.Array, *, key: jax.Array | None = None,
                 trace: str = "auto", n_probes: int = 1) -> jax.Array:
        """log p(z | c) per row (N,) through the ODE: exact trace up to dim 16 ("auto"), else Hutchinson."""
        if trace == "auto":
            trace = "exact" if self.dim <= EXACT_TRACE_MAX_DIM else "hutchinson"
        net = self.network(params)
        d = self.dynamics
        u = (jnp.asarray(z, jnp.float32) - params["loc"]) / params["scale"]
        lp = ode_log_prob(d.velocity, net, u, jnp.asarray(c, jnp.float32), d.t_noise, d.t_data, self.ode,
                          trace=trace, key=key, n_probes=n_probes)
        return lp - jnp.sum(jnp.log(params["scale"]))

    # ----- training
    def fit(self, key: jax.Array, z: np.ndarray, c: np.ndarray, *, z_val: np.ndarray | None = None,
            c_val: np.ndarray | None = None, z_scale: np.ndarray | None = None,
            z_val_scale: np.ndarray | None = None, holdout: float = 0.1, config: Training | None = None,
            progress: bool = True) -> tuple[dict, PriorHistory]:
        """Train on latents z (N, dim) with conditions c (N, n_cond); early stopping on (z_val, c_val) or,
        without them, on a random `holdout` fraction of the rows. With `z_scale` (N, dim) (and `z_val_scale`
        beside z_val), z and z_scale are the means and sds of Normal posteriors q(z | x, c): each minibatch
        draws z from them, so the prior learns their mixture (the aggregate posterior), not the means.
        `config`: the schedule (default the spec's). Returns (params, history)."""
        config = config or self.spec.training
        z, c = np.asarray(z, np.float32), np.asarray(c, np.float32)
        if z.ndim != 2 or z.shape[1] != self.dim or c.shape != (z.shape[0], self.n_cond):
            raise ValueError(f"expected z (N, {self.dim}) and c (N, {self.n_cond}); got {z.shape} and {c.shape}")
        sd = np.zeros_like(z) if z_scale is None else np.asarray(z_scale, np.float32)
        if sd.shape != z.shape or (z_val is not None and z_scale is not None and z_val_scale is None):
            raise ValueError(f"z_scale must have z's shape {z.shape} (and z_val_scale come with z_val); got {sd.shape}")
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(sd))) or np.any(sd < 0):
            raise ValueError("the latents to train the prior on contain NaN or inf (or a negative scale)")
        k_split, k_train = jax.random.split(key)
        if z_val is None:
            n_val = max(1, int(round(holdout * len(z))))
            perm = np.asarray(jax.random.permutation(k_split, len(z)))
            z_val, c_val, sd_val = z[perm[:n_val]], c[perm[:n_val]], sd[perm[:n_val]]
            z, c, sd = z[perm[n_val:]], c[perm[n_val:]], sd[perm[n_val:]]
        else:
            sd_val = np.zeros(np.shape(z_val), np.float32) if z_val_scale is None else z_val_scale
        dyn, p_drop, dim = self.dynamics, self.cond_dropout, self.dim
        if z_scale is None:  # point latents: trained on z itself
            loc, scale = z.mean(0), np.maximum(z.std(0), 1e-6)
            std = lambda a, s: (np.asarray(a, np.float32) - loc) / scale  # noqa: E731
            loss = lambda net, k, zb, cb: dyn.loss(net, k, zb, cb, p_drop)  # noqa: E731
        else:  # the aggregate posterior: its moments (mean of the means; variance of the means + mean variance)
            loc = z.mean(0)
            scale = np.maximum(np.sqrt(z.var(0) + np.mean(sd.astype(np.float64) ** 2, 0)), 1e-6).astype(np.float32)
            std = lambda a, s: np.concatenate([(np.asarray(a, np.float32) - loc) / scale,  # noqa: E731
                                               np.asarray(s, np.float32) / scale], axis=1)

            def loss(net, k, zb, cb):  # zb: standardised (means, sds); a fresh posterior draw per row and step
                kz, kl = jax.random.split(k)
                draw = zb[:, :dim] + zb[:, dim:] * jax.random.normal(kz, zb[:, :dim].shape, zb.dtype)
                return dyn.loss(net, kl, draw, cb, p_drop)

        state, hist = train_network(self.net, loss, k_train, std(z, sd), c, std(z_val, sd_val),
                                    np.asarray(c_val, np.float32), config, label=self.kind, progress=progress)
        params = {"net": nnx.to_pure_dict(state), "loc": loc.astype(np.float32), "scale": scale.astype(np.float32)}
        return jax.tree.map(np.asarray, params), hist


def learned_prior_of(latent, n_cond: int, seed: int) -> LearnedPrior | None:
    """The LearnedPrior a `probgex.latent.Diffusion` / `Flow` spec describes (None for other latents)."""
    return LearnedPrior(latent, n_cond, seed=seed) if latent.kind in DYNAMICS else None


def fit_learned_prior(prior: LearnedPrior, key: jax.Array, z, c, **kw) -> tuple[dict, PriorHistory]:
    """Functional alias of `LearnedPrior.fit`."""
    return prior.fit(key, z, c, **kw)


__all__ = ["DYNAMICS", "LearnedPrior", "fit_learned_prior", "learned_prior_of", "nfe"]
