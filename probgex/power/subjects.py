"""Single-cell power in subjects per group: pseudobulk a pilot, fit the NB GLM on its subjects, and
simulate pseudobulk experiments of n subjects per group with a chosen number of cells per subject.

A subject's pseudobulk is a sum over its cells, so its expected library is the number of cells times
the UMIs per cell; the fitted dispersion is that of subject sums, which carries the between-subject
variation. More cells per subject raise the library (so the Poisson part of the noise shrinks), never
the number of replicates: the power curve's n is subjects per group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from probgex.errors import DataError, SpecError
from probgex.power.pseudobulk import _fmt, pseudobulk, select_cells


def _subject_level(adata, formula: str, contrast, subject: str, idx: np.ndarray) -> None:
    """Every variable of the formula (and the contrast column) must be constant within each subject."""
    from probgex.data import _formula_variables

    obs = adata.obs.iloc[idx]
    if not (isinstance(contrast, tuple | list) and len(contrast) == 3 and all(isinstance(c, str) for c in contrast)):
        raise SpecError(f"contrast must be (column, level, reference) as three strings, got {contrast!r}")
    used = _formula_variables(formula, obs)
    if contrast[0] not in used:
        raise SpecError(f"the formula {formula!r} does not use the contrast column {contrast[0]!r}")
    subj = obs[subject].astype(str)
    for v in used:
        k = obs[v].groupby(subj.to_numpy(), sort=False).nunique(dropna=False)
        bad = list(k.index[k > 1])
        if bad:
            raise SpecError(f"column {v!r} varies within subject(s) {_fmt(bad)}: a pseudobulk test needs a "
                            "design at subject level (every cell of a subject in one group); use a per-subject "
                            "column, or split such subjects into one subject per level")


def pseudobulk_curve(adata, formula: str, contrast: tuple[str, str, str], *, subject: str, key,
                     cell_type=None, cells_per_subject: int | None = None, min_cells: int = 10,
                     n_per_group: Sequence[int] = (3, 5, 10), layer: str | None = None, fit_seed: int = 0,
                     max_epochs: int = 1500, progress: bool = False, **curve_kwargs) -> xr.Dataset:
    """Power curve of a single-cell study in subjects per group: `pseudobulk` the cells (all of them,
    or one cell type: `cell_type=(column, level)`), fit `pg.Model(formula, likelihood="nb", library="observed")` on the
    subjects (all of them, no held-out set), then `curve` with each simulated subject's library
    `cells_per_subject` x the pilot's UMIs per cell (default: the pilot's own pseudobulk libraries) and,
    unless `depth_sd` is passed, the spread across subjects of their log mean UMIs per cell. The UMIs per
    cell are each subject's mean (its library over its cells: the expected sum of c cells is c times
    the mean, which a per-cell median would understate for skewed cell sizes), geometric-averaged over
    the subjects, as `curve`'s libraries are log-normal around `depth`. Genes with no count in any
    subject are dropped. Other options go to `curve`.
    Returns curve's Dataset, its attrs also naming the unit (subjects), cells per subject and pilot."""
    from probgex.fit import Model
    from probgex.power.curve import curve

    if isinstance(cell_type, str):
        raise SpecError(f"a power curve is for one cell type: pass cell_type=({cell_type!r}, level) or None")
    if cells_per_subject is not None and (isinstance(cells_per_subject, bool) or
                                          not isinstance(cells_per_subject, int | np.integer) or cells_per_subject < 1):
        raise SpecError(f"cells_per_subject must be a positive integer, got {cells_per_subject!r}")
    if key is None:
        raise SpecError("pass key=: a PRNG key or an int seed, e.g. key=jax.random.PRNGKey(0) or key=0")
    if "depth" in curve_kwargs:
        raise SpecError("depth is set here by cells_per_subject (cells x the pilot's UMIs per cell); pass that")
    idx, _, _ = select_cells(adata.obs, subject, cell_type)
    _subject_level(adata, formula, contrast, subject, idx)
    pb = pseudobulk(adata, subject, cell_type=cell_type, min_cells=min_cells, layer=layer)
    total = pb.X.sum(1).astype(np.float64)
    if (total == 0).any():
        raise DataError(f"subject(s) {_fmt(list(pb.obs_names[total == 0]))} have no counts in the selected cells")
    pb = pb[:, pb.X.sum(0) > 0].copy()
    log_umi = np.log(total / pb.obs["n_cells"].to_numpy())  # log mean UMIs per cell of each subject
    umi = float(np.exp(log_umi.mean()))
    if cells_per_subject is not None:
        curve_kwargs["depth"] = cells_per_subject * umi
        curve_kwargs.setdefault("depth_sd", float(np.std(log_umi, ddof=1)) if log_umi.size > 1 else 0.0)
    # total counts as libraries: the simulated depth is defined by UMIs (per cell x cells per subject)
    fit = Model(formula, likelihood="nb", library="observed").fit(pb, seed=fit_seed, holdout=0.0,
                                                                  max_epochs=max_epochs, progress=progress)
    ds = curve(fit, tuple(contrast), n_per_group, key=key, progress=progress, **curve_kwargs)
    ds.attrs.update(unit="subjects per group", subject=subject,
                    cell_type="all cells" if cell_type is None else f"{cell_type[0]}={cell_type[1]}",
                    cells_per_subject=float(cells_per_subject) if cells_per_subject is not None
                    else float(np.median(pb.obs["n_cells"])),
                    depth_from="cells_per_subject x UMIs per cell" if cells_per_subject is not None
                    else "the pilot's pseudobulk libraries",
                    umi_per_cell=umi, pilot_subjects=pb.obs_names.tolist(),
                    pilot_cells=pb.obs["n_cells"].astype(int).tolist(), n_genes_pilot=int(pb.n_vars))
    return ds

