"""The learned latent prior is trained on the aggregate posterior (draws of q(z | x, c)), not on the encoder
means: a collapsed latent gives q's own Normal (not a point mass scoring -1e13), and the prior's moments are
the aggregate posterior's (variance of the means + mean encoder variance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import probgex as pg
from probgex.data import from_anndata
from probgex.inference.prior_stage import fit_prior_stage
from probgex.prior.learned import LearnedPrior

SMALL = {"net": pg.latent.Network(hidden=(32, 32)), "training": pg.latent.Training(max_steps=1000, learning_rate=4e-3)}


class CollapsedStory:
    """The parts of a cVAE story the prior stage uses, with a collapsed encoder: every cell's q(z | x, c) is
    N(M, S^2) (the means do not vary between cells, as in a bulk fit whose formula explains the samples)."""

    M, S, dim = 0.3, 0.5, 2

    def __init__(self, n_cond: int):
        self.learned = LearnedPrior(pg.latent.Flow(dim=self.dim, **SMALL), n_cond, seed=0)

    def _const(self, batch, v):
        return jnp.full((batch.design.shape[0], self.dim), v, jnp.float32)

    def encoder_moments(self, params, batch):
        return self._const(batch, self.M), self._const(batch, self.S)

    def encoder_means(self, params, batch):  # what the stage used before
        return self._const(batch, self.M)


def test_a_collapsed_latent_gives_the_encoders_normal_not_a_point_mass(small_adata):
    """The held-out log density scores encoder draws under the prior: with a collapsed latent they must get
    about log N(z; M, S^2) (the Gaussian prior's value), finite; trained on the means the prior was a point
    mass of width 1e-6 and scored them about -1e11 here (-1e13 per sample on yeast and GTEx)."""
    data = from_anndata(small_adata, "~ group")
    story = CollapsedStory(data.design.shape[1])
    held = np.arange(data.n_obs) % 10 == 0
    params, _ = fit_prior_stage(story, {}, data, np.flatnonzero(~held), np.flatnonzero(held), 0, False)
    lp_params = params["learned_prior"]
    np.testing.assert_allclose(lp_params["scale"], story.S, rtol=1e-5)  # the aggregate posterior's sd
    z = story.M + story.S * np.random.default_rng(0).standard_normal((64, story.dim)).astype(np.float32)
    c = np.asarray(data.design[:64], np.float32)
    lp = np.asarray(story.learned.log_prob(lp_params, z, c))
    exact = stats.norm(story.M, story.S).logpdf(z).sum(1)
    assert np.isfinite(lp).all()
    assert np.mean(lp - exact) == pytest.approx(0.0, abs=0.25)
    assert np.max(np.abs(lp - exact)) < 1.0


def test_the_prior_learns_the_aggregate_posteriors_moments():
    """Two clusters of encoder means at -1 and +1 (dim 0) with encoder sd 0.7: the aggregate posterior has
    variance 1 + 0.49 = 1.49 in dim 0 and 0.49 + var of the means' jitter in dim 1; the prior's
    standardisation is exactly those moments and its draws match them (trained on the means it was 1.0)."""
    rng = np.random.default_rng(1)
    n = 400
    side = np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    mu = np.stack([side, 0.1 * rng.standard_normal(n)], 1).astype(np.float32)
    sd = np.full_like(mu, 0.7)
    c = np.ones((n, 1), np.float32)
    prior = LearnedPrior(pg.latent.Flow(dim=2, **SMALL), 1, seed=0)
    params, _ = prior.fit(jax.random.PRNGKey(0), mu, c, z_scale=sd, progress=False)
    train = np.sort(np.asarray(jax.random.permutation(jax.random.split(jax.random.PRNGKey(0))[0], n))[40:])
    np.testing.assert_allclose(params["scale"] ** 2, mu[train].var(0) + 0.49, rtol=1e-5)
    draws = np.asarray(prior.sample(params, jax.random.PRNGKey(1), np.ones((2000, 1), np.float32)))
    target = mu.var(0) + 0.49  # (1.49, ~0.50)
    np.testing.assert_allclose(draws.var(0), target, rtol=0.12)
    np.testing.assert_allclose(draws.mean(0), mu.mean(0), atol=0.08)
