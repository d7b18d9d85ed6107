"""DESeq2-style NB dispersions, vectorized over genes (last axis) in JAX.

1. gene-wise: the Cox-Reid adjusted profile likelihood maximised over log alpha with the fitted means
   held fixed (DESeq2's `estimateDispersionsGeneEst`), except that genes whose rough / moments starting
   value min(rough, moments) is at or below MIN_DISP keep MIN_DISP (`start_dispersion`): DESeq2's line
   search (and pydeseq2's L-BFGS-B) starts there, where the score in log alpha is ~alpha ~ 0, and stops.
   Those genes then drop out of the trend and the prior width, as in DESeq2; letting them reach their
   (often interior) maximum lowered the trend at 2 x 3 samples and made the test more liberal than
   pydeseq2 (simulated yeast 3 vs 3, realized FDR 0.119 before, 0.104 after, pydeseq2 0.109;
   benchmarks/fdr_small_n.py);
2. trend: alpha(m) = a0 + a1 / m fitted by a gamma GLM with identity link on the gene-wise estimates,
   refitted after dropping genes whose ratio to the curve is outside [1e-4, 15) (as pydeseq2); where a
   fit gives a coefficient <= 1e-10 (no a1 / mean part, e.g. a constant dispersion) the trend is the
   0.1%-trimmed mean of the gene-wise estimates above 10 x MIN_DISP, as pydeseq2 does (DESeq2 switches to
   a local fit). Before, a1 (or both) stayed at the 1e-8 clamp: a0 off, or every gene an outlier;
3. prior width: var(log residuals) by the squared MAD, minus the sampling variance trigamma((N - P) / 2),
   at least 0.25 (DESeq2's `estimateDispersionsPriorVar`; for N - P <= 3 DESeq2 instead matches the
   residuals' histogram by simulation, pydeseq2 does not and neither does this: at 2 vs 2 that changed
   the realized FDR by -0.008 +- 0.004 of 0.19, benchmarks/fdr_small_n.py --kl-prior-var);
4. MAP: the same objective plus a normal prior on log alpha centred on the trend; genes whose gene-wise
   estimate lies more than 2 SD above the trend keep their gene-wise value (DESeq2's outliers).

The maximisation does not use objective values (float32 log-gamma sums lose the digits that matter) but
the score d/d log alpha, written so that it keeps its precision: its sign on a grid of log alpha brackets
the maximum (the last + to - change), then bisection narrows the bracket.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, polygamma

from probgex.power.nbglm import spd_inv, spd_solve

MIN_DISP = 1e-8
GRID = 41
BISECT = 22
OUTLIER_SD = 2.0
MIN_PRIOR_VAR = 0.25


def _digamma_diff(y: jax.Array, r: jax.Array) -> jax.Array:
    """digamma(y + r) - digamma(r), with the asymptotic series for r > 8 (where the plain difference
    cancels catastrophically in float32; the series' truncation error there is below 2e-8)."""
    rs, rd = jnp.maximum(r, 8.0), jnp.minimum(r, 8.0)
    s = rs + y
    series = (jnp.log1p(y / rs) + y / (2.0 * rs * s) + y * (rs + s) / (12.0 * rs**2 * s**2)
              - (1.0 / (120.0 * rs**4) - 1.0 / (120.0 * s**4)))
    return jnp.where(r > 8.0, series, digamma(y + rd) - digamma(rd))


def _score(la: jax.Array, y: jax.Array, mu: jax.Array, X: jax.Array, prior: tuple | None) -> jax.Array:
    """d/d log alpha of the Cox-Reid adjusted NB log-likelihood (+ the log-normal prior): (G,)."""
    a = jnp.exp(la)
    r = 1.0 / a
    dl_dr = (_digamma_diff(y, r[None]) - jnp.log1p(mu / r[None]) + (mu - y) / (r[None] + mu)).sum(0)
    s = -r * dl_dr
    W = mu / (1.0 + a[None] * mu)  # Cox-Reid: -1/2 log det X'WX, dW/dla = -a W^2
    A = jnp.einsum("ng,np,nq->gpq", W, X, X)
    h = jnp.einsum("np,gpq,nq->ng", X, spd_inv(A), X)
    s = s + 0.5 * a * (W**2 * h).sum(0)
    if prior is not None:
        log_trend, var = prior
        s = s - (la - log_trend) / var
    return s


def start_dispersion(y: jax.Array, X: jax.Array, sf: jax.Array, max_disp: float) -> jax.Array:
    """DESeq2's starting dispersions (G,): min(rough, moments) in [MIN_DISP, max_disp]. rough: the
    squared residuals of a linear model of the normalised counts (fitted values >= 1); moments: the
    sample variance of the normalised counts less the Poisson part, over the squared mean."""
    N, P = X.shape
    yn = y / sf[:, None]
    fit = jnp.maximum(X @ spd_inv(X.T @ X) @ X.T @ yn, 1.0)
    rde = jnp.maximum((((yn - fit) ** 2 - fit) / fit**2).sum(0) / (N - P), 0.0)
    m = yn.mean(0)
    mde = jnp.nan_to_num((yn.var(0, ddof=1) - jnp.mean(1.0 / sf) * m) / m**2)
    return jnp.clip(jnp.minimum(rde, mde), MIN_DISP, max_disp)


def genewise_log_alpha(y: jax.Array, mu: jax.Array, X: jax.Array, sf: jax.Array, max_disp: float) -> jax.Array:
    """Gene-wise log dispersions (G,): the Cox-Reid maximum, or log MIN_DISP where DESeq2's starting
    value is MIN_DISP (its search cannot leave it: the score there is of order MIN_DISP; pydeseq2 agrees
    on every such gene checked, benchmarks/fdr_small_n.py)."""
    stuck = start_dispersion(y, X, sf, max_disp) <= MIN_DISP
    return jnp.where(stuck, jnp.log(jnp.asarray(MIN_DISP, mu.dtype)), fit_log_alpha(y, mu, X, max_disp))


def fit_log_alpha(y: jax.Array, mu: jax.Array, X: jax.Array, max_disp: float,
                  prior: tuple | None = None) -> jax.Array:
    """Maximise the Cox-Reid adjusted likelihood (+ prior) over log alpha in [log MIN_DISP,
    log max_disp] for every gene: (G,). One scan: GRID steps scan the grid and keep the last + to -
    change of the score's sign as the bracket, then BISECT steps halve it (one score body to compile)."""
    lo_b, hi_b = jnp.log(MIN_DISP), jnp.log(max_disp)
    grid = jnp.linspace(lo_b, hi_b, GRID, dtype=mu.dtype)
    G = y.shape[1]
    f = jnp.zeros((G,), mu.dtype)
    b = jnp.zeros((G,), bool)

    def step(c, k):
        lo, hi, prev, has = c
        searching = k < GRID
        la = jnp.where(searching, grid[jnp.minimum(k, GRID - 1)], 0.5 * (lo + hi))
        up = _score(la, y, mu, X, prior) > 0
        cross = searching & (k > 0) & prev & ~up
        lo_s = jnp.where(cross, grid[jnp.maximum(k - 1, 0)], lo)
        hi_s = jnp.where(cross, la, hi)
        lo_b_ = jnp.where(up, la, lo)
        hi_b_ = jnp.where(up, hi, la)
        lo = jnp.where(searching, lo_s, lo_b_)
        hi = jnp.where(searching, hi_s, hi_b_)
        prev = jnp.where(searching, up, prev)
        return (lo, hi, prev, has | cross), None

    (lo, hi, last_up, has), _ = jax.lax.scan(step, (f, f, b, b), jnp.arange(GRID + BISECT))
    edge = jnp.where(last_up, hi_b, lo_b)
    return jnp.where(has, 0.5 * (lo + hi), edge)


def fit_trend(disp: jax.Array, base_mean: jax.Array, use: jax.Array, n_outer: int = 10,
              n_inner: int = 20) -> jax.Array:
    """(a0, a1) of alpha = a0 + a1 / mean by a gamma GLM (identity link) on the genes `use`,
    refitted after dropping genes whose ratio to the curve is outside [1e-4, 15)."""
    use = use & jnp.isfinite(disp) & (base_mean > 0)
    disp = jnp.where(use, disp, 1.0)
    x = 1.0 / jnp.where(use, base_mean, 1.0)
    Z = jnp.stack([jnp.ones_like(x), x], -1)

    def wls(coef, mask):
        def it(coef, _):
            m = jnp.maximum(Z @ coef, 1e-8)
            w = jnp.where(mask, 1.0 / m**2, 0.0)
            A = jnp.einsum("g,gi,gj->ij", w, Z, Z) + 1e-12 * jnp.eye(2)
            return spd_solve(A, jnp.einsum("g,gi->i", w * disp, Z)), None
        return jax.lax.scan(it, coef, None, length=n_inner)[0]

    def outer(c, _):
        coef, mask, failed = c
        raw = wls(coef, mask)
        failed = failed | jnp.any(raw <= 1e-10) | ~jnp.all(jnp.isfinite(raw))
        coef = jnp.maximum(jnp.nan_to_num(raw, nan=1e-8), 1e-8)
        ratio = disp / (Z @ coef)
        return (coef, mask & (ratio >= 1e-4) & (ratio < 15.0), failed), None

    coef0 = jnp.array([0.1, 1.0], dtype=disp.dtype)
    (coef, _, failed), _ = jax.lax.scan(outer, (coef0, use, jnp.asarray(False)), None, length=n_outer)
    return jnp.where(failed, jnp.stack([_trimmed_mean(disp, use & (disp > 10 * MIN_DISP)), 0.0]), coef)


def _trimmed_mean(x: jax.Array, use: jax.Array, cut: float = 0.001) -> jax.Array:
    """scipy.stats.trim_mean(x[use], cut): the mean without the int(cut * n) lowest and highest."""
    n = use.sum()
    k = jnp.floor(cut * n).astype(jnp.int32)
    xs = jnp.sort(jnp.where(use, x, jnp.inf))
    i = jnp.arange(x.shape[0])
    keep = (i >= k) & (i < n - k)
    return jnp.where(keep, xs, 0.0).sum() / jnp.maximum(keep.sum(), 1)


def prior_variance(log_gw: jax.Array, log_trend: jax.Array, use: jax.Array, n_samples: int,
                   n_coefs: int) -> tuple[jax.Array, jax.Array]:
    """(prior variance of log alpha, squared MAD of the log residuals) over the genes `use` whose
    gene-wise estimate is at least 100 x MIN_DISP."""
    ok = use & (log_gw >= jnp.log(100 * MIN_DISP))
    res = jnp.where(ok, log_gw - log_trend, jnp.nan)
    med = jnp.nanmedian(res)
    mad = jnp.nanmedian(jnp.abs(res - med)) / 0.6744897501960817
    sq = mad**2
    expected = polygamma(1, jnp.asarray((n_samples - n_coefs) / 2.0, log_gw.dtype))
    return jnp.maximum(sq - expected, MIN_PRIOR_VAR), sq


def final_dispersion(log_gw: jax.Array, log_map: jax.Array, log_trend: jax.Array,
                     sq_logres: jax.Array) -> jax.Array:
    """MAP, except for genes whose gene-wise estimate lies > 2 SD above the trend: (G,) alpha."""
    outlier = log_gw > log_trend + OUTLIER_SD * jnp.sqrt(sq_logres)
    return jnp.exp(jnp.where(outlier, log_gw, log_map))
