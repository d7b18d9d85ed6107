"""Per-sample quality in the GLM: a scale of the NB overdispersion per observation, with a learned prior.

Observation n's counts are NB with concentration theta_g exp(-w_n), so Var = mu + exp(w_n) mu^2 / theta_g:
a sample of poor quality (large w_n) is noisier in every gene, one of good quality quieter, as limma's
voomWithQualityWeights (Liu et al. 2015) weights samples by a variance multiplier. The multipliers have
the prior w_n ~ Student-t(QUALITY_DF, m, s): heavy-tailed, so a few poor replicates (edgeR's robust
estimation has the same aim) sit in the tail instead of widening everyone's law, and the location m
and scale s are fitted by empirical Bayes through the ELBO, s under a penalised-complexity prior
(exponential, rate QUALITY_RATE: P(s > 1) = 0.05, Simpson et al. 2017) that shrinks toward the model
without quality differences (s -> 0) unless the data ask for them. The location m is the typical
sample's log multiplier relative to the per-gene dispersions' trend, which is placed before SVI on all
training samples, the poor ones included (yeast, 8 random replicates of 96: the clean ones sat at
w = -1.2 to -1.7 under a prior held at m = 0, and a new sample was predicted as noisy as their average);
the trend's prior on the per-gene dispersions keeps m identifiable. The guide is a Gaussian per training
observation; a NEW observation's quality is unknown, so prediction draws w from the fitted prior per
observation and posterior draw: its predictive is the scale mixture the training samples' spread implies.

The cVAE uses the same prior per cell (`sample_quality="on"` with a latent; `probgex.models.cvae`), with
the location held at 0 and the encoder proposing w_n (issue 13 item 3, the top expression decile).

Off by default: on the bulk rows of benchmarks/calibration_everywhere.py it helped where a poor
replicate was among the samples (yeast df 1 and 6, bottomly df 1-2: +0.02 to +0.51 nats per entry) and
harmed elsewhere (gse60450 df 6 -0.53, whose held-out samples are shifted; bottomly df 6 -0.07, too
narrow); no rule on the training data separates the two: the ELBO, a parametric-bootstrap test of the
samples' noise heterogeneity and an importance-sampled leave-one-sample-out density all choose "on" on
every split where it harms (benchmarks/quality_auto.py; benchmarks/README.md, "Can the training data
decide `sample_quality`?")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

QUALITY_RATE = 3.0  # exponential prior on s: rate 3, P(s > 1) = 0.05
QUALITY_DF = 4.0  # degrees of freedom of the t prior (a common robust choice: Lange, Little & Taylor 1989)
QUALITY_MIN_SD = 1e-3  # s stays above this (a boundary the optimizer can approach, not cross)
SD_START, GUIDE_SD_START = 0.1, 0.1


def prior(params_or_none=None, *, location: bool = True) -> dist.Distribution:
    """The multipliers' prior t(QUALITY_DF, m, s): in the model (m, s NumPyro parameters, s under its
    penalised-complexity prior), or, given fitted `params`, the fitted one. With `location=False` m is
    held at 0 (the cVAE: its per-gene concentrations are point estimates without a trend prior, so a
    shared shift of all w would be exactly absorbed by them and m would drift unidentified)."""
    if params_or_none is None:
        m = numpyro.param("quality_mean", 0.0) if location else 0.0
        s = numpyro.param("quality_sd", SD_START, constraint=constraints.greater_than(QUALITY_MIN_SD))
        numpyro.factor("quality_sd_prior", -QUALITY_RATE * s)
    else:
        m, s = params_or_none.get("quality_mean", 0.0), params_or_none["quality_sd"]
    return dist.StudentT(QUALITY_DF, m, s)


def model_quality(n_obs: int) -> jax.Array:
    """The model's multipliers of all n_obs observations."""
    return numpyro.sample("sample_quality", prior().expand([n_obs]).to_event(1))


def guide_quality(n_obs: int) -> jax.Array:
    """The guide's multipliers: a Gaussian per observation, starting at the prior mean."""
    loc = numpyro.param("quality_loc", jnp.zeros(n_obs))
    scale = numpyro.param("quality_scale", jnp.full(n_obs, GUIDE_SD_START), constraint=constraints.positive)
    return numpyro.sample("sample_quality", dist.Normal(loc, scale).to_event(1))


def new_quality(params: dict, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Multipliers of new observations drawn from the fitted prior."""
    return prior(params).sample(key, shape)

