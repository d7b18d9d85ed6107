"""What a pilot's choice of replicates leaves unknown: the level of all its dispersions at once.

Real replicates differ in quality (in the 86 clean yeast replicates the per-sample residual variance
ranges over a factor of ~10). A pilot of a few samples sees a few of them, so its dispersions are all
too low or all too high together: an error shared by every gene, which per-gene posterior intervals
average away (random 3-vs-3 yeast pilots: log median dispersion off the all-replicate value by sd 0.28,
while the posterior of the median moves by ~0.01). Power depends on that level, so a power interval
that ignores it covers the realized power far less often than it says.

`dispersion_level(pilot, formula, contrast)` measures it from the pilot itself, without a model of
sample quality: the delete-one jackknife of the log median DESeq2 dispersion (over the genes whose NB
excess dominates, alpha * mean >= 2), stratified by design cell (groups of samples sharing a design
row; a sample alone in its cell cannot be left out and adds nothing), as the standard error of the
pilot's dispersion level over draws of the pilot's samples. Leaving a sample out also shrinks its
cell's share of the pooled residual degrees of freedom, which damps the leave-one-out spread (by 2/3
for cells of 3: a 3-vs-3 simulation with log-normal sample quality, sd 0.6, gave a jackknife se of 0.13
against a true sd of 0.23); each cell's spread is scaled back by (d/D) / ((d-1)/(D-1)) (d its residual
degrees of freedom, D all of them). Cells need 3 samples for this (with 2, leaving one out leaves none). `with_level_uncertainty(truth, level)`
moves every dispersion of a draw by one shared factor exp(se * t), t from Student's t with the
jackknife's degrees of freedom (stratified quantiles, so that a few draws already span the
distribution), so the spread of per-draw powers, i.e. the power interval, carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from probgex.errors import DataError

MIN_EXCESS = 2.0  # alpha * mean: genes where the NB excess, not Poisson noise, sets the variance
MIN_GENES = 20


@dataclass(frozen=True)
class DispersionLevel:
    """The pilot's log median dispersion `log_level`, its jackknife standard error `se` with `df`
    degrees of freedom (`se_undamped`: the plain stratified jackknife, without the damping correction),
    the leave-one-out values `loo` (one per left-out sample, NaN where none) and the number of genes
    the median is over."""

    log_level: float
    se: float
    df: int
    loo: np.ndarray
    n_genes: int
    se_undamped: float


def _design_cells(X: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(np.round(X, 12), axis=0, return_inverse=True)
    return [np.flatnonzero(inverse.ravel() == k) for k in range(inverse.max() + 1)]


def dispersion_level(adata, formula: str, contrast: tuple[str, str, str]) -> DispersionLevel:
    """Jackknife standard error of the log median dispersion of a pilot (see the module doc)."""
    from probgex.data import from_anndata
    from probgex.power.de import de_test

    res = de_test(adata, formula, contrast)
    alpha, base = res["dispersion"].to_numpy(), res["baseMean"].to_numpy()
    use = np.isfinite(alpha) & (alpha * base >= MIN_EXCESS)
    if use.sum() < MIN_GENES:
        raise DataError(f"only {int(use.sum())} genes have counts high enough for their NB dispersion to "
                        f"dominate (alpha * mean >= {MIN_EXCESS}); the pilot's dispersion level needs at "
                        f"least {MIN_GENES}: sequence deeper or drop the replicate-level uncertainty")
    X = np.asarray(from_anndata(adata, formula, likelihood="nb", empty="keep").design, np.float64)
    N, P = X.shape
    log_level = float(np.log(np.median(alpha[use])))
    loo = np.full(N, np.nan)
    for i in range(N):
        rest = np.delete(np.arange(N), i)
        if np.linalg.matrix_rank(X[rest]) < P or N - 1 <= P:
            continue  # the sample is alone in its design cell (or no residual df would be left)
        a = de_test(adata[rest], formula, contrast)["dispersion"].to_numpy()
        loo[i] = np.log(np.nanmedian(a[use]))
    cells = [c for c in _design_cells(X) if np.isfinite(loo[c]).sum() >= 3]
    if not cells:
        raise DataError("no design cell has three samples that can be left out in turn; the pilot's "
                        "dispersion level needs at least 3 replicates sharing a design row (e.g. 3 vs 3)")
    D = sum(c.size - 1 for c in cells)
    var, var_plain, df = 0.0, 0.0, 0
    for cell in cells:
        vals = loo[cell]
        vals = vals[np.isfinite(vals)]
        d = vals.size - 1
        # leaving a sample out also lowers its cell's weight in the pooled estimate, d/D -> (d-1)/(D-1),
        # which damps the leave-one-out spread: undo that so the cell counts with its full weight
        damp = (d / D) / ((d - 1) / (D - 1))
        plain = d / vals.size * float(((vals - vals.mean()) ** 2).sum())
        var += damp**2 * plain
        var_plain += plain
        df += d
    return DispersionLevel(log_level, float(np.sqrt(var)), df, loo, int(use.sum()), float(np.sqrt(var_plain)))


def with_level_uncertainty(truth, level: DispersionLevel, rng: np.random.Generator):
    """`truth` with every dispersion of draw s times exp(se * t_s), t_s at stratified quantiles of
    Student's t with `level.df` degrees of freedom in random order."""
    from scipy import stats

    S = truth.n_draws
    u = (rng.permutation(S) + rng.uniform(size=S)) / S
    shift = level.se * stats.t.ppf(u, level.df)
    return replace(truth, alpha=truth.alpha * np.exp(shift)[:, None])
