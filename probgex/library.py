"""Median-of-ratios library sizes (`ModelSpec(library="size_factors")`), for bulk RNA-seq.

The total count of a sample is a poor library size when a few very highly expressed genes change
between samples (composition): every other gene then looks shifted in that sample, and a per-gene
dispersion absorbs the shift as noise. DESeq2's median-of-ratios size factor (Anders & Huber 2010) is
robust to that. Here it is put on the read scale, so library sizes still mean "reads":

    log l_n = median over reference genes g with y_ng > 0 of (log y_ng - r_g),
    r_g = mean over training samples of log y_ng - mean over training samples of log(total_n),

with reference genes those with a positive count in every training sample. A new sample is scaled
against the same reference (its zero counts are skipped), so held-out observations get library sizes
on the training scale. Plain NumPy, no JAX.
"""

from __future__ import annotations

import numpy as np

from probgex.errors import DataError

_BLOCK = 1024
BULK_SHARE = 0.25  # library="auto": size factors when this share of the expressed genes is in the reference
MIN_REFERENCE = 100  # ... and at least this many genes are


def choose(data, rows: np.ndarray) -> str:
    """What library="auto" means for these training observations: "size_factors" when the counts look
    like bulk RNA-seq, i.e. at least BULK_SHARE of the genes with any count (and MIN_REFERENCE genes)
    have a positive count in every training observation, so that the median-of-ratios reference is
    broad; "observed" (total counts) otherwise. On the data sets of this project's benchmarks the share
    is 0.34-0.93 for bulk (TCGA lowest: heterogeneous tumours) and 0.000-0.084 for single-cell UMI
    counts (Ziegenhain's 32-42 deep cells highest), so the rule separates them with a wide margin.
    """
    rows = np.asarray(rows)
    positive, any_count = np.ones(data.n_genes, bool), np.zeros(data.n_genes, bool)
    for y in _blocks(data, rows):
        positive &= (y > 0).all(0)
        any_count |= (y > 0).any(0)
    n_ref = int(positive.sum())
    bulk = n_ref >= MIN_REFERENCE and n_ref >= BULK_SHARE * max(int(any_count.sum()), 1)
    return "size_factors" if bulk else "observed"


def _blocks(data, rows: np.ndarray):
    for s in range(0, len(rows), _BLOCK):
        yield data.rows(rows[s : s + _BLOCK]).astype(np.float64)


def reference(data, rows: np.ndarray) -> np.ndarray:
    """Per-gene log reference r_g (G,) from the observations `rows` (NaN for genes with a zero count in
    any of them)."""
    rows = np.asarray(rows)
    log_sum, log_total, positive = np.zeros(data.n_genes), 0.0, np.ones(data.n_genes, bool)
    for y in _blocks(data, rows):
        positive &= (y > 0).all(0)
        with np.errstate(divide="ignore"):
            log_sum += np.where(y > 0, np.log(y), 0.0).sum(0)
        log_total += np.log(np.maximum(y.sum(1), 1.0)).sum()
    if positive.sum() < 10:
        raise DataError(
            f"library='size_factors' needs genes with a positive count in every training observation (the "
            f"median-of-ratios reference); only {int(positive.sum())} of {data.n_genes} genes have one. "
            "Size factors are for bulk data; for single-cell counts use library='observed'")
    return np.where(positive, log_sum / len(rows) - log_total / len(rows), np.nan)


def sizes(data, ref: np.ndarray) -> np.ndarray:
    """Library sizes (n_obs,) of every observation of `data` against the reference `ref`."""
    ref = np.asarray(ref, np.float64)
    if ref.shape != (data.n_genes,):
        raise DataError(f"the size-factor reference has {ref.size} genes, the data {data.n_genes}")
    use = np.isfinite(ref)
    out = []
    for start, y in zip(range(0, data.n_obs, _BLOCK), _blocks(data, np.arange(data.n_obs)), strict=True):
        with np.errstate(divide="ignore"):
            ratio = np.where(y[:, use] > 0, np.log(y[:, use]) - ref[use], np.nan)
        empty = np.isnan(ratio).all(1)
        if empty.any():
            first = data.obs.index[start + int(np.flatnonzero(empty)[0])]
            raise DataError(f"observation {first!r} has no count in any of the {int(use.sum())} reference genes "
                            "of the size factors; drop it or use library='observed'")
        out.append(np.exp(np.nanmedian(ratio, axis=1)))
    return np.concatenate(out)


def draw_training(rng: np.random.Generator, loc: float, scale: float, shape) -> np.ndarray:
    """Library sizes for profiles predicted from metadata alone: draws from the log-normal of the training
    library sizes that a fit stores (`Dims.lib_loc`, `Dims.lib_scale`: the mean and sd of their logs)."""
    return np.exp(rng.normal(loc, scale, shape))
