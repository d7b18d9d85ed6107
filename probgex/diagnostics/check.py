"""`check(fit, heldout)`: calibration and posterior predictive checks of a fitted model on held-out
observations, predicting from their metadata (and library sizes) only."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
from rich.progress import Progress

from probgex import rng as streams
from probgex.diagnostics import pit as pitmod
from probgex.errors import DataError, SpecError
from probgex.diagnostics.ppc import Summaries, gene_programs
from probgex.diagnostics.report import Report
from probgex.diagnostics.scores import coverage_table, crps_from_samples, interval_score, sample_pit
from probgex.inference.predictive import check_levels, deciles, inside, sorted_intervals

LEVELS = (0.5, 0.8, 0.9, 0.95)


def _top_genes(data, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k genes of `data` with the largest variance not explained by the design, and the
    correlation matrix of those residuals: log1p of counts scaled to the median library size, least-
    squares residuals on the design matrix. (On raw log1p counts every gene correlates through the
    library size, and genes that share a metadata effect correlate through it; the predictive already
    conditions on both, so a program chosen that way tests little.)"""
    n, G = data.n_obs, data.n_genes
    X = np.asarray(data.design, np.float64)
    scale = np.median(data.library_size) / np.maximum(data.library_size, 1e-12)
    xtx, xty, yty = X.T @ X, np.zeros((X.shape[1], G)), np.zeros(G)
    for s in range(0, n, 1024):
        rows = np.arange(s, min(s + 1024, n))
        y = np.log1p(data.rows(rows) * scale[rows, None])
        xty += X[rows].T @ y
        yty += (y**2).sum(0)
    coef = np.linalg.pinv(xtx) @ xty
    resid_var = (yty - np.einsum("pg,pg->g", xty, coef)) / n
    top = np.sort(np.argsort(-resid_var)[:k])
    y = np.log1p(np.concatenate([data.rows(np.arange(s, min(s + 1024, n)))[:, top] for s in range(0, n, 1024)])
                 * scale[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(y - X @ coef[:, top], rowvar=False)
    return top, corr


def check(fit, heldout, *, n_samples: int = 200, levels: Sequence[float] = LEVELS, seed=0,
          n_top_genes: int = 50, program_size: int = 20, n_random_programs: int = 5,
          reference=None, progress: bool = True, workers: int | None = None) -> Report:
    """Calibration of `fit` on the held-out AnnData `heldout` (raw counts, metadata in obs).

    Per entry: randomized PIT from the exact predictive CDF (a mixture over `n_samples` parameter
    draws), CRPS and interval scores from one predictive count sample per draw. Pooled and per gene:
    coverage of central intervals, PIT uniformity against simultaneous ECDF bands. Summary statistics
    of observed vs replicated data, gene-gene correlation, joint calibration of gene-program sums,
    and the log predictive density per observation. Nothing of size draws x obs x genes is kept.

    Gene programs (the `program_size` most correlated of the `n_top_genes` most variable genes, both
    on library-normalized log1p counts net of the design's effects) and the genes of the correlation
    check are chosen on `reference` (an AnnData, typically the training
    data) when given, else on `heldout` itself. Choosing them on the held-out data selects the genes
    whose sums happen to vary most there, which makes even a correct model's program intervals look
    too narrow; pass the training data for an unbiased joint-calibration test.

    Blocks of observations are scored on `workers` threads (default: the CPU count, at most 4; NumPy
    and SciPy release the GIL in the heavy loops); each block has its own random stream
    (`probgex.rng.host_rng(seed, "blocks", block)`), so results depend on `seed` (an int or a JAX key)
    only, not on `workers`.
    """
    from probgex import _memory
    from probgex.fit import check_n_samples

    n_samples = check_n_samples(n_samples)
    levels = check_levels(levels)
    n_workers = _workers(workers)
    data = fit.data(heldout)
    n, G = data.n_obs, data.n_genes
    if n < 2:
        raise DataError(f"the held-out data have {n} observation after dropping empty ones; calibration needs "
                        "several (PIT histograms, coverage per gene): pass more held-out observations")
    _memory.require(_memory.draws_bytes(n_samples, n, G, len(levels), False),
                    f"checking with {n_samples} draws on {n} observations x {G} genes",
                    "lower the number of draws (--n-samples / n_samples=)")
    rng = streams.host_rng(seed, "programs")
    top, corr = _top_genes(data if reference is None else fit.data(reference), min(n_top_genes, G))
    programs = gene_programs(top, corr, G, program_size, n_random_programs, rng)
    acc = Summaries(n, G, n_samples, top, programs)
    u = np.empty((n, G), np.float32)
    mean = np.empty((n, G), np.float32)
    crps = np.empty((n, G), np.float32)
    iscore = np.zeros((len(levels), G))
    blocks = fit.predictive_blocks(data, n_samples, streams.stream(seed, "predictive"))
    with Progress(disable=not progress) as bar, ThreadPoolExecutor(n_workers) as pool:
        task = bar.add_task("check", total=n)
        pending: deque = deque()

        def collect():
            rows, y, fut = pending.popleft()
            u[rows], mean[rows], crps[rows], isc, x = fut.result()
            iscore[:] += isc
            acc.add(rows, y, x)
            bar.update(task, advance=len(rows))

        for i, (rows, d) in enumerate(blocks):
            y = data.rows(rows).astype(np.float64)
            block_rng = streams.host_rng(seed, "blocks", i)
            pending.append((rows, y, pool.submit(_score_block, d, y, block_rng, levels)))
            while len(pending) > n_workers:  # at most one block waiting beyond those scored
                collect()
        while pending:
            collect()
    gene_mean = mean.mean(0)
    decile = deciles(gene_mean)
    cov = coverage_table(u, levels, decile)
    lpd = fit.log_predictive_density(data, n_samples=min(n_samples, 100), seed=seed)
    prog_u = sample_pit(acc.rep_prog, acc.obs_prog, rng)
    genes_pass = pitmod.genes_inside_band(u)
    coords = {"obs": np.asarray(data.obs.index, dtype=str), "gene": np.asarray(fit.var_names, dtype=str),
              "level": list(levels), "decile": np.arange(1, 11), "program": list(programs)}
    per_entry = xr.Dataset(
        {"pit": (("obs", "gene"), u), "predicted_mean": (("obs", "gene"), mean), "crps": (("obs", "gene"), crps),
         "log_predictive_density": (("obs",), lpd.values),
         "coverage": (("level",), cov["pooled"]), "coverage_per_gene": (("level", "gene"), cov["per_gene"]),
         "coverage_by_decile": (("decile", "level"), cov["by_decile"]),
         "gene_decile": (("gene",), decile + 1), "gene_pit_inside_band": (("gene",), genes_pass),
         "interval_score": (("level", "gene"), iscore / n),
         "program_pit": (("obs", "program"), prog_u)},
        coords=coords, attrs={"model": repr(fit), "n_samples": n_samples})
    programs_table = {name: {"genes": [str(g) for g in fit.var_names[idx]],
                             "coverage": {str(a): float(np.mean(inside(prog_u[:, j], a))) for a in levels},
                             "uniformity": pitmod.uniformity(prog_u[:, j], n_grid=min(20, n))}
                      for j, (name, idx) in enumerate(programs.items())}
    return Report(fit=fit, data=data, results=per_entry, ppc=acc, ppc_table=acc.table(), programs=programs_table,
                  pit_pooled=pitmod.uniformity(u), seed=seed)


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, min(4, os.cpu_count() or 1))
    if not isinstance(workers, int | np.integer) or workers < 1:
        raise SpecError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


def _score_block(d, y: np.ndarray, rng: np.random.Generator, levels: Sequence[float]):
    """PIT, predictive mean, CRPS and summed interval scores of one block, and its predictive sample
    (S, b, G) for the summary statistics."""
    u = d.randomized_pit(y, rng)
    mean = d.mean()
    x = d.sample(rng)
    # int32 sorts about 2x faster than int64; counts beyond int32 keep int64
    xs = np.sort(x.astype(np.int32) if x.size and x.max() < 2**31 else x, axis=0)
    crps = crps_from_samples(xs, y, is_sorted=True)
    lo, hi = sorted_intervals(xs, levels)
    isc = np.stack([interval_score(lo[i], hi[i], y, a).sum(0) for i, a in enumerate(levels)])
    return u, mean, crps, isc, x
