"""Per-level scales of the GLM's learned interaction terms (coef_prior "learned-interactions-per-gene-level").

Each column j of a learned term t (a level of the interaction: one cell type's own stimulation effect) scales
its coefficients' prior sd: beta_gj ~ N(0, (tau_t lambda_gt kappa_j)^2), the levels' scales drawn from one
population per term, kappa_j ~ half-Cauchy(0, s_t), and its scale s_t a latent, log s_t ~ N(0, 1) (tau_t, fitted,
carries the overall size, so s_t's posterior is where the levels lie relative to it, and how surely). A level
seen in training gets a log-normal guide (its coefficients of all genes inform it); an unseen level (a column
all zero in training: a held-out cell type x stimulation) keeps its exact conditional posterior, the population
half-Cauchy(0, s_t) at the guide's s_t, so a prediction for it integrates over the population's posterior and the
half-Cauchy's tail (Gelman 2006 and Polson & Scott 2012's choice for a scale learned from few groups): with a few
seen levels the new level may respond on a larger scale than any of them, and its intervals say so for every
gene at once (one draw of kappa is shared by all genes). The per-gene local scales lambda_gt stay as in
"learned-interactions-per-gene" (`probgex.models.glm`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

POP_SD = 1.0  # the prior sd of a term's log population scale log s_t
SEEN_SCALE0 = 0.1  # the guide's start sd of a seen level's log scale


class Levels:
    """The learned terms' columns as levels: `terms` (P,) each column's term (-1: none), `unseen` (P,) bool."""

    def __init__(self, terms: np.ndarray, unseen: np.ndarray, n_terms: int):
        terms, unseen = np.asarray(terms), np.asarray(unseen, bool)
        cols = np.flatnonzero(terms >= 0)
        self.P, self.T = terms.size, n_terms
        self.seen_cols = cols[~unseen[cols]]
        self.new_cols = cols[unseen[cols]]
        self.seen_term = jnp.asarray(terms[self.seen_cols])
        self.new_term = jnp.asarray(terms[self.new_cols])

    def _columns(self, seen: jax.Array | None, new: jax.Array | None, lead: tuple = ()) -> jax.Array:
        """(..., P) multipliers of the columns' prior sds from the seen and unseen levels' scales (1 elsewhere)."""
        out = jnp.ones((*lead, self.P))
        if seen is not None and self.seen_cols.size:
            out = out.at[..., self.seen_cols].set(seen)
        if new is not None and self.new_cols.size:
            out = out.at[..., self.new_cols].set(new)
        return out

    def model(self) -> jax.Array:
        """The model's level scales, (P,)."""
        log_s = numpyro.sample("coef_level_pop", dist.Normal(jnp.zeros(self.T), POP_SD).to_event(1))
        s = jnp.exp(log_s)
        seen = numpyro.sample("coef_level_seen", dist.HalfCauchy(s[self.seen_term]).to_event(1))
        new = (numpyro.sample("coef_level_new", dist.HalfCauchy(s[self.new_term]).to_event(1))
               if self.new_cols.size else None)
        return self._columns(seen, new)

    def guide(self) -> jax.Array:
        """The guide's level scales, (P,): log s_t normal, a seen level's scale log-normal, an unseen level's its
        conditional posterior half-Cauchy(0, s_t) (its ELBO terms cancel)."""
        log_s = numpyro.sample("coef_level_pop", dist.Normal(
            numpyro.param("coef_level_pop_loc", jnp.zeros(self.T)),
            numpyro.param("coef_level_pop_scale", jnp.full(self.T, 0.3), constraint=constraints.positive)).to_event(1))
        J = int(self.seen_cols.size)
        seen = numpyro.sample("coef_level_seen", dist.LogNormal(
            numpyro.param("coef_level_loc", jnp.zeros(J)),
            numpyro.param("coef_level_scale", jnp.full(J, SEEN_SCALE0), constraint=constraints.positive)).to_event(1))
        new = (numpyro.sample("coef_level_new", dist.HalfCauchy(jnp.exp(log_s)[self.new_term]).to_event(1))
               if self.new_cols.size else None)
        return self._columns(seen, new)

    def draw_new(self, params: dict, key: jax.Array, n: int) -> jax.Array:
        """n draws of the columns' multipliers for prediction, (n, P): an unseen level's from the population at
        s_t drawn from its guide (the posterior predictive of a new level's scale), every other column 1 (its
        coefficients' guide is free)."""
        k1, k2 = jax.random.split(key)
        log_s = params["coef_level_pop_loc"] + params["coef_level_pop_scale"] * jax.random.normal(k1, (n, self.T))
        new = jnp.exp(log_s)[:, self.new_term] * jnp.abs(jax.random.cauchy(k2, (n, int(self.new_cols.size))))
        return self._columns(None, new, (n,))

    def median_new(self, params: dict) -> jax.Array:
        """(P,) an unseen level's scale for the moments: the half-Cauchy's median s_t at s_t's guide median (the
        half-Cauchy has no variance; `draws` integrate over it); other columns 1."""
        return self._columns(None, jnp.exp(params["coef_level_pop_loc"])[self.new_term])
