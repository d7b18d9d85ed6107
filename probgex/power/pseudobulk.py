"""Pseudobulk: the summed raw counts of each subject (donor, sample), so that a single-cell study is
tested with subjects, not cells, as its replicates.

Cells of one subject share that subject's biological deviation from its group; treating them as
independent replicates counts that one deviation many times and calls null genes DE (see
tests/test_power_pseudobulk.py). Summing them gives one sample per subject whose between-subject
variation a NB GLM's dispersion absorbs, as DESeq2 on pseudobulk does (muscat's "sum" aggregation).

`pseudobulk(adata, subject, cell_type=...)`: one row per subject, or per subject x cell type;
`cell_type` is None (all cells), a column name (one row per subject x level of that column), or a
(column, level) pair (only the cells of that level). Checked before any JAX code runs; this module
does not import JAX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from probgex.errors import DataError, SpecError


def _fmt(values, k: int = 5) -> str:
    values = list(values)
    more = f", ... ({len(values) - k} more)" if len(values) > k else ""
    return "[" + ", ".join(repr(v) for v in values[:k]) + more + "]"


def _column(obs: pd.DataFrame, name, what: str) -> pd.Series:
    if not isinstance(name, str) or name not in obs.columns:
        raise DataError(f"{what} column {name!r} is not in obs; available columns: {_fmt(obs.columns, 20)}")
    col = obs[name]
    if col.isna().any():
        raise DataError(f"{what} column {name!r} has {int(col.isna().sum())} missing value(s); every cell "
                        "needs one: fill or drop those cells")
    return col.astype(str)


def select_cells(obs: pd.DataFrame, subject: str, cell_type) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The selected cells (indices into obs), their group labels (subject, or subject|type) and the
    cell-type column used for grouping (None when the rows are subjects only)."""
    subj = _column(obs, subject, "subject")
    if cell_type is None:
        return np.arange(len(obs)), subj.to_numpy(), None
    if isinstance(cell_type, str):
        ct = _column(obs, cell_type, "cell type")
        if cell_type == subject:
            raise SpecError(f"cell_type and subject are both {subject!r}; name two different columns")
        return np.arange(len(obs)), (subj + "|" + ct).to_numpy(), cell_type
    if not (isinstance(cell_type, tuple | list) and len(cell_type) == 2 and all(isinstance(c, str) for c in cell_type)):
        raise SpecError(f"cell_type must be None, an obs column name, or a (column, level) pair such as "
                        f"('cluster_id', 'B cells'); got {cell_type!r}")
    col, level = cell_type
    ct = _column(obs, col, "cell type")
    levels = sorted(set(ct))
    if level not in levels:
        raise DataError(f"cell type {level!r} does not occur in obs[{col!r}]; its levels are {_fmt(levels, 30)}")
    idx = np.flatnonzero(ct.to_numpy() == level)
    return idx, subj.to_numpy()[idx], None


def _counts(adata, layer: str | None, idx: np.ndarray, counts=None, memory_budget: int | None = None):
    """The selected cells' counts, validated: in memory, or a row source on disk (`probgex.rowsource`)
    when a backed / on-disk matrix would take more than the memory budget (validated in row chunks)."""
    from probgex.data import _as_matrix, validate_counts
    from probgex.rowsource import RowSource

    if counts is None and layer is not None and layer not in adata.layers:
        raise DataError(f"layer {layer!r} not found in adata.layers; available: {list(adata.layers.keys())}")
    x = counts if counts is not None else adata.X if layer is None else adata.layers[layer]
    name = getattr(counts, "label", None) or ("adata.X" if layer is None else f"adata.layers[{layer!r}]")
    if x is None:
        raise DataError(f"{name} is empty (None); store the raw counts there or pass layer=...")
    x = _as_matrix(x, name, memory_budget)
    x = x.take(rows=idx) if isinstance(x, RowSource) else x[idx]
    validate_counts(x, "nb", name=name)
    return x


