"""The mean-dispersion trend of the GLM, placed before any SVI.

On the training counts y (N, G), with the fit's library sizes l and the design X: gene-wise Cox-Reid
dispersions at the fitted means (of a linear model of the normalised counts where every coefficient has one
row pattern, else of an NB GLM at DESeq2's rough dispersions, as DESeq2), the gamma-family trend
alpha(m) = a0 + a1 / m over the genes' mean normalised counts m (the GLM's own `log_mean`, so prior and
trend share units); that fit starts the trend used, the (a0, a1) maximising the Cox-Reid adjusted
profile likelihood summed over all genes at alpha_g = a0 + a1 / m_g (a trended common dispersion, as
edgeR's, `apl_trend`); and the prior sd s of log alpha around it by marginal likelihood
(`marginal_prior_sd`; above MARGINAL_MAX_ROWS samples DESeq2's moment rule, var(log residuals) less the
sampling variance trigamma((N - P) / 2), at least 0.5; Love, Huber & Anders 2014). The gene-wise computations are
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
and 0.46-0.49 at 6, where the moment rule gives its floor 0.5 and 0.60-0.66 (and its floor 0.5 at 1-2
df whatever the truth, 0.4 or 1.0 alike, where the marginal likelihood gives 0.30-0.36 and 0.73-0.81 at 1 df,
0.41-0.42 and 1.03-1.07 at 6; tests/test_small_bulk.py; on full real sets at 18-94 df the moment rule gives
0.78-1.01); on the real 1-df rows of
benchmarks/calibration_everywhere.py the held s raised the held-out log density on 16 of 18
rows (by up to 0.20 nats per entry; the two others lost 0.004 and 0.001) and moved pooled coverage little.

The prior is centred on the trend, a trended COMMON dispersion (a mean-type estimate), which sits above the
median gene's dispersion: at 1-2 residual df the genes stay near it and 50% intervals over-cover by ~5 pp
(simulated yeast, truth known). `PRIOR_LOCATION = "marginal"` (an option, not the default) centres it at
log trend + c with c placed by the same marginal likelihood as s (`marginal_prior`; a Student-t with its df
too was tried and removed: no better): on the simulation it finds the true median (c -0.35 to -0.55) and 50%
coverage 0.49-0.51, but 90% falls to 0.87-0.89, and on the real guard rows (benchmarks/calibration_everywhere.py, bottomly, tung,
gtex, tcga at 1 and 2 df) the held-out log density was lower on 5 of 8 (by 0.02-0.06 nats per entry on 4):
held-out samples vary more than the training draw shows, and the trend's higher location is what covers them
(benchmarks/README.md, "The prior's location by marginal likelihood").
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from probgex.errors import DispersionPriorWarning
from probgex.power import dispersion as disp
from probgex.power import nbglm
from probgex.power.de import one_pattern_per_coef


def place_trend(y: np.ndarray, X: np.ndarray, library_size: np.ndarray, log_mean: np.ndarray,
                  offset: np.ndarray | None = None, location: str | None = None) -> tuple[float, float, float]:
    """(a0, a1, s) of the prior of log dispersions from the training counts: log alpha_g ~ N(log(a0 + a1 / m_g),
    s^2); `log_mean` (G,) the genes' log mean normalised counts on the GLM's scale; `location` "trend" or
    "marginal" (None: PRIOR_LOCATION). One jitted computation (compiled once per shape)."""
    location = PRIOR_LOCATION if location is None else location
    if location not in ("trend", "marginal"):
        raise ValueError(f"location must be 'trend' or 'marginal', got {location!r}")
    sf = library_size / np.exp(np.mean(np.log(library_size)))
    scale = sf[:, None] if offset is None else sf[:, None] * np.exp(np.asarray(offset, np.float64))
    linear = bool(one_pattern_per_coef(X) or offset is not None)
    a0, a1, var, c = _placed(jnp.asarray(y, jnp.float32), jnp.asarray(X, jnp.float32), jnp.asarray(sf, jnp.float32),
                             jnp.asarray(scale, jnp.float32), jnp.asarray(np.exp(log_mean), jnp.float32), linear=linear,
                             location=location)
    s = float(np.sqrt(float(var)))
    # the prior's median exp(c) (a0 + a1 / m): a0 and a1 scaled by exp(c) (c = 0 unless PRIOR_LOCATION = "marginal")
    a0, a1 = float(a0) * float(np.exp(float(c))), float(a1) * float(np.exp(float(c)))
    if len(y) <= MARGINAL_MAX_ROWS and s >= S_GRID[1] * 0.999:
        warnings.warn(f"the genes' dispersions scatter around the mean-dispersion trend as widely as its prior may "
                      f"allow (prior sd of log dispersion {s:.1f}, the largest candidate): the samples likely differ "
                      "by something the formula leaves out (an interaction of its terms, a batch). Intervals will be "
                      "wide; name the missing term in the formula if it is known.", DispersionPriorWarning, stacklevel=2)
    return max(float(a0), 1e-8), max(float(a1), 1e-8), s


@partial(jax.jit, static_argnames=("linear", "location"))
def _placed(y, X, sf, scale, m, *, linear: bool, location: str = "trend"):
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
    c = jnp.zeros((), y.dtype)
    if N <= MARGINAL_MAX_ROWS and location == "marginal":
        c, sd = marginal_prior(y, X, mu0, log_trend, use, floor=float(np.sqrt(disp.MIN_PRIOR_VAR)))
        var = sd ** 2
    elif N <= MARGINAL_MAX_ROWS:
        # at least DESeq2's floor 0.5: on real 1-df splits the marginal likelihood said 0.30-0.47 (yeast), and a
        # prior that narrow lowered the held-out log density by 0.39 nats per entry (between-sample variation
        # the training samples do not show)
        var = jnp.maximum(marginal_prior_sd(y, X, mu0, log_trend, use) ** 2, disp.MIN_PRIOR_VAR)
    else:
        var, _ = disp.prior_variance(log_gw, log_trend, use, N, P)
    return a0, a1, var, c


MARGINAL_MAX_ROWS = 200  # above, the moment rule (its sampling correction trigamma((N - P) / 2) < 0.01)
MARGINAL_GENES = 4000  # the genes the marginal likelihood of s is computed on (evenly spaced; bounds its cost)
S_GRID = (0.1, 3.0, 120)  # candidate prior sds: log-spaced from, to, count
OFFSETS = (-8.0, 8.0, 321)  # log alpha - log trend at which each gene's adjusted likelihood is evaluated
C_GRID = (-2.0, 1.0, 61)  # candidate prior locations (log median - log trend) of `marginal_prior`
# where the prior of log alpha is centred: "trend" (the trended common dispersion) or "marginal" (the trend
# shifted by the c of `marginal_prior`, placed with s by the same marginal likelihood; not the default:
# benchmarks/README.md, "The prior's location by marginal likelihood")
PRIOR_LOCATION = "trend"


def _apl_grid(y, X, mu0, log_trend, use):
    """Each gene's Cox-Reid adjusted log likelihood, up to a constant, at offsets u from its trend: (u (U,),
    APL (U, G') on every `step`-th gene, use (G',)); the integral of its score (`power.dispersion._score`) over
    the grid (trapezoid)."""
    G = y.shape[1]
    step = max(1, -(-G // MARGINAL_GENES))
    y, mu0, log_trend, use = y[:, ::step], mu0[:, ::step], log_trend[::step], use[::step]
    u = jnp.linspace(*OFFSETS, dtype=y.dtype)
    du = u[1] - u[0]  # 0.05: a fifth of the smallest candidate s
    score = jax.lax.map(lambda k: disp._score(log_trend + k, y, mu0, X, None), u)  # (U, G)
    apl = jnp.concatenate([jnp.zeros((1, score.shape[1]), y.dtype),
                           jnp.cumsum(0.5 * (score[1:] + score[:-1]) * du, axis=0)])
    return u, jnp.where(use[None], apl, 0.0), use


def _log_marginal(u, apl, use, c, s):
    """sum over genes of log integral APL_g(t_g + u) N(u; c, s^2) du. The prior's discrete weights on the grid
    are normalised to its mass inside (a Riemann sum of a density narrower than the grid step is off by
    percents: nats over thousands of genes); its mass beyond the grid takes the APL at the grid's ends."""
    tail_lo, tail_hi = norm.logcdf((u[0] - c) / s), norm.logsf((u[-1] - c) / s)
    inside = jnp.log1p(-jnp.exp(jnp.logaddexp(tail_lo, tail_hi)))
    logw = norm.logpdf(u, c, s)
    logw = logw - logsumexp(logw) + inside
    inner = logsumexp(apl + logw[:, None], axis=0)
    tails = jnp.logaddexp(tail_lo + apl[0], tail_hi + apl[-1])
    return jnp.where(use, jnp.logaddexp(inner, tails), 0.0).sum()


