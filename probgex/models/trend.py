"""The mean-dispersion trend of the GLM, placed before any SVI.

On the training counts y (N, G), with the fit's library sizes l and the design X: gene-wise Cox-Reid
dispersions at the fitted means (of a linear model of the normalised counts where every coefficient has one
row pattern, else of an NB GLM at DESeq2's rough dispersions, as DESeq2), the gamma-family trend
alpha(m) = a0 + a1 / m over the genes' mean normalised counts m (the GLM's own `log_mean`, so prior and
trend share units); that fit starts the trend used, the (a0, a1) maximising the Cox-Reid adjusted
profile likelihood summed over all genes at alpha_g = a0 + a1 / m_g (a trended common dispersion, as
edgeR's, `apl_trend`); and the prior sd of log alpha around it, var(log residuals) less the sampling
variance trigamma((N - P) / 2), at least 0.5 (Love, Huber & Anders 2014). The gene-wise computations are
those of `probgex.power.dispersion` (tested there against pydeseq2; a models -> power import, until that
code moves to a module both use).

Why the profile likelihood rather than DESeq2's gamma fit: at 1-2 residual df many genes' gene-wise
estimates sit at the floor (Poisson-like), and the gamma fit leaves them out, which lifts the trend
(a1 3-16 where the profile likelihood gives 1-7 on the same splits); with the trend held there the 50%
intervals over-covered by 10-20 pp more and the held-out log density was lower on 6 of 8 splits
(yeast df 2, tung df 1, gse60450 df 1, bottomly df 1, two draws each; mean -5.918 vs -5.878 nats).

Why not the ELBO: with 1-2 residual degrees of freedom the ELBO's empirical Bayes flattened the trend
(on gse60450, 6 samples, `~ CellType + Status`: a1 0.22-0.26 against DESeq2's 4.8-6.3), so the lowest
expression deciles' intervals were too narrow and the highest too wide (50% coverage 0.43 and 0.68).
The prior sd s is held at the moment rule's value too (`models.glm`): refined by the ELBO it came out low,
on counts simulated from the GLM itself with s = 0.6 (1,000 genes, 3 seeds) 0.35-0.37 at 1 residual df
and 0.46-0.49 at 6, where the moment rule gives its floor 0.5 and 0.60-0.66; on the real 1-df rows of
benchmarks/calibration_everywhere.py the held s raised the held-out log density on 16 of 18
rows (by up to 0.20 nats per entry; the two others lost 0.004 and 0.001) and moved pooled coverage little.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probgex.power import dispersion as disp
from probgex.power import nbglm
from probgex.power.de import one_pattern_per_coef


def place_trend(y: np.ndarray, X: np.ndarray, library_size: np.ndarray, log_mean: np.ndarray,
                  offset: np.ndarray | None = None) -> tuple[float, float, float]:
    """(a0, a1, s) of the trend from the training counts; `log_mean` (G,) the genes' log mean
    normalised counts on the GLM's scale. One jitted computation (compiled once per shape)."""
    sf = library_size / np.exp(np.mean(np.log(library_size)))
    scale = sf[:, None] if offset is None else sf[:, None] * np.exp(np.asarray(offset, np.float64))
    linear = bool(one_pattern_per_coef(X) or offset is not None)
    a0, a1, var = _placed(jnp.asarray(y, jnp.float32), jnp.asarray(X, jnp.float32), jnp.asarray(sf, jnp.float32),
                          jnp.asarray(scale, jnp.float32), jnp.asarray(np.exp(log_mean), jnp.float32), linear=linear)
    return max(float(a0), 1e-8), max(float(a1), 1e-8), float(np.sqrt(float(var)))


@partial(jax.jit, static_argnames=("linear",))
def _placed(y, X, sf, scale, m, *, linear: bool):
    N, P = X.shape
    max_disp = float(max(10, N))
    if linear:  # DESeq2: linear-model means where each coefficient has one row pattern (and here around
        # a stage-1 offset)
        hat = X @ nbglm.spd_inv(X.T @ X) @ X.T
        mu0 = jnp.maximum(scale * (hat @ (y / scale)), nbglm.MIN_MU)
    else:  # else an NB GLM at the rough dispersions
        mu0 = nbglm.irls(y, X, sf, disp.start_dispersion(y, X, sf, max_disp))[1]
    log_gw = disp.genewise_log_alpha(y, mu0, X, sf, max_disp)
    use = (y.sum(0) > 0) & (m > 0)
    # genes whose gene-wise estimate stays at MIN_DISP leave the trend fit from its first pass (DESeq2
    # drops them after it, ratio < 1e-4): in the first identity-link IRLS pass their weights 1 / m^2
    # blow up and drove a coefficient negative on gse60450 splits, where pydeseq2's bounded fit did not
    fit_on = use & (log_gw > jnp.log(10 * disp.MIN_DISP))
    start = disp.fit_trend(jnp.exp(log_gw), m, fit_on)
    a0, a1 = apl_trend(y, X, mu0, m, use, start)  # DESeq2's fit starts the profile-likelihood fit
    log_trend = jnp.log(a0 + a1 / jnp.where(use, m, 1.0))
    var, _ = disp.prior_variance(log_gw, log_trend, use, N, P)
    return a0, a1, var


def apl_trend(y, X, mu0, m, use, start: jax.Array, steps: int = 400) -> tuple[jax.Array, jax.Array]:
    """(a0, a1) maximising the sum over genes `use` of the Cox-Reid adjusted profile likelihood at
    alpha_g = a0 + a1 / m_g (a trended common dispersion, as edgeR's): every gene counts, including those
    whose gene-wise estimate sits at the floor, which DESeq2's gamma fit leaves out."""

    def grad(theta):
        a0, a1 = jnp.exp(theta[0]), jnp.exp(theta[1])
        alpha = a0 + a1 / m
        s = jnp.where(use, disp._score(jnp.log(alpha), y, mu0, X, None), 0.0)  # d APL / d log alpha_g
        return -jnp.stack([(s * a0 / alpha).sum(), (s * (a1 / m) / alpha).sum()])

    opt = optax.adam(0.05)

    def step(c, _):
        theta, st = c
        upd, st = opt.update(grad(theta), st)
        return (optax.apply_updates(theta, upd), st), None

    theta0 = jnp.log(jnp.maximum(start, jnp.asarray([1e-4, 1e-3], start.dtype)))
    (theta, _), _ = jax.lax.scan(step, (theta0, opt.init(theta0)), None, length=steps)
    return jnp.exp(theta[0]), jnp.exp(theta[1])
