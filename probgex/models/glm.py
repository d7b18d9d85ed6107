"""The GLM story, the mean predictor: log mu_ng = log l_n + X(c_n) beta_g, counts from a count family.
Around a stage-1 predictor (story "residual_glm") its log mean fraction o_ng is an offset:
log mu_ng = log l_n + o_ng + X(c_n) beta_g, so beta are corrections to stage 1, shrunk toward 0 by the
prior, and the per-gene dispersions are the variability around it.

Per gene g the unknowns form one vector v_g = [beta_g (P), then the family's extra parameters in its
layout order: log alpha_g (one per dispersion group) for a "dispersion" parameter, alpha = 1 / theta the
NB dispersion, and one value per "logit" parameter (the ZINB gate, the hurdle)]. Priors: beta_g ~ N(0, 10^2) for the
intercept and N(0, prior_scale^2) for the other coefficients (with spec.coef_prior "learned": N(0, tau_t^2) for
the columns of formula term t, tau_t one parameter per term fitted by the ELBO, `inference.coef_prior`; with
"learned-interactions-per-gene" N(0, tau_t^2 lambda_gt^2) per gene, lambda_gt ~ half-Cauchy(0, 1) a latent with
a log-normal guide per gene, tau_t fitted: the horseshoe's form; with "learned-interactions-per-gene-level" also
times a scale per column of the term, from a half-Cauchy population whose scale is a latent, `probgex.models.levels`,
an unseen column's drawn from it); log alpha_g ~ N(log(a0 + a1 / m_g), s^2)
around a DESeq2-style mean-dispersion trend (m_g the gene's mean normalised count), with a0, a1, s
placed by empirical Bayes before SVI and held (`probgex.models.trend`; with no residual degree of freedom
the ELBO fits them), so genes seen in few replicates are shrunk toward the trend; a logit parameter
has the prior its family declares (`Param.prior`; the ZINB gate N(-2, 2^2)).
The guide is a full-rank Gaussian per gene (the coefficients of one gene are correlated; genes are not).
With `spec.sample_quality == "on"` each observation n also scales the NB overdispersion by exp(w_n),
w_n ~ N(0, s^2) (`probgex.models.quality`); a new observation's w is drawn from that prior.
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
from probgex.models.dims import Dims
from probgex.models.distributions import log_mean_exp
from probgex.models.families import family
from probgex.models.families.base import DISPERSION
from probgex.models.levels import Levels
from probgex.models import quality
from probgex.inference.coef_prior import PER_GENE, PER_LEVEL
from probgex.spec import ModelSpec

INTERCEPT_SD = 10.0
LOG_MU_BOUND = 60.0  # |log mean| bound of a prediction's draws with per-level scales (`predictive_params`)
COEF_SD_MIN = 0.01  # the smallest learned prior sd of a formula term (coef_prior "learned")
GENE_SD_SCALE0 = 0.3  # the guide's start sd of a gene's log local scale (per-gene coef_prior)


class GLMInit(NamedTuple):
    """Data summaries that start the guide near the answer and place the dispersion trend."""

    beta: np.ndarray  # (P, G) least squares of log((x + 0.5) / l) on the design
    log_mean: np.ndarray  # (G,) log mean normalised count
    beta_tril: np.ndarray | None = None  # (G, P, P) Cholesky of the Laplace covariance of beta at `beta`
    # the mean-dispersion trend (a0, a1, s) placed before SVI (`probgex.models.trend`), or None; with
    # `fixed_trend` the prior uses it as given (empirical Bayes before SVI), else it only starts the
    # ELBO's empirical Bayes
    trend: tuple[float, float, float] | None = None
    fixed_trend: bool = False  # a0, a1 and s held at `trend` (else the ELBO's empirical Bayes refines them)
    n_obs: int = 0  # observations of the fitted data: one quality multiplier each (sample_quality "on")


class GLM:
    """NumPyro model and guide of the GLM story."""

    count_split = False  # the GLM's objective takes no count-split batches
    learned = None  # no latent, no learned prior

    def __init__(self, spec: ModelSpec, dims: Dims, log_mean: np.ndarray, start: dict | None = None):
        """`start`: the guide's start (`inference.start.glm_start`: beta, beta_tril, trend, fixed_trend);
        None (a loaded model, whose guide parameters come from its file) starts at beta 0."""
        self.spec, self.family = spec, family(spec.likelihood)
        self.P, self.G, self.K = dims.n_design, dims.n_genes, dims.n_groups
        intercept = dims.intercept
        start = {} if start is None else start
        beta = start.get("beta")
        init = GLMInit(beta=np.zeros((self.P, self.G), np.float32) if beta is None else np.asarray(beta, np.float32),
                       log_mean=np.asarray(log_mean, np.float32), beta_tril=start.get("beta_tril"),
                       trend=start.get("trend"), fixed_trend=bool(start.get("fixed_trend")) and start.get("trend") is not None,
                       n_obs=dims.n_obs)
        # the family's per-gene extra parameters: K columns (log alpha per group) for a dispersion, 1 for a logit
        self.extras = self.family.params[1:]
        if len(self.family.role(DISPERSION)) > 1:
            raise ValueError(f"the GLM supports one dispersion parameter; family {self.family.name!r} has more")
        self.widths = tuple(self.K if q.role == DISPERSION else 1 for q in self.extras)
        self.D = self.P + sum(self.widths)
        sd = np.full(self.P, spec.prior_scale, np.float32)
        if intercept is not None:
            sd[intercept] = INTERCEPT_SD
        self.beta_sd = jnp.asarray(sd)
        # coef_prior "learned": one prior sd per formula term (`dims.coef_terms`, per column its term, -1 the
        # intercept), a parameter the ELBO fits, started at `start["coef_sd"]` (`inference.coef_prior`)
        self.coef_terms = self.unseen = None
        self.per_gene = False  # one prior sd per gene and learned term, a latent of the guide
        self.per_level = False  # and one scale per column of a learned term, from a population per term
        self.levels = None
        if spec.coef_prior != "fixed":
            terms = np.asarray(dims.coef_terms, np.int32)
            if terms.shape != (self.P,):
                raise ValueError(f"coef_prior 'learned' needs the term of each of the {self.P} design columns "
                                 f"(dims.coef_terms); got {terms.shape}")
            n_terms = int(terms.max()) + 1 if self.P else 0  # 0: no term is learned (no interaction)
            sd0 = start.get("coef_sd")
            self.coef_sd0 = (np.full(n_terms, min(1.0, spec.prior_scale), np.float32) if sd0 is None
                             else np.asarray(sd0, np.float32))
            self.coef_terms = jnp.asarray(terms)
            self.n_terms = n_terms
            self.per_gene = spec.coef_prior in PER_GENE and n_terms > 0
            if self.per_gene:  # the genes' log sds' start; the global sd starts at their geometric mean
                g0 = start.get("coef_gene_log_sd")
                g0 = (np.tile(np.log(self.coef_sd0), (self.G, 1)) if g0 is None else np.asarray(g0, np.float32))
                self.gene_log_sd0 = g0.astype(np.float32)
                self.coef_sd0 = np.exp(g0.mean(0)).astype(np.float32)
            unseen = np.zeros(self.D, bool)
            unseen[list(dims.coef_unseen)] = True
            # coef_prior "learned-interactions-per-gene-level": one scale per column (level) of every learned
            # term, from a population per term (`probgex.models.levels`)
            self.per_level = self.per_gene and spec.coef_prior in PER_LEVEL
            self.levels = Levels(terms, unseen[: self.P], n_terms) if self.per_level else None
            self.unseen = jnp.asarray(unseen) if unseen.any() else None
        self.init = init
        # per-observation dispersion scales (`probgex.models.quality`), for a family with a dispersion
        self.quality = spec.sample_quality == "on"
        if self.quality and not self.family.role(DISPERSION):
            raise ValueError(f"sample_quality needs a family with a dispersion; {self.family.name!r} has none")

    def prior_template(self) -> dict:
        """No learned prior: nothing beyond the SVI parameters."""
        return {}

    def posterior(self, params: dict) -> GLMPosterior:
        """The fitted posterior of every gene's coefficients and family parameters (the guide)."""
        return GLMPosterior(self, params)

    # ----- parameters of a gene vector
    def split(self, v: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(..., G, D) -> beta (..., P, G) and the family's extra parameters by name: a dispersion as
        theta (..., K, G), a logit (..., G)."""
        beta = jnp.swapaxes(v[..., : self.P], -1, -2)
        extra, i = {}, self.P
        for q, w in zip(self.extras, self.widths, strict=True):
            block = v[..., i : i + w]
            i += w
            extra[q.name] = jnp.exp(-jnp.swapaxes(block, -1, -2)) if q.role == DISPERSION else block[..., 0]
        return beta, extra

    def _rows(self, extra: dict, group) -> dict:
        """The extra parameters for rows of dispersion groups `group`: theta (..., B, G), logits (..., G)."""
        return {q.name: extra[q.name][..., group, :] if q.role == DISPERSION else extra[q.name]
                for q in self.extras}

    def coef_sd(self, gene_sd: jax.Array | None = None, level: jax.Array | None = None) -> jax.Array:
        """The coefficients' prior sds (P,): fixed, or with coef_prior "learned" each column's term's sd, a
        parameter fitted by the ELBO (type-II maximum likelihood over all genes); per gene (G, P) from the genes'
        sds `gene_sd` (G, T) (coef_prior "learned-interactions-per-gene")."""
        if self.coef_terms is None or not self.coef_sd0.size:
            return self.beta_sd
        return self._column_sd(self._tau_param() if gene_sd is None else gene_sd, level)

    def _tau_param(self) -> jax.Array:
        return numpyro.param("coef_prior_sd", jnp.asarray(self.coef_sd0), constraint=constraints.greater_than(COEF_SD_MIN))

    def _column_sd(self, tau: jax.Array, level: jax.Array | None = None) -> jax.Array:
        """Per design column its term's sd from `tau` (..., T), the fixed sd for the other columns: (..., P);
        times `level` (..., P), the columns' level scales (1 outside the learned terms), if given."""
        sd = jnp.where(self.coef_terms < 0, self.beta_sd, tau[..., jnp.maximum(self.coef_terms, 0)])
        return sd if level is None else sd * level

    def _gene_scale_prior(self) -> dist.Distribution:
        """The genes' local scales lambda_gt ~ half-Cauchy(0, 1) (tau_gt = tau_t lambda_gt, the horseshoe's
        form), (G, T) with T the event (per-gene coef_prior). A log-normal with a fitted spread instead shrank
        the strong responders too far (tests/test_coef_prior_per_gene.py's simulation, 3,000 epochs: their sd 1.0
        fitted as 0.70, their 90% intervals covering 0.80; with the half-Cauchy's heavy tail 0.85 and 0.90)."""
        return dist.HalfCauchy(jnp.ones((self.G, self.n_terms))).to_event(1)

    def _gene_scale_guide(self) -> dist.Distribution:
        """The guide of the genes' local scales: independent log-normals, (G, T) with T the event."""
        loc = numpyro.param("coef_gene_sd_loc", jnp.asarray(self.gene_log_sd0 - np.log(self.coef_sd0)))
        scale = numpyro.param("coef_gene_sd_scale", jnp.full((self.G, self.n_terms), GENE_SD_SCALE0, jnp.float32),
                              constraint=constraints.positive)
        return dist.LogNormal(loc, scale).to_event(1)

    def guide_params(self, loc: jax.Array, diag: jax.Array, off: jax.Array, tau: jax.Array | None,
                     level: jax.Array | None = None):
        """The guide's (loc, diag, offdiag) with the columns all zero in training (`dims.coef_unseen`) set to
        their exact posterior, their term's prior: mean 0, sd tau (times the column's `level` scale, per-level
        coef_prior), uncorrelated with the rest (the likelihood does not involve them). Unchanged without such
        columns."""
        if self.unseen is None or tau is None:
            return loc, diag, off
        m = self.unseen
        col = self._column_sd(tau, level)  # (P,) or per gene (G, P)
        sd = jnp.concatenate([col, jnp.ones((*col.shape[:-1], self.D - self.P))], -1)
        keep = (~m[:, None]) & (~m[None, :])
        return jnp.where(m, 0.0, loc), jnp.where(m, sd, diag), jnp.where(keep, off, 0.0)

    def _tau(self, params: dict) -> jax.Array | None:
        """The unseen columns' sd for their exact posterior moments: the term's sd, or per gene (G, T) the root
        of E[tau_gt^2] under the guide's log-normal, exp(m + s^2) (the scale mixture's sd)."""
        if self.unseen is None:
            return None
        if self.per_gene:
            return params["coef_prior_sd"] * jnp.exp(params["coef_gene_sd_loc"] + params["coef_gene_sd_scale"] ** 2)
        return params.get("coef_prior_sd")

    def _level(self, params: dict) -> jax.Array | None:
        """The unseen columns' level multiplier for the moments (per-level coef_prior), else None."""
        return self.levels.median_new(params) if self.per_level and self.unseen is not None else None

    def _prior(self, gene_sd: jax.Array | None = None, level: jax.Array | None = None) -> dist.Distribution:
        locs = [jnp.zeros((self.G, self.P))]
        scales = [jnp.broadcast_to(self.coef_sd(gene_sd, level), (self.G, self.P))]
        for q, w in zip(self.extras, self.widths, strict=True):
            if q.role != DISPERSION:
                locs.append(jnp.full((self.G, 1), q.prior[0]))
                scales.append(jnp.full((self.G, 1), q.prior[1]))
                continue
            t0 = (0.05, 1.0, 1.0) if self.init.trend is None else self.init.trend
            a0 = numpyro.param("disp_asymptote", t0[0], constraint=constraints.positive)
            a1 = numpyro.param("disp_extra_poisson", t0[1], constraint=constraints.positive)
            s = numpyro.param("disp_trend_sd", t0[2], constraint=constraints.greater_than(0.05))
            if self.init.fixed_trend:  # held: recorded in the params, never moved. s too: the ELBO's
                # empirical Bayes underestimated it (simulated truth 0.6: 0.35-0.37 at 1 residual df,
                # 0.46-0.49 at 6, where the placed moment rule gave 0.60-0.66; `models.trend`)
                a0, a1, s = (jax.lax.stop_gradient(x) for x in (a0, a1, s))
            trend = jnp.log(a0 + a1 * jnp.exp(-jnp.asarray(self.init.log_mean)))
            locs.append(jnp.broadcast_to(trend[:, None], (self.G, w)))
            scales.append(jnp.broadcast_to(s, (self.G, w)))
        return dist.Normal(jnp.concatenate(locs, -1), jnp.concatenate(scales, -1)).to_event(1)

    def likelihood(self, v: jax.Array, batch: Batch, w: jax.Array | None = None) -> dist.Distribution:
        """The counts' law given gene vectors v; `w` (B,) the rows' log dispersion multipliers, if any."""
        beta, extra = self.split(v)
        log_mu = batch.log_lib[:, None] + batch.design @ beta
        if batch.offset is not None:  # the residual GLM: stage 1's log mean fraction
            log_mu = log_mu + batch.offset
        p = {"mu": jnp.exp(log_mu), **self._rows(extra, batch.group)}
        if w is not None:
            p = self._scaled(p, w)
        return self.family.distribution(p, normalized=False, log_mu=log_mu).to_event(1)

    def _scaled(self, p: dict, w: jax.Array) -> dict:
        """Dispersions times exp(w) (concentrations times exp(-w)); w broadcasts against the rows (..., B)."""
        out = dict(p)
        for q in self.family.role(DISPERSION):
            out[q.name] = p[q.name] * jnp.exp(-w)[..., None]
        return out

    def model(self, batch: Batch):
        level = self.levels.model() if self.per_level else None
        with numpyro.plate("genes", self.G):
            gene_sd = (self._tau_param() * numpyro.sample("coef_gene_scale", self._gene_scale_prior())
                       if self.per_gene else None)
            v = numpyro.sample("gene_params", self._prior(gene_sd, level))
        w = quality.model_quality(self.init.n_obs)[batch.row] if self.quality else None
        with numpyro.plate("cells", batch.design.shape[0]), numpyro.handlers.mask(mask=batch.mask), \
                numpyro.handlers.scale(scale=batch.scale):
            numpyro.sample("x", self.likelihood(v, batch, w), obs=batch.x)

    def guide(self, batch: Batch):
        loc0 = [jnp.asarray(self.init.beta.T)]
        for q, w in zip(self.extras, self.widths, strict=True):
            if q.role != DISPERSION:  # a logit at its family's start
                loc0.append(jnp.full((self.G, 1), q.start, jnp.float32))
                continue
            t = self.init.trend  # at the trend placed before SVI, if any, else at 0.1
            m = np.exp(self.init.log_mean.astype(np.float64))
            la = np.full(self.G, np.log(0.1)) if t is None else np.log(t[0] + t[1] / m)
            loc0.append(jnp.asarray(np.tile(la[:, None], (1, w)), jnp.float32))
        loc = numpyro.param("gp_loc", jnp.concatenate(loc0, -1))
        diag0, off0 = self._scale_init()
        diag = numpyro.param("gp_scale_diag", diag0, constraint=constraints.positive)
        off = numpyro.param("gp_scale_offdiag", off0)
        level = self.levels.guide() if self.per_level else None
        with numpyro.plate("genes", self.G):
            tau = None
            if self.per_gene:  # each gene's prior sds, drawn before its coefficients
                tau = self._tau_param() * numpyro.sample("coef_gene_scale", self._gene_scale_guide())
            if self.unseen is not None:  # columns without data: their exact posterior, the learned prior (given
                # the gene's drawn sd, per gene; their terms of the ELBO cancel)
                loc, diag, off = self.guide_params(loc, diag, off, self._tau_param() if tau is None else tau, level)
            numpyro.sample("gene_params", full_rank_normal(loc, scale_tril(diag, off)))
        if self.quality:
            quality.guide_quality(self.init.n_obs)

    def _scale_init(self) -> tuple[jax.Array, jax.Array]:
        """Start of the guide's Cholesky factor: the Laplace approximation for the coefficients (when
        given), 0.3 for log dispersions and a logit's `Param.start_scale`; starting near the posterior
        scale matters, because Adam's steps shrink a scale only slowly."""
        diag = np.concatenate([np.full(self.P, 0.05)] + [
            np.full(w, 0.3 if q.role == DISPERSION else q.start_scale) for q, w in zip(self.extras, self.widths)])
        diag = np.tile(diag.astype(np.float32), (self.G, 1))
        off = np.zeros((self.G, self.D, self.D), np.float32)
        if self.init.beta_tril is not None:
            L = np.asarray(self.init.beta_tril, np.float32)
            diag[:, : self.P] = np.diagonal(L, axis1=1, axis2=2)
            off[:, : self.P, : self.P] = np.tril(L, -1)
        return jnp.asarray(diag), jnp.asarray(off)

    # ----- prediction
    def draw_gene_params(self, params: dict, key: jax.Array, n: int) -> jax.Array:
        """n draws of every gene's vector from the fitted guide: (n, G, D). Per-gene prior sds: the unseen
        columns are drawn as tau_gt eps, tau_gt drawn from the guide's log-normal (a scale mixture, jointly); with
        per-level scales also times the unseen level's kappa, drawn once per draw for all genes from the levels'
        population at its hyperparameters' guide draws (the posterior predictive of a new level's scale)."""
        per_gene = self.per_gene and self.unseen is not None
        if per_gene and self.per_level:
            key, key_sd, key_level = jax.random.split(key, 3)
        elif per_gene:  # as before the per-level scales: the same draws for the same key
            key, key_sd = jax.random.split(key)
        tau = jnp.ones(self.n_terms) if per_gene else self._tau(params)
        loc, diag, off = self.guide_params(params["gp_loc"], params["gp_scale_diag"], params["gp_scale_offdiag"], tau)
        L = scale_tril(diag, off)
        eps = jax.random.normal(key, (n, self.G, self.D))
        v = loc[None] + jnp.einsum("gij,sgj->sgi", L, eps)
        if per_gene:  # the unseen columns are eps (mean 0, sd 1, uncorrelated): times each draw's sd
            log_sd = params["coef_gene_sd_loc"] + params["coef_gene_sd_scale"] * jax.random.normal(
                key_sd, (n, self.G, self.n_terms))
            level = self.levels.draw_new(params, key_level, n)[:, None, :] if self.per_level else None
            col = self._column_sd(params["coef_prior_sd"] * jnp.exp(log_sd), level)
            sd = jnp.concatenate([col, jnp.ones((n, self.G, self.D - self.P))], -1)
            v = jnp.where(self.unseen, v * sd, v)
        return v

    def predictive_params(self, params: dict, key: jax.Array, batch: Batch, n: int, *,
                          from_data: bool = False):
        """n draws of the family's parameters for the batch's rows, by name: mu (n, B, G), a dispersion
        (n, B, G) or, with one dispersion group, (n, 1, G), a logit (n, 1, G).

        The GLM's only per-observation latent is the quality multiplier, drawn from its prior for every row
        (a new sample's quality is unknown), so `from_data` changes nothing: both are p(x | c, data). With
        quality, every dispersion is (n, B, G).
        """
        if self.quality:
            key, key_w = jax.random.split(key)
        beta, extra = self.split(self.draw_gene_params(params, key, n))
        # a broadcast product summed over the few design columns: XLA's CPU dot for this einsum
        # ("bp,spg->sbg") was 2-2.5x slower on 200 draws x 32 rows x 2,000 genes (check_speed)
        eta = (batch.design[None, :, :, None] * beta[:, None, :, :]).sum(2)
        if batch.offset is not None:
            eta = eta + batch.offset[None]
        log_mu = batch.log_lib[None, :, None] + eta
        if self.per_level:  # an unseen level's half-Cauchy scale has draws far out in its tail (kappa 1e3-1e6):
            # bounded so that exp stays finite in float32 (mu in [1e-26, 1e26]: never reached by a fitted mean;
            # such a draw's counts are as far out either way, so PIT and density are unchanged but for the NaN)
            log_mu = jnp.clip(log_mu, -LOG_MU_BOUND, LOG_MU_BOUND)
        mu = jnp.exp(log_mu)
        out = {"mu": mu}
        for q in self.extras:
            a = extra[q.name]
            if q.role == DISPERSION:  # (n, 1, G) with one group: per gene
                out[q.name] = a[:, batch.group, :] if self.K > 1 else a
            else:
                out[q.name] = a[:, None, :]
        if self.quality:
            out = self._scaled(out, quality.new_quality(params, key_w, (n, batch.design.shape[0])))
        return out

    def log_marginal(self, params: dict, key: jax.Array, batch: Batch, n: int) -> jax.Array:
        """log p(x_b | c_b) per row, averaging the likelihood over n posterior draws: (B,)."""
        p = self.predictive_params(params, key, batch, n)
        ll = self.family.distribution(p).log_prob(batch.x[None]).sum(-1)
        return log_mean_exp(ll, axis=0)


def full_rank_normal(loc: jax.Array, tril: jax.Array) -> dist.Distribution:
    """N(loc, tril tril^T) per gene as loc + tril eps, eps ~ N(0, I): the same law as
    `MultivariateNormal(loc, scale_tril=tril)`, but its log density at its own draws is computed from eps
    (NumPyro's intermediates), not by solving tril against draw - loc. In float32 that solve amplifies the
    draw's rounding by tril's condition number: where the posterior is far narrower in some directions than
    in others (high counts beside a column without data or a collinear design) Adam shrank the factor to
    exploit it and the loss ran to -1e24 (a Poisson fit of 335 counts per entry, `~ c + g + c:stim`)."""
    base = dist.Normal(jnp.zeros_like(loc), 1.0).to_event(1)
    return dist.TransformedDistribution(base, dist.transforms.LowerCholeskyAffine(loc, tril))


def scale_tril(diag: jax.Array, off: jax.Array) -> jax.Array:
    """Lower-triangular Cholesky factor from a positive diagonal and free below-diagonal entries."""
    return jnp.tril(off, -1) + diag[:, :, None] * jnp.eye(diag.shape[-1], dtype=diag.dtype)[None]


class GLMPosterior(NamedTuple):
    """The public view of a fitted GLM's posterior (its full-rank Gaussian guide per gene): what
    `Fit.coefficients`, power and explanations read instead of the guide's parameter names."""

    story: GLM
    params: dict

    def coefficient_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of the coefficients, each (P, G), exact from the guide (with per-gene prior sds
        an unseen column's sd is its scale mixture's; its law is heavier-tailed than a normal: `draws`; with per-level
        scales at the unseen level's median scale, the half-Cauchy having no variance)."""
        P, p = self.story.P, self.params
        loc, diag, off = self.story.guide_params(jnp.asarray(p["gp_loc"]), jnp.asarray(p["gp_scale_diag"]),
                                                 jnp.asarray(p["gp_scale_offdiag"]), self.story._tau(p),
                                                 self.story._level(p))
        tril = np.asarray(scale_tril(diag, off))
        loc = np.asarray(loc)[:, :P].T
        return loc, np.sqrt((tril[:, :P, :] ** 2).sum(-1)).T

    def draws(self, key: jax.Array, n: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        """n joint draws: coefficients (n, P, G) and the family's extra parameters by name (a dispersion
        as theta (n, K, G), a logit (n, G))."""
        return self.story.split(self.story.draw_gene_params(self.params, key, n))
