"""The GLM guide's log density at its own draws, in float32, where the posterior is far narrower in some
directions than in others (high counts beside a column without data): it must be the exact value
-|eps|^2 / 2 - sum log diag(L) - D log(2 pi) / 2, not a solve of L against draw - loc, whose rounding error
(amplified by L's condition number) the optimiser exploited (a Poisson fit's loss ran to -1e24)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer.util import compute_log_probs

from probgex.models.glm import full_rank_normal, scale_tril


def _guide_log_density(loc, diag, off, key):
    def guide():
        with numpyro.plate("genes", loc.shape[0]):
            numpyro.sample("gene_params", full_rank_normal(loc, scale_tril(diag, off)))

    lp, tr = compute_log_probs(numpyro.handlers.seed(guide, key), (), {}, {})
    return float(lp["gene_params"]), np.asarray(tr["gene_params"]["value"])


def test_log_density_at_its_draws_is_exact_for_an_ill_conditioned_factor():
    G, D = 6, 4
    loc = jnp.full((G, D), 100.0)  # float32 spacing at 100 is 7.6e-6
    diag = jnp.tile(jnp.asarray([1e-6, 1.0, 1e-6, 0.5]), (G, 1))
    off = jnp.tile(jnp.tril(jnp.full((D, D), 0.3), -1), (G, 1, 1))
    key = jax.random.PRNGKey(0)
    got, draw = _guide_log_density(loc, diag, off, key)
    L = np.asarray(scale_tril(diag, off), np.float64)
    # the eps NumPyro drew: the base normal is the site's only randomness, so the same key redraws it
    eps = np.asarray(numpyro.handlers.seed(lambda: numpyro.sample("e", numpyro.distributions.Normal(
        jnp.zeros((G, D)), 1.0)), key)(), np.float64)
    exact = (-0.5 * (eps ** 2).sum() - np.log(np.diagonal(L, axis1=1, axis2=2)).sum() - 0.5 * G * D * np.log(2 * np.pi))
    assert np.isfinite(got) and abs(got - exact) < 1e-3 * max(1.0, abs(exact)), (got, exact)
    # the draws are loc + L eps (the same law as MultivariateNormal(loc, scale_tril=L))
    np.testing.assert_allclose(draw, 100.0 + np.einsum("gij,gj->gi", L, eps), atol=1e-4)


def test_log_density_matches_the_multivariate_normal_where_well_conditioned():
    G, D = 5, 3
    rng = np.random.default_rng(0)
    loc = jnp.asarray(rng.normal(0, 1, (G, D)), jnp.float32)
    diag = jnp.asarray(rng.uniform(0.5, 1.5, (G, D)), jnp.float32)
    off = jnp.asarray(rng.normal(0, 0.3, (G, D, D)), jnp.float32)
    got, draw = _guide_log_density(loc, diag, off, jax.random.PRNGKey(1))
    mvn = numpyro.distributions.MultivariateNormal(loc, scale_tril=scale_tril(diag, off))
    assert abs(got - float(mvn.log_prob(jnp.asarray(draw)).sum())) < 1e-3
