"""The NB GLM pieces of the DE test, in JAX, for one experiment (counts (N, G), design (N, P)):
median-of-ratios size factors, IRLS for the coefficients with a fixed number of iterations, the
Wald covariance, log-likelihood ratios and Benjamini-Hochberg. Genes are the last axis; nothing loops
over genes in Python, so the functions jit and vmap over a leading axis of experiments.

Conventions follow DESeq2 / pydeseq2: mu >= `MIN_MU`, a 1e-6 ridge in the normal equations, the
coefficients in natural-log units (log2 only in the public table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MIN_MU = 0.5  # fitted means are floored here, as in DESeq2 (1/mu appears in the working response)
RIDGE = 1e-6
BETA_BOUND = 30.0  # |beta| cap: genes with a group of zeros diverge otherwise


def size_factors(y: jax.Array) -> jax.Array:
    """DESeq2 median of ratios over the genes with no zero count: (N,).

    Where no gene is positive in every sample, the totals (scaled to geometric mean 1) stand in."""
    pos = jnp.all(y > 0, axis=0)  # (G,)
    logy = jnp.log(jnp.where(y > 0, y, 1.0))
    log_geo = jnp.mean(logy, axis=0)
    ratios = jnp.where(pos[None], logy - log_geo[None], jnp.nan)
    log_sf = jnp.nanmedian(ratios, axis=1)
    tot = jnp.log(jnp.maximum(y.sum(1), 1.0))
    fallback = tot - tot.mean()
    return jnp.exp(jnp.where(jnp.any(pos), log_sf, fallback))


def _normal_eq(W: jax.Array, X: jax.Array) -> jax.Array:
    """X' diag(W_g) X + ridge for every gene: (G, P, P)."""
    P = X.shape[1]
    return jnp.einsum("ng,np,nq->gpq", W, X, X) + RIDGE * jnp.eye(P, dtype=X.dtype)[None]


def irls(y: jax.Array, X: jax.Array, sf: jax.Array, alpha: jax.Array, n_iter: int = 30
         ) -> tuple[jax.Array, jax.Array]:
    """NB GLM coefficients by iteratively reweighted least squares with dispersions `alpha` (G,)
    fixed: beta (G, P) in natural-log units and the fitted means mu (N, G)."""
    log_sf = jnp.log(sf)[:, None]
    z0 = jnp.log(y / sf[:, None] + 0.1)
    beta = jnp.linalg.solve(X.T @ X + RIDGE * jnp.eye(X.shape[1], dtype=X.dtype), X.T @ z0).T  # (G, P)

    def step(beta, _):
        mu = jnp.maximum(jnp.exp(jnp.clip(X @ beta.T + log_sf, -50.0, 50.0)), MIN_MU)
        W = mu / (1.0 + alpha[None] * mu)
        z = jnp.log(mu) - log_sf + (y - mu) / mu
        rhs = jnp.einsum("ng,np->gp", W * z, X)
        new = jnp.linalg.solve(_normal_eq(W, X), rhs[..., None])[..., 0]
        return jnp.clip(new, -BETA_BOUND, BETA_BOUND), None

    beta, _ = jax.lax.scan(step, beta, None, length=n_iter)
    mu = jnp.maximum(jnp.exp(X @ beta.T + log_sf), MIN_MU)
    return beta, mu


def coef_covariance(X: jax.Array, mu: jax.Array, alpha: jax.Array) -> jax.Array:
    """Wald covariance of the coefficients, (X' W X)^-1 with W = mu / (1 + alpha mu): (G, P, P)."""
    return jnp.linalg.inv(_normal_eq(mu / (1.0 + alpha[None] * mu), X))


def loglik_ratio(y: jax.Array, mu1: jax.Array, mu0: jax.Array, alpha: jax.Array) -> jax.Array:
    """sum_n log NB(y | mu1, alpha) - log NB(y | mu0, alpha) per gene, in a form where the
    log-gamma terms cancel exactly (no float32 cancellation): (G,)."""
    r = 1.0 / alpha[None]
    d = y * (jnp.log(mu1) - jnp.log(mu0)) - (y + r) * (jnp.log1p(mu1 / r) - jnp.log1p(mu0 / r))
    return d.sum(0)


def benjamini_hochberg(p: jax.Array) -> jax.Array:
    """BH adjusted p-values along the last axis; NaN p-values are left out (and stay NaN)."""
    valid = ~jnp.isnan(p)
    m = valid.sum(-1, keepdims=True)
    order = jnp.argsort(jnp.where(valid, p, jnp.inf), axis=-1)
    ps = jnp.take_along_axis(jnp.where(valid, p, jnp.inf), order, axis=-1)
    rank = jnp.arange(1, p.shape[-1] + 1, dtype=p.dtype)
    q = ps * m / rank
    q = jnp.flip(jax.lax.cummin(jnp.flip(q, -1), axis=q.ndim - 1), -1)
    q = jnp.minimum(q, 1.0)
    out = jnp.empty_like(q).at[..., :].set(0.0)
    out = jnp.put_along_axis(out, order, q, axis=-1, inplace=False)
    return jnp.where(valid, out, jnp.nan)
