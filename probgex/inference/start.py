"""Starting values of a fit, from one pass over the training rows (no JAX): per-gene summaries, the GLM's
least-squares coefficients and Laplace covariance, and the NB mean-dispersion trend placed before SVI."""

from __future__ import annotations

import numpy as np

from probgex import rng as streams
from probgex.data import CountData
from probgex.models.families import family
from probgex.models.families.base import DISPERSION
from probgex.spec import ModelSpec


def summaries(data: CountData, rows: np.ndarray, chunk: int = 1024):
    """Per-gene log mean normalised count, least-squares start of the GLM coefficients on
    log((x + 0.5) / l), and the log library sizes of `rows` (one pass over the rows, blockwise)."""
    lib = data.library_size[rows]
    P, G = data.n_design, data.n_genes
    xtx, xty, norm_sum = np.zeros((P, P)), np.zeros((P, G)), np.zeros(G)
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        x, l, d = data.rows(r).astype(np.float64), data.library_size[r][:, None], data.design[r].astype(np.float64)
        off = 0.0 if data.offset is None else data.offset[r].astype(np.float64)
        xtx += d.T @ d
        xty += d.T @ (np.log((x + 0.5) / l) - off)
        norm_sum += (x / l).sum(0)
    beta0 = np.linalg.lstsq(xtx, xty, rcond=None)[0]
    log_mean = np.log(norm_sum / len(rows) * lib.mean() + 1e-8)
    return log_mean.astype(np.float32), beta0.astype(np.float32), np.log(lib)


TREND_ROWS = 20_000  # most training rows the trend is placed on


def trend_start(data: CountData, rows: np.ndarray, log_mean: np.ndarray, seed):
    """The GLM's mean-dispersion trend placed on the training rows before SVI (`models.trend`)."""
    from probgex.models.trend import place_trend

    if len(rows) <= data.n_design:  # no residual degree of freedom: the trend stays the ELBO's
        return None
    if len(rows) > TREND_ROWS:  # a fixed random subset bounds memory on large single-cell sets
        rows = np.sort(streams.host_rng(seed, "trend_rows").choice(rows, TREND_ROWS, replace=False))
    y = np.concatenate([data.rows(rows[s : s + 4096]) for s in range(0, len(rows), 4096)])
    offset = None if data.offset is None else data.offset[rows]
    design = data.design[rows]
    return place_trend(y, design[:, independent_columns(design)], data.library_size[rows], log_mean, offset)


def independent_columns(design: np.ndarray) -> np.ndarray:
    """Indices of a largest set of linearly independent columns of `design` (same span), in order: the trend's
    residual degrees of freedom need a full-rank design (a rank-deficient one, e.g. an interaction coded in
    full beside its main effect or a column all zero in the rows, gave NaN)."""
    d = design.astype(np.float64)
    d = d / np.maximum(np.sqrt((d**2).sum(0)), 1e-300)
    keep: list[int] = []
    for j in range(d.shape[1]):
        trial = d[:, keep + [j]]
        if np.linalg.matrix_rank(trial.T @ trial, tol=1e-9 * (len(keep) + 1)) == len(keep) + 1:
            keep.append(j)
    return np.asarray(keep, int)


def laplace_tril(data: CountData, rows: np.ndarray, beta0: np.ndarray, spec: ModelSpec,
                 intercept: int | None, alpha: float | np.ndarray = 0.1, chunk: int = 1024,
                 sd: np.ndarray | None = None) -> np.ndarray:
    """Cholesky factors (G, P, P) of the Laplace covariance of each gene's coefficients at `beta0`:
    (X' W X + prior precision)^-1 with W = mu / (1 + alpha mu) (alpha = 0 for a family without dispersion);
    `sd` (P,) or per gene (G, P): the prior sds of the columns (default: spec.prior_scale, the intercept's
    INTERCEPT_SD)."""
    from probgex.models.glm import INTERCEPT_SD

    a = alpha if family(spec.likelihood).role(DISPERSION) else 0.0
    P, G = data.n_design, data.n_genes
    info = np.zeros((G, P, P))
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        d = data.design[r].astype(np.float64)
        off = 0.0 if data.offset is None else data.offset[r].astype(np.float64)
        mu = data.library_size[r][:, None] * np.exp(d @ beta0.astype(np.float64) + off)
        info += np.einsum("bg,bp,bq->gpq", mu / (1 + a * mu), d, d)
    if sd is None:
        sd = np.full(P, spec.prior_scale)
        if intercept is not None:
            sd[intercept] = INTERCEPT_SD
    idx = np.arange(P)
    info[:, idx, idx] += np.broadcast_to(1 / np.asarray(sd, np.float64) ** 2, (G, P))
    return np.linalg.cholesky(np.linalg.inv(info)).astype(np.float32)


def glm_start(data: CountData, rows: np.ndarray, spec: ModelSpec, log_mean: np.ndarray, beta0: np.ndarray,
              intercept: int | None, seed, coef_terms: tuple[int, ...] = ()) -> dict:
    """The GLM guide's start (`models.glm.GLMInit` fields): the least-squares coefficients, their Laplace
    covariance at the trend's dispersions, and the trend placed before SVI (held fixed by the ELBO); with
    coef_prior "learned" (`coef_terms`, per column its formula term), each term's prior sd's start
    (`coef_sd`, `inference.coef_prior.start_scales`), which the Laplace covariance uses."""
    # the trend, for a family whose counts it describes
    trend = trend_start(data, rows, log_mean, seed) if family(spec.likelihood).nb_trend else None
    # the Laplace start at the trend's dispersions: at a flat 0.1 the guide started (and, Adam shrinking
    # scales slowly, stayed) too wide where dispersions are small
    alpha0 = 0.1 if trend is None else trend[0] + trend[1] * np.exp(-log_mean.astype(np.float64))
    out = {}
    sd = None
    if spec.coef_prior != "fixed":
        from probgex.inference import coef_prior
        from probgex.models.glm import INTERCEPT_SD

        out["coef_sd"] = coef_prior.start_scales(data.design[rows], beta0, coef_terms, spec.prior_scale)
        fixed = np.full(data.n_design, spec.prior_scale)
        if intercept is not None:
            fixed[intercept] = INTERCEPT_SD
        sd = coef_prior.column_scales(out["coef_sd"], coef_terms, fixed)
        if spec.coef_prior in coef_prior.PER_GENE:  # the Laplace start at each gene's own sds
            out["coef_gene_log_sd"] = coef_prior.start_gene_scales(data.design[rows], beta0, coef_terms, out["coef_sd"])
            sd = coef_prior.column_scales(np.exp(out["coef_gene_log_sd"]), coef_terms, fixed)
    tril = laplace_tril(data, rows, beta0, spec, intercept, alpha=alpha0, sd=sd)
    return {"beta": beta0, "beta_tril": tril, "trend": trend, "fixed_trend": trend is not None, **out}
