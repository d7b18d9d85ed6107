"""The GLM story, the mean predictor: log mu_ng = log l_n + X(c_n) beta_g, NB / ZINB / Poisson.
Around a stage-1 predictor (story "residual_glm") its log mean fraction o_ng is an offset:
log mu_ng = log l_n + o_ng + X(c_n) beta_g, so beta are corrections to stage 1, shrunk toward 0 by the
prior, and the per-gene dispersions are the variability around it.

Per gene g the unknowns form one vector v_g = [beta_g (P), log alpha_g (one per dispersion group),
gate logit_g (ZINB)], alpha = 1 / theta the NB dispersion. Priors: beta_g ~ N(0, 10^2) for the
intercept and N(0, prior_scale^2) for the other coefficients; log alpha_g ~ N(log(a0 + a1 / m_g), s^2)
around a DESeq2-style mean-dispersion trend (m_g the gene's mean normalised count), with a0, a1, s
fitted by empirical Bayes, so genes seen in few replicates are shrunk toward the trend; gate ~ N(-2, 2^2).
The guide is a full-rank Gaussian per gene (the coefficients of one gene are correlated; genes are not).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from probgex.models.batch import Batch
from probgex.models.distributions import count_distribution, log_mean_exp
from probgex.spec import ModelSpec

INTERCEPT_SD = 10.0
GATE_PRIOR = (-2.0, 2.0)


class GLMInit(NamedTuple):
    """Data summaries that start the guide near the answer and place the dispersion trend."""

    beta: np.ndarray  # (P, G) least squares of log((x + 0.5) / l) on the design
    log_mean: np.ndarray  # (G,) log mean normalised count
    beta_tril: np.ndarray | None = None  # (G, P, P) Cholesky of the Laplace covariance of beta at `beta`
    # the mean-dispersion trend (a0, a1, s) placed before SVI (`probgex.models.trend`), or None; with
    # `fixed_trend` the prior uses it as given (empirical Bayes before SVI), else it only starts the
    # ELBO's empirical Bayes
    trend: tuple[float, float, float] | None = None
    fixed_trend: bool = False  # a0 and a1 held at `trend` (s always refined by the ELBO)


class GLM:
    """NumPyro model and guide of the GLM story."""

    def __init__(self, spec: ModelSpec, n_design: int, n_genes: int, n_groups: int,
                 intercept: int | None, init: GLMInit):
        self.spec, self.kind = spec, spec.likelihood
        self.P, self.G, self.K = n_design, n_genes, n_groups
        self.n_disp = 0 if self.kind == "poisson" else n_groups
        self.n_gate = 1 if self.kind == "zinb" else 0
        self.D = self.P + self.n_disp + self.n_gate
        sd = np.full(self.P, spec.prior_scale, np.float32)
        if intercept is not None:
            sd[intercept] = INTERCEPT_SD
        self.beta_sd = jnp.asarray(sd)
        self.init = init

    # ----- parameters of a gene vector
    def split(self, v: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """(..., G, D) -> beta (..., P, G), theta (..., K, G) or None, gate logits (..., G) or None."""
        beta = jnp.swapaxes(v[..., : self.P], -1, -2)
        theta = None
        if self.n_disp:
            theta = jnp.exp(-jnp.swapaxes(v[..., self.P : self.P + self.n_disp], -1, -2))
        gate = v[..., -1] if self.n_gate else None
        return beta, theta, gate

    def _prior(self) -> dist.Distribution:
        locs = [jnp.zeros((self.G, self.P))]
        scales = [jnp.broadcast_to(self.beta_sd, (self.G, self.P))]
        if self.n_disp:
            t0 = (0.05, 1.0, 1.0) if self.init.trend is None else self.init.trend
            a0 = numpyro.param("disp_asymptote", t0[0], constraint=constraints.positive)
            a1 = numpyro.param("disp_extra_poisson", t0[1], constraint=constraints.positive)
            s = numpyro.param("disp_trend_sd", t0[2], constraint=constraints.greater_than(0.05))
            if self.init.fixed_trend:  # held: recorded in the params, never moved
                a0, a1 = jax.lax.stop_gradient(a0), jax.lax.stop_gradient(a1)
            trend = jnp.log(a0 + a1 * jnp.exp(-jnp.asarray(self.init.log_mean)))
            locs.append(jnp.broadcast_to(trend[:, None], (self.G, self.n_disp)))
            scales.append(jnp.broadcast_to(s, (self.G, self.n_disp)))
        if self.n_gate:
            locs.append(jnp.full((self.G, 1), GATE_PRIOR[0]))
            scales.append(jnp.full((self.G, 1), GATE_PRIOR[1]))
        return dist.Normal(jnp.concatenate(locs, -1), jnp.concatenate(scales, -1)).to_event(1)

    def likelihood(self, v: jax.Array, batch: Batch) -> dist.Distribution:
        beta, theta, gate = self.split(v)
        log_mu = batch.log_lib[:, None] + batch.design @ beta
        if batch.offset is not None:  # the residual GLM: stage 1's log mean fraction
            log_mu = log_mu + batch.offset
        th = None if theta is None else theta[batch.group]
        return count_distribution(self.kind, jnp.exp(log_mu), th, gate, normalized=False, log_mu=log_mu).to_event(1)

    def model(self, batch: Batch):
        with numpyro.plate("genes", self.G):
            v = numpyro.sample("gene_params", self._prior())
        with numpyro.plate("cells", batch.design.shape[0]), numpyro.handlers.mask(mask=batch.mask), \
                numpyro.handlers.scale(scale=batch.scale):
            numpyro.sample("x", self.likelihood(v, batch), obs=batch.x)

    def guide(self, batch: Batch):
        loc0 = [jnp.asarray(self.init.beta.T)]
        if self.n_disp:  # at the trend placed before SVI, if any, else at 0.1
            t = self.init.trend
            m = np.exp(self.init.log_mean.astype(np.float64))
            la = np.full(self.G, np.log(0.1)) if t is None else np.log(t[0] + t[1] / m)
            loc0.append(jnp.asarray(np.tile(la[:, None], (1, self.n_disp)), jnp.float32))
        if self.n_gate:
            loc0.append(jnp.full((self.G, 1), -3.0, jnp.float32))
        loc = numpyro.param("gp_loc", jnp.concatenate(loc0, -1))
        diag0, off0 = self._scale_init()
        diag = numpyro.param("gp_scale_diag", diag0, constraint=constraints.positive)
        off = numpyro.param("gp_scale_offdiag", off0)
        with numpyro.plate("genes", self.G):
            numpyro.sample("gene_params", dist.MultivariateNormal(loc, scale_tril=scale_tril(diag, off)))

    def _scale_init(self) -> tuple[jax.Array, jax.Array]:
        """Start of the guide's Cholesky factor: the Laplace approximation for the coefficients (when
        given), 0.3 for log dispersions and 1 for gate logits; starting near the posterior scale
        matters, because Adam's steps shrink a scale only slowly."""
        diag = np.concatenate([np.full(self.P, 0.05), np.full(self.n_disp, 0.3), np.full(self.n_gate, 1.0)])
        diag = np.tile(diag.astype(np.float32), (self.G, 1))
        off = np.zeros((self.G, self.D, self.D), np.float32)
        if self.init.beta_tril is not None:
            L = np.asarray(self.init.beta_tril, np.float32)
            diag[:, : self.P] = np.diagonal(L, axis1=1, axis2=2)
            off[:, : self.P, : self.P] = np.tril(L, -1)
        return jnp.asarray(diag), jnp.asarray(off)

    # ----- prediction
    def draw_gene_params(self, params: dict, key: jax.Array, n: int) -> jax.Array:
        """n draws of every gene's vector from the fitted guide: (n, G, D)."""
        L = scale_tril(params["gp_scale_diag"], params["gp_scale_offdiag"])
        eps = jax.random.normal(key, (n, self.G, self.D))
        return params["gp_loc"][None] + jnp.einsum("gij,sgj->sgi", L, eps)

    def predictive_params(self, params: dict, key: jax.Array, batch: Batch, n: int, *,
                          from_data: bool = False):
        """n draws of (mu, theta, gate) for the batch's rows, each (n, B, G) or None.

        The GLM has no per-observation latent, so `from_data` changes nothing: both are p(x | c, data).
        """
        beta, theta, gate = self.split(self.draw_gene_params(params, key, n))
        # a broadcast product summed over the few design columns: XLA's CPU dot for this einsum
        # ("bp,spg->sbg") was 2-2.5x slower on 200 draws x 32 rows x 2,000 genes (check_speed)
        eta = (batch.design[None, :, :, None] * beta[:, None, :, :]).sum(2)
        if batch.offset is not None:
            eta = eta + batch.offset[None]
        mu = jnp.exp(batch.log_lib[None, :, None] + eta)
        th = None if theta is None else theta[:, batch.group, :] if self.K > 1 else theta  # (n, 1, G): per gene
        return mu, th, None if gate is None else gate[:, None, :]

    def log_marginal(self, params: dict, key: jax.Array, batch: Batch, n: int) -> jax.Array:
        """log p(x_b | c_b) per row, averaging the likelihood over n posterior draws: (B,)."""
        mu, th, gate = self.predictive_params(params, key, batch, n)
        ll = count_distribution(self.kind, mu, th, gate).log_prob(batch.x[None]).sum(-1)
        return log_mean_exp(ll, axis=0)


def scale_tril(diag: jax.Array, off: jax.Array) -> jax.Array:
    """Lower-triangular Cholesky factor from a positive diagonal and free below-diagonal entries."""
    return jnp.tril(off, -1) + diag[:, :, None] * jnp.eye(diag.shape[-1], dtype=diag.dtype)[None]
