"""Effect sizes for pilot-based power: empirical-Bayes shrinkage of log2 fold changes across genes.

A 3-vs-3 pilot estimates each gene's log2 fold change with a large error, and the genes with the largest
estimates are mostly the noisiest: taking the estimates as the truth inflates the effects (and the
predicted power). As ashr (Stephens 2017) does, the true effects are given a prior shared by all genes,
a scale mixture of centred normals g(b) = sum_k pi_k N(0, sigma_k^2) on a fixed grid of sigma_k (sigma_0
= 0: a point mass at no change), whose weights pi are fitted by maximum likelihood (EM) on the estimates
b_hat_g ~ N(b_g, s_g^2), with ashr's default "null-biased" penalty (a Dirichlet(10, 1, ..., 1) prior on pi:
components of tiny sigma are indistinguishable from the point mass, and the penalty gives their weight to
it rather than spreading it over them). Each gene's posterior is then a mixture of normals, with component k chosen
with probability proportional to pi_k N(b_hat_g; 0, sigma_k^2 + s_g^2), mean b_hat_g sigma_k^2 /
(sigma_k^2 + s_g^2) and variance sigma_k^2 s_g^2 / (sigma_k^2 + s_g^2).

`shrink_draws` maps draws of an unshrunk posterior (e.g. the probgex GLM's, whose N(0, 3^2) prior on a
coefficient is nearly flat) to draws of the shrunk one, reusing each draw's standardized deviation
z = (draw - b_hat) / s, so that a draw keeps its correlation with the gene's other parameters (base rate,
dispersion) drawn jointly with it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from probgex.errors import DataError


def sigma_grid(b_hat: np.ndarray, s: np.ndarray, factor: float = np.sqrt(2.0)) -> np.ndarray:
    """ashr's default grid: 0, then from min(s) / 10 up to 2 sqrt(max(b_hat^2 - s^2)) by `factor`."""
    lo = max(float(np.min(s)) / 10.0, 1e-3)
    hi = 2.0 * np.sqrt(max(float(np.max(b_hat**2 - s**2)), lo**2 * 4))
    k = int(np.ceil(np.log(hi / lo) / np.log(factor))) + 1
    return np.concatenate([[0.0], lo * factor ** np.arange(k)])


def _component_loglik(b_hat, s, grid):
    var = grid[None, :] ** 2 + s[:, None] ** 2  # (G, K)
    return -0.5 * (np.log(2 * np.pi * var) + b_hat[:, None] ** 2 / var)


def fit_normal_mixture(b_hat, s, grid=None, *, null_weight: float = 10.0, n_iter: int = 500,
                       tol: float = 1e-8):
    """Weights pi (K,) of the prior sum_k pi_k N(0, grid_k^2) by penalized EM (MAP under a Dirichlet
    with `null_weight` on the first component, 1 on the others) on b_hat ~ N(b, s^2); returns (pi, grid)."""
    b_hat, s = np.asarray(b_hat, np.float64), np.asarray(s, np.float64)
    if b_hat.shape != s.shape or b_hat.ndim != 1 or b_hat.size == 0:
        raise DataError("b_hat and s must be one value per gene, of the same length")
    if not (np.all(np.isfinite(b_hat)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise DataError("effect estimates must be finite with positive standard errors; drop untested genes")
    if not null_weight >= 1:
        raise DataError(f"null_weight must be >= 1 (1: no penalty), got {null_weight!r}")
    grid = sigma_grid(b_hat, s) if grid is None else np.asarray(grid, np.float64)
    ll = _component_loglik(b_hat, s, grid)
    extra = np.zeros(grid.size)
    extra[0] = null_weight - 1.0
    pi = np.full(grid.size, 1.0 / grid.size)
    prev = -np.inf
    for _ in range(n_iter):
        log_pi = np.log(np.maximum(pi, 1e-300))
        lw = ll + log_pi[None]
        norm = logsumexp(lw, axis=1, keepdims=True)
        pi = (np.exp(lw - norm).sum(0) + extra) / (b_hat.size + extra.sum())
        cur = float(norm.sum()) + float(extra @ log_pi)
        if cur - prev < tol * abs(cur):
            break
        prev = cur
    return pi, grid


def shrink_draws(draws, b_hat, s, pi, grid, rng: np.random.Generator) -> np.ndarray:
    """Draws (S, G) of the unshrunk posterior N(b_hat, s^2) -> draws (S, G) of the posterior under the
    fitted mixture prior (see the module doc)."""
    draws = np.asarray(draws, np.float64)
    b_hat, s = np.asarray(b_hat, np.float64), np.asarray(s, np.float64)
    lw = _component_loglik(b_hat, s, grid) + np.log(np.maximum(pi, 1e-300))[None]
    post = np.exp(lw - logsumexp(lw, axis=1, keepdims=True))  # (G, K)
    cum = np.cumsum(post, axis=1)
    u = rng.random(draws.shape)  # (S, G)
    k = np.minimum((u[..., None] > cum[None]).sum(-1), grid.size - 1)  # (S, G) component per draw
    sig2 = grid[k] ** 2
    frac = sig2 / (sig2 + s[None] ** 2)
    z = (draws - b_hat[None]) / s[None]
    return frac * b_hat[None] + np.sqrt(frac) * s[None] * z
