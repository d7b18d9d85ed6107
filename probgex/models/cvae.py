"""The conditional VAE story: z_n ~ p(z | c_n) from a prior network, rho = softmax(f(z_n, c_n)),
mu_ng = l_n rho_ng, x_ng from a count family; guide q(z | x, c), an amortized encoder of log1p counts.

Networks are Flax NNX modules registered with `numpyro.contrib.module.nnx_module`; a family's
dispersion (the NB concentration, per gene or per gene and group) is a point estimate `log_theta`, as in
scVI, and each of its logit parameters (the ZINB gate, the hurdle) a decoder head. With
`library = "latent"`, log l_n ~ N(m, s^2) (m, s from the training library sizes) and the encoder
proposes it too; otherwise l_n is the observed total count.

With `spec.sample_quality == "on"` each cell n also scales every gene's NB overdispersion by exp(w_n)
(concentration theta_g exp(-w_n)), w_n ~ Student-t(4, 0, s) with s by empirical Bayes
(`probgex.models.quality`, the GLM's per-sample scale; the location is held at 0, absorbed by theta_g);
the encoder proposes w_n for a training cell and a new cell's w is drawn from the fitted prior, so its predictive is a scale mixture of NBs shared by all
its genes: a tight bulk of cells and rare noisy ones (the top expression decile's shape, issue 13).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from flax import nnx
from numpyro.contrib.module import nnx_module

from probgex.models import quality
from probgex.models.batch import Batch
from probgex.models.dims import Dims
from probgex import rng as streams
from probgex.models.distributions import count_term_sum, log_mean_exp
from probgex.models.families import family
from probgex.models.families.base import DISPERSION, LOGIT
from probgex.models.nets import MLP, concat, gaussian_head
from probgex.models.priors import GaussianPrior, LatentPrior, Learned, draw_normal
from probgex.prior.learned import learned_prior_of
from probgex.spec import ModelSpec


class CVAE:
    """NumPyro model and guide of the conditional VAE story."""

    def __init__(self, spec: ModelSpec, dims: Dims, log_mean: np.ndarray | None = None, start: dict | None = None):
        """Networks initialised from the dims' seed ("networks" stream); `log_mean` and `start` are
        unused (the uniform story signature: the GLM starts its guide from them)."""
        self.spec, self.family = spec, family(spec.likelihood)
        self.P, self.G, self.K = dims.n_design, dims.n_genes, dims.n_groups
        seed, lib_loc, lib_scale = dims.seed, dims.lib_loc, dims.lib_scale
        self.dim = spec.latent.dim
        self.latent_library = spec.library == "latent"
        dispersion = self.family.role(DISPERSION)
        if len(dispersion) > 1:
            raise ValueError(f"the cVAE supports one dispersion parameter; family {self.family.name!r} has more")
        self.dispersion = dispersion[0].name if dispersion else None
        # per-cell dispersion scales (probgex.models.quality); the encoder proposes them
        self.quality = spec.sample_quality == "on"
        if self.quality and self.dispersion is None:
            raise ValueError(f"sample_quality needs a family with a dispersion; {self.family.name!r} has none")
        self.logits = tuple(q.name for q in self.family.role(LOGIT))  # decoder heads after the mean's
        # the fit may hand batches listing their entries >= 2 (Batch.high): the NB log-pmf's lgamma
        # terms are then summed over those only (they are exactly 0 at x = 0 and 1)
        self.count_split = self.family.count_split
        self.lib_loc, self.lib_scale = float(lib_loc), float(lib_scale)
        rngs = nnx.Rngs(streams.stream(seed, "networks"))
        enc_heads = (self.dim, self.dim) + ((1, 1) if self.latent_library else ()) + ((1, 1) if self.quality else ())
        self.encoder = MLP(self.G + self.P, spec.encoder, enc_heads, rngs=rngs)
        dec_heads = (self.G,) * (1 + len(self.logits))
        self.decoder = MLP(self.dim + self.P, spec.decoder, dec_heads, rngs=rngs)
        self.prior = MLP(self.P, spec.latent.hidden, (self.dim, self.dim), rngs=rngs)
        # a learned prior (diffusion / flow) replaces the Gaussian one once params["learned_prior"] exists
        self.learned = learned_prior_of(spec.latent, self.P, seed)
        self.gaussian = GaussianPrior()
        self.learned_prior = None if self.learned is None else Learned(self.learned, self.dim)

    def prior_template(self) -> dict:
        """The learned prior's parameter structure ({} for the Gaussian prior)."""
        return {} if self.learned is None else {"learned_prior": self.learned.template()}

    def prior_for(self, params: dict) -> LatentPrior:
        """The conditional prior these parameters hold: the learned one once trained (the prior stage
        adds params["learned_prior"]), else the Gaussian prior network (a VAE-stage checkpoint)."""
        return self.learned_prior if self.learned is not None and "learned_prior" in params else self.gaussian

    # ----- pieces shared by model, guide and prediction
    def _lib_prior(self):
        return dist.Normal(self.lib_loc, self.lib_scale)

    def _log_mean(self, out, log_lib, offset):
        """log mu from the decoder's mean head: log l + log softmax (the offset is the residual story's)."""
        # rho floored at e^-30: an underflowed mean of exactly 0 makes log p(x > 0) = -inf and the
        # gradient NaN (seen on bulk counts of 1e7 per sample after a large first step)
        return log_lib[..., None] + jnp.maximum(jax.nn.log_softmax(out, axis=-1), -30.0)

    def _likelihood(self, decoder_net, z, log_lib, design, group, log_theta, offset=None, w=None):
        """The family's parameters by name, and log mu; a cell's dispersion scale w (..., B) divides
        its concentrations by exp(w)."""
        outs = decoder_net(concat(z, design))
        log_mu = self._log_mean(outs[0], log_lib, offset)
        p = {"mu": jnp.exp(log_mu)}
        if self.dispersion is not None:
            p[self.dispersion] = jnp.exp(log_theta)[group] if self.K > 1 else jnp.exp(log_theta)
            if w is not None:
                p[self.dispersion] = p[self.dispersion] * jnp.exp(-w)[..., None]
        p.update(zip(self.logits, outs[1:], strict=True))
        return p, log_mu

    def _log_theta(self):
        if self.dispersion is None:
            return None
        return numpyro.param("log_theta", jnp.zeros((self.K, self.G)))

    def _encode(self, encoder_net, batch):
        outs = encoder_net(concat(jnp.log1p(batch.x), batch.design))
        q_z = dist.Normal(*gaussian_head(outs[0], outs[1])).to_event(1)
        q_l = q_w = None
        if self.latent_library:
            q_l = dist.Normal(*gaussian_head(outs[2][..., 0], outs[3][..., 0]))
        if self.quality:  # the last two heads; the scale starts near softplus(-2) = 0.13
            loc, raw = outs[-2][..., 0], outs[-1][..., 0]
            q_w = dist.Normal(*gaussian_head(loc, raw - 2.0))
        return q_z, q_l, q_w

    # ----- NumPyro model and guide
    def model(self, batch: Batch):
        prior_net = nnx_module("prior", self.prior)
        decoder_net = nnx_module("decoder", self.decoder)
        log_theta = self._log_theta()
        prior_w = quality.prior(location=False) if self.quality else None  # m, s and the prior on s: outside the plate
        w = None
        with numpyro.plate("cells", batch.design.shape[0]), numpyro.handlers.mask(mask=batch.mask), \
                numpyro.handlers.scale(scale=batch.scale):
            z = numpyro.sample("z", self.gaussian.distribution(prior_net, batch.design))
            log_lib = batch.log_lib
            if self.latent_library:
                log_lib = numpyro.sample("log_library", self._lib_prior())
            if self.quality:
                w = numpyro.sample("cell_quality", prior_w)
            p, log_mu = self._likelihood(decoder_net, z, log_lib, batch.design, batch.group, log_theta, batch.offset,
                                         w)
            split = batch.high is not None and self.count_split
            numpyro.sample("x", self.family.distribution(p, normalized=False, log_mu=log_mu,
                                                         count_term=not split).to_event(1), obs=batch.x)
            if split:  # r(x, theta) of the entries >= 2, under the same plate, mask and scale as "x"
                numpyro.factor("x_count_term", count_term_sum(batch.high, log_theta, batch.group,
                                                              batch.design.shape[0], w))

    def guide(self, batch: Batch):
        encoder_net = nnx_module("encoder", self.encoder)
        q_z, q_l, q_w = self._encode(encoder_net, batch)
        with numpyro.plate("cells", batch.design.shape[0]), numpyro.handlers.mask(mask=batch.mask), \
                numpyro.handlers.scale(scale=batch.scale):
            numpyro.sample("z", q_z)
            if self.latent_library:
                numpyro.sample("log_library", q_l)
            if self.quality:
                numpyro.sample("cell_quality", q_w)

    # ----- prediction from fitted parameters (no NumPyro tracing: plain functions of params)
    def _nets(self, params: dict):
        nets = {}
        for name, module in (("encoder", self.encoder), ("decoder", self.decoder), ("prior", self.prior)):
            graph, state = nnx.split(module)
            nnx.replace_by_pure_dict(state, params[name + "$params"])
            nets[name] = nnx.merge(graph, state)
        return nets

    def predictive_params(self, params: dict, key: jax.Array, batch: Batch, n: int, *,
                          from_data: bool = False):
        """n draws of the family's parameters by name, each (n, B, G) (a dispersion with one group
        (1, G)): z from the conditional prior p(z | c), or,
        with `from_data`, from the encoder q(z | x, c) (the reconstruction predictive)."""
        nets = self._nets(params)
        w = kw = None
        if self.quality:  # its own key first, so the draws without the option are main's, unchanged
            key, kw = jax.random.split(key)
        kz, kl = jax.random.split(key)
        if from_data:
            q_z, q_l, q_w = self._encode(nets["encoder"], batch)
            z = draw_normal(q_z, kz, n)
            if self.quality:
                w = draw_normal(q_w, kw, n)
        else:
            if self.quality:  # a new cell's scale is unknown: drawn from the fitted prior
                w = quality.new_quality(params, kw, (n, batch.design.shape[0]))
            q_l = self._lib_prior()
            z = self.prior_for(params).draw(params, nets, kz, batch.design, n)
        log_lib = jnp.broadcast_to(batch.log_lib[None], (n, batch.log_lib.shape[0]))
        if self.latent_library:
            q_l = q_l if from_data else dist.Normal(jnp.full_like(batch.log_lib, self.lib_loc),
                                                    jnp.full_like(batch.log_lib, self.lib_scale))
            log_lib = draw_normal(q_l, kl, n)
        log_theta = None if self.dispersion is None else params["log_theta"]
        design = jnp.broadcast_to(batch.design, (n, *batch.design.shape))
        return self._likelihood(nets["decoder"], z, log_lib, design, batch.group, log_theta, batch.offset, w)[0]

    def encoder_means(self, params: dict, batch: Batch) -> jax.Array:
        """Means of q(z | x, c) per row: (B, dim)."""
        return self._encode(self._nets(params)["encoder"], batch)[0].base_dist.loc

    def encoder_moments(self, params: dict, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Means and sds of q(z | x, c) per row: two (B, dim); a learned prior is trained on draws of them."""
        q = self._encode(self._nets(params)["encoder"], batch)[0].base_dist
        return q.loc, q.scale

    def log_marginal(self, params: dict, key: jax.Array, batch: Batch, n: int) -> jax.Array:
        """Importance-sampling estimate of log p(x_b | c_b) per row with the encoder as proposal: (B,)."""
        nets = self._nets(params)
        kw = None
        if self.quality:  # its own key first, so the estimate without the option is main's, unchanged
            key, kw = jax.random.split(key)
        kz, kl, kp = jax.random.split(key, 3)
        q_z, q_l, q_w = self._encode(nets["encoder"], batch)
        z = draw_normal(q_z, kz, n)
        log_w = self.prior_for(params).log_prob(params, nets, kp, batch.design, z) - q_z.log_prob(z)
        log_lib = jnp.broadcast_to(batch.log_lib[None], (n, batch.log_lib.shape[0]))
        if self.latent_library:
            log_lib = draw_normal(q_l, kl, n)
            log_w = log_w + self._lib_prior().log_prob(log_lib) - q_l.log_prob(log_lib)
        w = None
        if self.quality:
            w = draw_normal(q_w, kw, n)
            log_w = log_w + quality.prior(params).log_prob(w) - q_w.log_prob(w)
        log_theta = None if self.dispersion is None else params["log_theta"]
        design = jnp.broadcast_to(batch.design, (n, *batch.design.shape))
        p, log_mu = self._likelihood(nets["decoder"], z, log_lib, design, batch.group, log_theta, batch.offset, w)
        ll = self.family.distribution(p, log_mu=log_mu).log_prob(batch.x[None]).sum(-1)
        return log_mean_exp(ll + log_w, axis=0)

