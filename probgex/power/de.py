"""The DESeq2-style differential-expression test, vectorized over genes and over experiments, in JAX.

`deseq(y, X, ...)` runs the whole test on one experiment (counts (N, G), design (N, P)); `deseq_batch`
vmaps it over a leading axis of experiments sharing one design (the power simulations); `de_test` is
the entry point on real data (an AnnData), returning a pandas table like DESeq2's `results()`.

Steps, as DESeq2 / pydeseq2 (without Cook's-distance outlier handling and independent filtering):
median-of-ratios size factors; first fitted means by a linear model of the normalised counts when the
design has one row pattern per coefficient (otherwise an NB GLM with rough moment dispersions);
Cox-Reid gene-wise dispersions (left at the minimum where DESeq2's moments start is at the minimum,
as DESeq2's and pydeseq2's searches leave them: see `dispersion.genewise_log_alpha`); the parametric
trend a0 + a1 / mean (or the trimmed mean, as pydeseq2, where that fit fails); the prior width from the
data; MAP dispersions; the NB GLM by IRLS; Wald (normal) or likelihood-ratio (chi^2, 1 df) test of one
coefficient; Benjamini-Hochberg over the genes with counts.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probgex.choices import DE_TESTS
from probgex.power import dispersion as disp
from probgex.power import nbglm

TESTS = DE_TESTS


class DEResult(NamedTuple):
    """Per-gene results (G,) of one experiment (a leading experiment axis after `deseq_batch`)."""

    base_mean: jax.Array
    lfc: jax.Array  # the tested coefficient, natural log
    lfc_se: jax.Array
    stat: jax.Array  # Wald z or LRT chi^2
    pvalue: jax.Array
    padj: jax.Array
    dispersion: jax.Array  # final (MAP or outlier gene-wise)
    genewise: jax.Array
    trend: jax.Array  # (2,) a0, a1
    prior_var: jax.Array
    size_factors: jax.Array  # (N,)


def _first_means(y, X, sf, lin_mu: bool, max_disp: float):
    """Fitted means used for the dispersion estimates: linear model on normalised counts (one row
    pattern per coefficient) or an NB GLM with DESeq2's rough dispersions."""
    if lin_mu:
        hat = X @ nbglm.spd_inv(X.T @ X) @ X.T  # (N, N)
        return jnp.maximum(sf[:, None] * (hat @ (y / sf[:, None])), nbglm.MIN_MU)
    return nbglm.irls(y, X, sf, disp.start_dispersion(y, X, sf, max_disp))[1]


def _deseq(y: jax.Array, X: jax.Array, *, coef: int, test: str = "wald", lin_mu: bool = True,
          n_iter: int = 30) -> DEResult:
    """The DE test of design column `coef` on one experiment: y (N, G) counts, X (N, P) design."""
    N, P = X.shape
    y = y.astype(jnp.float32)
    X = X.astype(jnp.float32)
    max_disp = float(max(10, N))
    nonzero = y.sum(0) > 0
    sf = nbglm.size_factors(y)
    base_mean = (y / sf[:, None]).mean(0)

    mu0 = _first_means(y, X, sf, lin_mu, max_disp)
    log_gw = disp.genewise_log_alpha(y, mu0, X, sf, max_disp)
    gw = jnp.exp(log_gw)
    trend = disp.fit_trend(gw, base_mean, nonzero)
    log_trend = jnp.log(trend[0] + trend[1] / jnp.where(nonzero, base_mean, 1.0))
    prior_var, sq = disp.prior_variance(log_gw, log_trend, nonzero, N, P)
    log_map = disp.fit_log_alpha(y, mu0, X, max_disp, prior=(log_trend, prior_var))
    alpha = disp.final_dispersion(log_gw, log_map, log_trend, sq)

    beta, mu = nbglm.irls(y, X, sf, alpha, n_iter)
    cov = nbglm.coef_covariance(X, mu, alpha)
    lfc, se = beta[:, coef], jnp.sqrt(cov[:, coef, coef])
    if test == "wald":
        stat = lfc / se
        pvalue = jax.scipy.special.erfc(jnp.abs(stat) / jnp.sqrt(2.0))
    else:
        Xr = jnp.delete(X, coef, axis=1, assume_unique_indices=True)
        _, mu_r = nbglm.irls(y, Xr, sf, alpha, n_iter)
        stat = jnp.maximum(2.0 * nbglm.loglik_ratio(y, mu, mu_r, alpha), 0.0)
        pvalue = jax.scipy.special.erfc(jnp.sqrt(stat / 2.0))
    nan = jnp.nan
    keep = lambda a: jnp.where(nonzero, a, nan)  # noqa: E731
    pvalue = keep(pvalue)
    return DEResult(base_mean, keep(lfc), keep(se), keep(stat), pvalue, nbglm.benjamini_hochberg(pvalue),
                    keep(alpha), keep(gw), trend, prior_var, sf)


deseq = jax.jit(_deseq, static_argnames=("coef", "test", "lin_mu", "n_iter"))


@partial(jax.jit, static_argnames=("coef", "test", "lin_mu", "n_iter"))
def _deseq_vmapped(y, X, *, coef, test, lin_mu, n_iter):
    return jax.vmap(lambda yy: _deseq(yy, X, coef=coef, test=test, lin_mu=lin_mu, n_iter=n_iter))(y)


def one_pattern_per_coef(X: np.ndarray) -> bool:
    """Whether the design has as many distinct rows as columns (DESeq2's linear-model first means)."""
    return len(np.unique(np.asarray(X), axis=0)) == X.shape[1]


