"""Leave-2-samples-out splits of bulk data with a chosen number of residual degrees of freedom, the
DESeq2 plug-in NB predictive (pydeseq2) on the same split, and the scores of issue 13 (randomized PIT
coverage over genes with test mean >= 5, by decile, per gene, held-out log predictive density).

Used by benchmarks/calibration_everywhere.py; kept apart so each piece can be run on one split.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

LEVELS = (0.5, 0.8, 0.9, 0.95)
MIN_TEST_MEAN = 5.0


def design_columns(obs: pd.DataFrame, formula: str) -> np.ndarray:
    from formulaic import model_matrix
    return np.asarray(model_matrix(formula, obs), float)


def bulk_split(adata: ad.AnnData, formula: str, df: int, seed: int, n_test: int = 2
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, test) obs positions: `n_test` random test samples and P + df training samples from the
    rest, such that the training design has full rank P and every level the test samples carry is in
    training. None if no such split is found in 500 tries."""
    rng = np.random.default_rng(seed)
    n = adata.n_obs
    X_all = design_columns(adata.obs, formula)
    P = X_all.shape[1]
    factors = [c for c in adata.obs.columns if c in formula]
    for _ in range(500):
        test = rng.choice(n, n_test, replace=False)
        rest = np.setdiff1d(np.arange(n), test)
        if len(rest) < P + df:
            return None
        train = np.sort(rng.choice(rest, P + df, replace=False))
        if np.linalg.matrix_rank(X_all[train]) < P:
            continue
        ok = all(set(adata.obs[c].iloc[test]) <= set(adata.obs[c].iloc[train]) for c in factors)
        if ok:
            return train, np.sort(test)
    return None


def expressed(adata: ad.AnnData, train: np.ndarray) -> np.ndarray:
    """Genes with a positive count in at least one training sample (a fit needs them non-empty)."""
    x = np.asarray(adata.X[train].todense() if hasattr(adata.X, "todense") else adata.X[train])
    return x.sum(0) > 0


def deseq_plugin(train: ad.AnnData, test: ad.AnnData, formula: str, rng: np.random.Generator,
                 size_factors: str = "ratio"):
    """pydeseq2 0.5.4 on the training samples (Cook's refit off); the held-out samples get
    size factors against the training geometric means by the same rule (`size_factors`: "ratio", the
    median of ratios, for bulk; "poscounts", DESeq2's rule for single-cell data where every gene has
    zeros), mean s_n exp(x_n' beta) and the MAP dispersion: a plug-in NB. Returns (pit, log p) per
    (test sample, gene) and the trend (a0, a1) and prior sd of log dispersions."""
    from pydeseq2.dds import DeseqDataSet
    dense = lambda x: np.asarray(x.todense() if hasattr(x, "todense") else x)  # noqa: E731
    counts = pd.DataFrame(dense(train.X).astype(np.int64), index=train.obs_names, columns=train.var_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=train.obs.copy(), design=formula, refit_cooks=False,
                           quiet=True, n_cpus=1, size_factors_fit_type=size_factors)
        dds.deseq2()
    beta = np.asarray(dds.varm["LFC"], float)  # natural-log coefficients (genes, P), design columns as dds
    disp = np.asarray(dds.var["dispersions"], float)
    cols = list(dds.obsm["design_matrix"].columns)
    from formulaic import model_matrix
    both = model_matrix(formula, pd.concat([train.obs, test.obs]))  # the training levels
    assert list(both.columns) == cols, (list(both.columns), cols)
    Xt = np.asarray(both, float)[train.n_obs:]
    keep, logmeans = np.asarray(dds.filtered_genes), np.asarray(dds.logmeans)

    def raw_factors(y):  # median of ratios against the training log geometric means (zeros skipped)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(y[:, keep] > 0, np.log(y[:, keep]) - logmeans[keep], np.nan)
        return np.exp(np.nanmedian(r, 1))

    ytr = dense(train.X).astype(float)
    # poscounts rescales the training factors to geometric mean 1; the same constant for held-out samples
    scale = np.exp(np.mean(np.log(raw_factors(ytr)))) if size_factors == "poscounts" else 1.0
    assert np.allclose(raw_factors(ytr) / scale, dds.obs["size_factors"], rtol=1e-5)
    yte = dense(test.X).astype(float)
    sf = raw_factors(yte) / scale
    mu = sf[:, None] * np.exp(Xt @ beta.T)
    pit, logp = nb_pit_logp(yte, mu, 1.0 / disp[None], rng)
    trend = dds.uns["trend_coeffs"] if "trend_coeffs" in dds.uns else [dds.uns["mean_disp"], 0.0]  # its fallback
    info = {"trend": [float(c) for c in np.asarray(trend)],
            "prior_sd": float(np.sqrt(dds.uns["prior_disp_var"]))}
    return pit, logp, info


def nb_pit_logp(y: np.ndarray, mu: np.ndarray, theta: np.ndarray, rng: np.random.Generator):
    """Randomized PIT and log pmf of counts y under NB(mean mu, size theta) (scipy)."""
    p = theta / (theta + mu)
    below = stats.nbinom.cdf(y - 1, theta, p)
    at = stats.nbinom.pmf(y, theta, p)
    return below + rng.uniform(size=y.shape) * at, stats.nbinom.logpmf(y, theta, p)


def coverage(pit: np.ndarray, levels=LEVELS) -> np.ndarray:
    return np.array([np.mean(np.abs(pit - 0.5) <= lv / 2) for lv in levels])


def scores(pit: np.ndarray, logp: np.ndarray, decile_key: np.ndarray, genes: np.ndarray) -> dict:
    """Row scores from entries (flattened over splits): pooled coverage, the worst decile's largest
    deviation from nominal (deciles of `decile_key`, the gene's training mean: not the outcome), the share of
    genes whose 90% coverage over their entries is within 3 binomial SE, and the mean log p per entry."""
    cov = coverage(pit)
    edges = np.quantile(decile_key, np.linspace(0, 1, 11)[1:-1])
    dec = np.searchsorted(edges, decile_key, side="right")
    by_dec = np.array([coverage(pit[dec == k]) for k in range(10) if (dec == k).any()])
    worst = float(np.max(np.abs(by_dec - np.asarray(LEVELS)[None])))
    df = pd.DataFrame({"g": genes, "in": np.abs(pit - 0.5) <= 0.45})
    per = df.groupby("g")["in"].agg(["mean", "size"])
    se = np.sqrt(0.9 * 0.1 / per["size"])
    within = float(np.mean(np.abs(per["mean"] - 0.9) <= 3 * se))
    return {"coverage": [round(float(c), 4) for c in cov], "worst_decile_dev": round(worst, 4),
            "by_decile": by_dec.round(3).tolist(), "genes_within_3se": round(within, 4),
            "lpd_per_entry": round(float(np.mean(logp)), 4), "n_entries": int(pit.size)}