def _s_grid(dtype):
    return jnp.exp(jnp.linspace(jnp.log(S_GRID[0]), jnp.log(S_GRID[1]), S_GRID[2], dtype=dtype))


def marginal_prior_sd(y, X, mu0, log_trend, use) -> jax.Array:
    """The prior sd s of log alpha_g around the trend maximising the marginal Cox-Reid adjusted
    likelihood, sum over genes of log integral APL_g(t_g + u) N(u; 0, s^2) du: the genes at the
    dispersion floor count as what they are (data that allow a small dispersion), where the moment rule
    drops them and subtracts a sampling variance, trigamma(1/2) = 4.9 at 1 residual df, larger than the
    spread it corrects, so it sat at its floor 0.5 whatever the truth. APL_g is known up to a constant per
    gene: the integral of its score over a grid of offsets u from the trend (`_apl_grid`)."""
    u, apl, use = _apl_grid(y, X, mu0, log_trend, use)
    s_grid = _s_grid(y.dtype)
    return s_grid[jnp.argmax(jax.vmap(lambda s: _log_marginal(u, apl, use, 0.0, s))(s_grid))]


def marginal_prior(y, X, mu0, log_trend, use, floor: float, rounds: int = 4) -> tuple[jax.Array, jax.Array]:
    """(c, s) maximising the same marginal likelihood with the prior's location free too: log alpha_g ~
    N(t_g + c, s^2), s >= `floor`. Coordinate ascent on the grids (s: S_GRID at or above the floor; c: C_GRID),
    `rounds` passes from c = 0 (the marginal likelihood is smooth and, on the designs measured, unimodal)."""
    u, apl, use = _apl_grid(y, X, mu0, log_trend, use)
    s_grid = _s_grid(y.dtype)
    s_ok = s_grid >= floor * 0.999
    c_grid = jnp.linspace(*C_GRID, dtype=y.dtype)

    def one_round(_, cs):
        c, _s = cs
        ls = jax.vmap(lambda s_: _log_marginal(u, apl, use, c, s_))(s_grid)
        s = s_grid[jnp.argmax(jnp.where(s_ok, ls, -jnp.inf))]
        lc = jax.vmap(lambda c_: _log_marginal(u, apl, use, c_, s))(c_grid)
        return c_grid[jnp.argmax(lc)], s

    zero = jnp.zeros((), y.dtype)
    return jax.lax.fori_loop(0, rounds, one_round, (zero, zero + floor))


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
