"""Proper scores and interval coverage of count predictions, per entry, from PIT values or samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from probgex.inference.predictive import inside


def coverage_table(u: np.ndarray, levels: Sequence[float], gene_decile: np.ndarray) -> dict:
    """Coverage of central intervals from PIT values u (obs, gene): pooled (L,), per gene (L, G),
    by decile of the genes' expression (10, L), and the share of genes within 3 binomial standard
    errors of nominal (L,)."""
    n = u.shape[0]
    per_gene = np.stack([inside(u, a).mean(0) for a in levels])
    pooled = per_gene.mean(1)
    by_decile = np.array([[per_gene[i, gene_decile == d].mean() if np.any(gene_decile == d) else np.nan
                           for i in range(len(levels))] for d in range(10)])
    se = np.sqrt(np.array(levels) * (1 - np.array(levels)) / n)[:, None]
    within = (np.abs(per_gene - np.array(levels)[:, None]) <= 3 * se).mean(1)
    return {"pooled": pooled, "per_gene": per_gene, "by_decile": by_decile, "genes_within_3se": within}


def crps_from_samples(samples: np.ndarray, y: np.ndarray, *, is_sorted: bool = False) -> np.ndarray:
    """Sample estimate of the CRPS (= the ranked probability score for counts) per entry:
    E|X - y| - E|X - X'| / 2, with E|X - X'| from the sorted samples. samples (S, ...), y (...)."""
    s = (samples if is_sorted else np.sort(samples, axis=0)).astype(np.float64)
    S = s.shape[0]
    w = (2 * np.arange(1, S + 1) - S - 1).reshape((S,) + (1,) * (s.ndim - 1))
    spread = 2 * (w * s).sum(0) / S**2
    return np.abs(s - y[None]).mean(0) - spread / 2


def interval_score(lower: np.ndarray, upper: np.ndarray, y: np.ndarray, level: float) -> np.ndarray:
    """Gneiting and Raftery (2007) interval score of a central interval (smaller is better)."""
    alpha = 1 - level
    return (upper - lower) + 2 / alpha * np.maximum(lower - y, 0) + 2 / alpha * np.maximum(y - upper, 0)


def sample_pit(samples: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomized PIT from predictive samples (S, ...): (#{x < y} + V #{x = y}) / S."""
    below = (samples < y[None]).mean(0)
    equal = (samples == y[None]).mean(0)
    return below + rng.uniform(size=np.shape(y)) * equal