def deseq_batch(y: jax.Array, X: np.ndarray, *, coef: int, test: str = "wald", n_iter: int = 30) -> DEResult:
    """`deseq` over a leading axis of experiments, y (E, N, G), all with the design X (N, P)."""
    return _deseq_vmapped(jnp.asarray(y), jnp.asarray(X, jnp.float32), coef=coef, test=test,
                          lin_mu=one_pattern_per_coef(X), n_iter=n_iter)


def _check_contrast(contrast, obs) -> tuple[str, str, str]:
    from probgex.errors import DataError, SpecError

    if not (isinstance(contrast, tuple | list) and len(contrast) == 3 and all(isinstance(c, str) for c in contrast)):
        raise SpecError(f"contrast must be (column, level, reference) as three strings, e.g. "
                        f"('strain', 'Snf2', 'WT'); got {contrast!r}")
    col, level, ref = contrast
    if col not in obs.columns:
        raise DataError(f"contrast column {col!r} is not in obs; available columns: {list(obs.columns)[:20]}")
    seen = sorted({str(v) for v in obs[col].dropna().unique()})
    for what, lv in (("level", level), ("reference", ref)):
        if lv not in seen:
            raise DataError(f"contrast {what} {lv!r} does not occur in obs[{col!r}]; its levels are {seen}")
    if level == ref:
        raise SpecError(f"contrast level and reference are both {level!r}; name two different levels")
    return col, level, ref


def de_table(res: DEResult, genes, test: str):
    """The pandas table of one experiment's results (p-values recomputed in float64 from the statistic,
    so that very small ones do not underflow)."""
    import pandas as pd
    from scipy import stats

    stat = np.asarray(res.stat, np.float64)
    p = 2 * stats.norm.sf(np.abs(stat)) if test == "wald" else stats.chi2.sf(stat, 1)
    out = pd.DataFrame({"baseMean": np.asarray(res.base_mean, np.float64),
                        "log2FoldChange": np.asarray(res.lfc, np.float64) / np.log(2),
                        "lfcSE": np.asarray(res.lfc_se, np.float64) / np.log(2), "stat": stat,
                        "pvalue": p, "padj": bh_numpy(p),
                        "dispersion": np.asarray(res.dispersion, np.float64)},
                       index=pd.Index(np.asarray(genes, dtype=str), name="gene"))
    out.attrs.update(test=test, size_factors=np.asarray(res.size_factors).tolist(),
                     trend=np.asarray(res.trend).tolist(), prior_var=float(res.prior_var))
    return out


def bh_numpy(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg in float64 over the non-NaN p-values (NaN stays NaN)."""
    p = np.asarray(p, np.float64)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        from scipy.stats import false_discovery_control

        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def de_test(adata, formula: str, contrast: tuple[str, str, str], *, test: str = "wald",
            layer: str | None = None):
    """DESeq2-style NB GLM test of `contrast` = (column, level, reference) on an AnnData's raw counts.

    `formula` must contain the contrast column as a factor (other covariates are adjusted for).
    Returns a DataFrame indexed by gene: baseMean, log2FoldChange (level vs reference), lfcSE, stat
    (Wald z, or the LRT chi^2 with 1 df), pvalue, padj (Benjamini-Hochberg), dispersion (the final NB
    dispersion). Genes with no counts get NaN, as in DESeq2. No Cook's-distance outlier handling and no
    independent filtering (pydeseq2 with cooks_filter=False, independent_filter=False is the match).
    """
    import anndata
    import pandas as pd

    from probgex.data import from_anndata
    from probgex.errors import DataError, SpecError

    if test not in TESTS:
        raise SpecError(f"test={test!r} is not one of {list(TESTS)}")
    if not isinstance(adata, anndata.AnnData):
        raise DataError(f"expected an AnnData with raw counts, got {type(adata).__name__}")
    col, level, ref = _check_contrast(contrast, adata.obs)
    obs = adata.obs.copy()
    others = [lv for lv in sorted({str(v) for v in obs[col].dropna().unique()}) if lv != ref]
    obs[col] = pd.Categorical(obs[col].astype(str), categories=[ref, *others])
    if layer is not None and layer not in adata.layers:
        raise DataError(f"layer {layer!r} not found in adata.layers; available: {list(adata.layers.keys())}")
    view = anndata.AnnData(X=adata.X if layer is None else adata.layers[layer], obs=obs,
                           var=pd.DataFrame(index=adata.var_names))
    data = from_anndata(view, formula, likelihood="nb", empty="keep")
    name = f"{col}[T.{level}]"
    if name not in data.encoding.columns:
        raise SpecError(f"the formula {formula!r} has no column {name!r}; include {col!r} as a factor "
                        f"(e.g. '~ {col}'); its columns are {list(data.encoding.columns)}")
    N, P = data.design.shape
    if np.linalg.matrix_rank(data.design) < P:
        raise DataError(f"the design of {formula!r} is not of full rank on these samples; drop confounded "
                        "or empty terms")
    if N <= P:
        raise DataError(f"{N} samples for {P} coefficients: dispersions need replicates (more samples "
                        "than design columns)")
    y = data.rows(np.arange(N))
    if (y.sum(1) == 0).any():
        raise DataError(f"{int((y.sum(1) == 0).sum())} sample(s) have no counts; drop them before testing")
    if not (y > 0).all(0).any():
        raise DataError("no gene has a positive count in every sample, so median-of-ratios size factors "
                        "are undefined; drop near-empty samples, or for single cells sum them per subject first "
                        "(pg.power.pseudobulk)")
    res = deseq(jnp.asarray(y), jnp.asarray(data.design), coef=data.encoding.columns.index(name), test=test,
                lin_mu=one_pattern_per_coef(data.design))
    return de_table(res, data.var_names, test)
