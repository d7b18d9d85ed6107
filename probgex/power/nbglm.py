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


def _cholesky(A: jax.Array) -> list[list[jax.Array]]:
    """Cholesky factor of SPD matrices A (..., P, P), unrolled over the small static P: entries L[i][j]
    as (...,) arrays. Elementwise code compiles in a fraction of the time of XLA's batched LU."""
    P = A.shape[-1]
    L = [[None] * P for _ in range(P)]
    for j in range(P):
        d = A[..., j, j] - sum(L[j][k] ** 2 for k in range(j))
        L[j][j] = jnp.sqrt(jnp.maximum(d, 1e-30))
        for i in range(j + 1, P):
            L[i][j] = (A[..., i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
    return L


def spd_solve(A: jax.Array, b: jax.Array) -> jax.Array:
    """Solve A x = b for SPD A (..., P, P) and b (..., P)."""
    P = A.shape[-1]
    L = _cholesky(A)
    z = [None] * P
    for i in range(P):
        z[i] = (b[..., i] - sum(L[i][k] * z[k] for k in range(i))) / L[i][i]
    x = [None] * P
    for i in reversed(range(P)):
        x[i] = (z[i] - sum(L[k][i] * x[k] for k in range(i + 1, P))) / L[i][i]
    return jnp.stack(x, -1)


def spd_inv(A: jax.Array) -> jax.Array:
    """Inverse of SPD matrices A (..., P, P)."""
    P = A.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(P, dtype=A.dtype), A.shape)
    return jnp.stack([spd_solve(A, eye[..., k]) for k in range(P)], -1)


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
    XtX = X.T @ X + RIDGE * jnp.eye(X.shape[1], dtype=X.dtype)
    beta = spd_solve(jnp.broadcast_to(XtX, (z0.shape[1],) + XtX.shape), (X.T @ z0).T)  # (G, P)

    def step(beta, _):
        mu = jnp.maximum(jnp.exp(jnp.clip(X @ beta.T + log_sf, -50.0, 50.0)), MIN_MU)
        W = mu / (1.0 + alpha[None] * mu)
        z = jnp.log(mu) - log_sf + (y - mu) / mu
        rhs = jnp.einsum("ng,np->gp", W * z, X)
        new = spd_solve(_normal_eq(W, X), rhs)
        return jnp.clip(new, -BETA_BOUND, BETA_BOUND), None

    beta, _ = jax.lax.scan(step, beta, None, length=n_iter)
    mu = jnp.maximum(jnp.exp(X @ beta.T + log_sf), MIN_MU)
    return beta, mu


def coef_covariance(X: jax.Array, mu: jax.Array, alpha: jax.Array) -> jax.Array:
    """Wald covariance of the coefficients, (X' W X)^-1 with W = mu / (1 + alpha mu): (G, P, P)."""
    return spd_inv(_normal_eq(mu / (1.0 + alpha[None] * mu), X))


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