def _sums(x, codes: np.ndarray, n_groups: int, chunk: int = 8192) -> np.ndarray:
    """Summed counts per group (codes: each row's group), in row chunks for counts on disk."""
    from probgex.rowsource import RowSource

    def agg(c):
        return sp.csr_matrix((np.ones(c.size), (c, np.arange(c.size))), shape=(n_groups, c.size))

    if not isinstance(x, RowSource):
        sums = agg(codes) @ x
        return np.asarray(sums.toarray() if sp.issparse(sums) else sums)
    sums = np.zeros((n_groups, x.shape[1]))
    for start in range(0, x.shape[0], chunk):
        part = agg(codes[start : start + chunk]) @ x.read(np.arange(start, min(start + chunk, x.shape[0])))
        sums += np.asarray(part.toarray() if sp.issparse(part) else part)
    return sums


def subject_metadata(obs: pd.DataFrame, codes: np.ndarray, order: list[str]) -> pd.DataFrame:
    """The obs columns constant within every group (`codes`: each cell's group; a missing value counts
    as a value), one row per group in `order`; categorical columns keep their observed categories."""
    first = np.unique(codes, return_index=True)[1]  # each group's first cell, groups in code order
    keep = {}
    for c in obs.columns:
        col = obs[c].reset_index(drop=True)
        if col.groupby(codes, sort=False).nunique(dropna=False).max() > 1:
            continue
        vals = col.iloc[first]
        if isinstance(vals.dtype, pd.CategoricalDtype):
            vals = vals.cat.remove_unused_categories()
        keep[c] = vals.to_numpy() if not isinstance(vals.dtype, pd.CategoricalDtype) else vals.array
    return pd.DataFrame(keep, index=pd.Index(order))


def pseudobulk(adata, subject: str, *, cell_type=None, min_cells: int = 10, layer: str | None = None,
               memory_budget: int | None = None):
    """Summed raw counts per subject (or per subject x cell type): an AnnData with X the integer sums
    (dense int64), obs the metadata constant within each row's cells plus `n_cells`, var = adata.var.

    `subject`: the obs column naming each cell's subject (donor or sample); `cell_type`: None (all
    cells), an obs column (one row per subject x its level) or a (column, level) pair (that level's cells
    only); every row needs at least `min_cells` cells (a DataError names the ones short of it).
    Accepts dense or sparse (CSR/CSC) counts in adata.X or `layer`; `adata` may also be the path of an
    .h5ad file or a .zarr store (or a backed AnnData), whose counts are then summed in row chunks from disk
    when they exceed the memory budget (`probgex.rowsource`)."""
    import anndata

    counts = None
    if isinstance(adata, str | Path):  # an .h5ad file or .zarr store: counts summed in row chunks from disk
        from probgex.data import check_store
        from probgex.rowsource import open_anndata

        adata, counts = open_anndata(check_store(adata), layer=layer)
    if not isinstance(adata, anndata.AnnData):
        raise DataError(f"expected an AnnData of raw counts, got {type(adata).__name__}")
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 1:
        raise SpecError(f"min_cells must be a positive integer, got {min_cells!r}")
    obs = adata.obs
    idx, labels, type_col = select_cells(obs, subject, cell_type)
    if idx.size == 0:
        by = "" if cell_type is None else f" by cell_type={cell_type!r}"
        raise DataError(f"no cells selected{by}: adata has {adata.n_obs} cells")
    x = _counts(adata, layer, idx, counts, memory_budget)
    order = list(pd.unique(labels))
    codes = pd.Categorical(labels, categories=order).codes
    n_cells = np.bincount(codes, minlength=len(order))
    short = [(g, int(k)) for g, k in zip(order, n_cells) if k < min_cells]
    if short:
        what = "subject x cell type" if type_col else "subject"
        raise DataError(f"{len(short)} {what} row(s) have fewer than min_cells={min_cells} cells: "
                        f"{_fmt([f'{g} ({k} cells)' for g, k in short], 10)}; drop those cells, choose "
                        "another cell type, or lower min_cells")
    sums = np.rint(_sums(x, np.asarray(codes), len(order))).astype(np.int64)
    meta = subject_metadata(obs.iloc[idx], codes, order)
    meta["n_cells"] = n_cells.astype(np.int64)
    return anndata.AnnData(X=sums, obs=meta, var=adata.var.copy())
