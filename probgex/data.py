"""AnnData -> validated :class:`CountData`, checked before any JAX code runs.

Every bad input raises :class:`probgex.errors.DataError` with a message naming the
problem and the fix.  This module deliberately does not import JAX.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from probgex.choices import EMPTY_MODES, LIKELIHOODS
from probgex.errors import DataError, ExtrapolationWarning
from probgex.rowsource import Disk, RowSource, default_memory_budget, is_store, open_anndata

_BLOCK = 1 << 22  # elements checked at a time (dense row chunks, sparse .data slices)
# float32 (the likelihood's arithmetic) holds every integer only up to 2**24; beyond it x and x + 1 collide
# and the NB / Poisson log-pmf drifts from scipy's (31.7 nats at 2**24, millions at 1e12): counts above
# PRECISE_COUNT are fitted with a warning (deep bulk samples reach it: gtex_brain's largest is 1.6e7), counts
# above MAX_COUNT (the int32 range count matrices are stored in; no sequencing run counts that many
# fragments of one gene) are refused as corrupt
PRECISE_COUNT = 2**24
MAX_COUNT = 2**31 - 1
FAR = 1.0  # numeric covariates more than this many training-range widths outside the range are refused
MIXED_SHARE = 0.8  # a text column whose distinct values are at least this share numbers is a numeric column


class EmptyWarning(UserWarning):
    """All-zero genes or cells were dropped."""


class DesignWarning(UserWarning):
    """The data or the design can be fitted but something in it carries no information (a single-level
    factor, collinear columns, one observation or one gene, duplicated observation names)."""


def _fmt(values: Sequence[Any], k: int = 5) -> str:
    """A short list of values for an error message."""
    items = [repr(v) for v in list(values)[:k]]
    more = f", ... ({len(values) - k} more)" if len(values) > k else ""
    return "[" + ", ".join(items) + more + "]"


def _formulaic_message(err: Exception) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _observed_levels(col: pd.Series) -> list[str]:
    """Categories of a column as strings: a categorical's own order restricted to the
    observed values, otherwise the sorted observed values."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        seen = set(col.dropna().unique())
        return [str(c) for c in col.cat.categories if c in seen]
    return sorted({str(v) for v in col.dropna().unique()})


@dataclass(frozen=True)
class DesignEncoding:
    """How obs metadata becomes a design matrix; re-applies identically to new data."""

    formula: str
    columns: tuple[str, ...]
    levels: dict[str, list[str]]
    numeric: tuple[str, ...]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # training range per numeric column

    def variables(self) -> tuple[str, ...]:
        """All obs columns the formula uses."""
        return tuple(self.levels) + tuple(self.numeric)

    def _prepare(self, obs: pd.DataFrame, check_range: bool = True) -> pd.DataFrame:
        """Check obs and return the used columns with categories fixed to the fitted levels (numeric ones
        checked against their training range unless `check_range` is False)."""
        if not isinstance(obs, pd.DataFrame):
            raise DataError(f"obs must be a pandas DataFrame, got {type(obs).__name__}")
        missing = [v for v in self.variables() if v not in obs.columns]
        if missing:
            raise DataError(f"obs is missing column(s) {_fmt(missing)} used by the formula "
                            f"{self.formula!r}; available columns: {_fmt(list(obs.columns), 20)}. "
                            "Add the column(s) to the metadata or change the formula.")
        out = {}
        for v in self.variables():
            col = obs[v]
            n_na = int(col.isna().sum())
            if n_na:
                raise DataError(f"obs column {v!r} has {n_na} missing (NaN/None) value(s); "
                                "fill them or drop those rows before building the design.")
            if v in self.numeric:
                out[v] = _numeric_values(col, v)
                if check_range and v in self.ranges:
                    _check_range(v, out[v], self.ranges[v])
            else:
                values = col.astype(str).to_numpy()
                unseen = sorted(set(values) - set(self.levels[v]))
                if unseen:
                    raise DataError(f"obs column {v!r} has unseen categories {_fmt(unseen)}; known "
                                    f"levels: {_fmt(self.levels[v], 20)}. Predict only for known "
                                    "levels or refit with them.")
                out[v] = pd.Categorical(values, categories=self.levels[v])
        return pd.DataFrame(out, index=pd.RangeIndex(len(obs)))

    def transform(self, obs: pd.DataFrame, *, check_range: bool = True) -> np.ndarray:
        """Encode new metadata exactly as at fit time: float32 array (n, P). Numeric covariates outside
        their training range are warned about (ExtrapolationWarning), and refused far outside it, unless
        `check_range` is False (a design row built on purpose, e.g. at 0)."""
        import formulaic

        frame = self._prepare(obs, check_range)
        try:
            mm = formulaic.model_matrix(self.formula, frame, na_action="raise")
        except Exception as err:  # formulaic's errors are not ValueErrors
            raise DataError(f"cannot build design {self.formula!r}: {_formulaic_message(err)}") from err
        cols = tuple(str(c) for c in mm.columns)
        if cols != self.columns:
            raise DataError(f"re-encoding {self.formula!r} gave columns {_fmt(cols, 10)} but the fitted "
                            f"design has {_fmt(self.columns, 10)}; mark categorical covariates as "
                            "strings/categoricals in obs rather than numbers.")
        design = mm.to_numpy(dtype=np.float32)
        if not np.isfinite(design).all():
            raise DataError(f"design {self.formula!r} has NaN/inf entries; check the transforms used.")
        return design

    def to_dict(self) -> dict:
        """JSON-serialisable form (str/list only)."""
        d = {"formula": self.formula, "columns": list(self.columns),
             "levels": {k: list(v) for k, v in self.levels.items()}, "numeric": list(self.numeric)}
        if self.ranges:
            d["ranges"] = {k: [float(a), float(b)] for k, (a, b) in self.ranges.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DesignEncoding:
        """Inverse of :meth:`to_dict`."""
        missing = [k for k in ("formula", "columns", "levels", "numeric") if k not in d]
        if missing:
            raise DataError(f"design encoding is missing key(s) {missing}; the saved model is incomplete.")
        return cls(str(d["formula"]), tuple(map(str, d["columns"])),
                   {str(k): [str(x) for x in v] for k, v in d["levels"].items()},
                   tuple(map(str, d["numeric"])),
                   {str(k): (float(a), float(b)) for k, (a, b) in d.get("ranges", {}).items()})


def _numeric_values(col: pd.Series, name: str) -> np.ndarray:
    """A numeric covariate as float64; text columns are accepted when every value is a number (the same
    rule at fit and at prediction), otherwise refused naming the value."""
    if _is_numeric(col):
        return col.to_numpy(dtype=np.float64)
    if pd.api.types.is_bool_dtype(col):
        raise DataError(f"obs column {name!r} is boolean but the model uses it as a number; convert it with "
                        f"obs[{name!r}].astype(float) or make it a factor")
    values = pd.to_numeric(col.astype(str), errors="coerce")
    bad = col[values.isna()]
    if len(bad):
        raise DataError(f"obs column {name!r} must be numeric (the model uses it as a number) but holds "
                        "non-numeric value(s) "
                        f"{_fmt(list(bad.astype(str).unique()))} (e.g. at obs {str(bad.index[0])!r}); fix them "
                        "or drop those rows.")
    return values.to_numpy(dtype=np.float64)


def _check_range(name: str, x: np.ndarray, rng: tuple[float, float]) -> None:
    """Warn about values of a numeric covariate outside its training range; refuse those more than FAR
    range widths outside it (the fitted linear effect is then an extrapolation the data never saw)."""
    lo, hi = rng
    out = (x < lo) | (x > hi)
    if not out.any():
        return
    width = hi - lo if hi > lo else max(abs(lo), abs(hi), 1.0)
    far = (x < lo - FAR * width) | (x > hi + FAR * width)
    worst = x[out][np.argmax(np.abs(x[out] - (lo + hi) / 2))]
    what = (f"obs column {name!r} has {int(out.sum())} value(s) outside the training range [{lo:g}, {hi:g}] "
            f"(e.g. {worst:g})")
    if far.any():
        raise DataError(f"{what}, {int(far.sum())} of them more than {FAR:g} range width(s) beyond it: "
                        "predictions there are extrapolations of a fitted trend (they can overflow to inf); "
                        f"predict within [{lo - FAR * width:g}, {hi + FAR * width:g}] or refit with data covering "
                        "these values.")
    warnings.warn(f"{what}: predictions there extrapolate the fitted trend", ExtrapolationWarning, stacklevel=4)


def _formula_variables(formula: Any, obs: pd.DataFrame) -> list[str]:
    """Parse a one-sided formula and return the obs columns it may use (in obs order).

    formulaic's ``required_variables`` misses the arguments of stateful transforms such
    as ``center(x)``, so identifiers of the formula that name obs columns are added.
    """
    import formulaic

    if not isinstance(formula, str):
        raise DataError(f"formula must be a one-sided formula string like '~ cluster_id + group_id', "
                        f"got {type(formula).__name__} {formula!r}")
    try:
        parsed = formulaic.Formula(formula)
        required = set(parsed.required_variables)
    except Exception as err:
        raise DataError(f"cannot parse formula {formula!r}: {_formulaic_message(err)}") from err
    if not isinstance(parsed, formulaic.formula.SimpleFormula) or not formula.strip().startswith("~"):
        raise DataError(f"formula {formula!r} is not a one-sided formula string like '~ cluster_id + "
                        "group_id'; start it with '~' and drop any left-hand side (counts are the response)")
    missing = sorted(str(v) for v in required if v not in obs.columns)
    if missing:
        raise DataError(f"formula {formula!r} uses column(s) {_fmt(missing)} missing from obs; available "
                        f"columns: {_fmt(list(obs.columns), 20)}. Add them to adata.obs or fix the formula.")
    required |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", formula))
    return [c for c in obs.columns if c in required]


def encode_design(formula: str, obs: pd.DataFrame) -> tuple[np.ndarray, DesignEncoding]:
    """Build the design matrix of ``formula`` on ``obs`` and the encoding that reproduces it.

    Non-numeric columns, and numeric ones wrapped in ``C(...)``, become categoricals whose
    levels are fixed now, so new metadata with fewer levels encode to the same columns.
    """
    import formulaic

    used = _formula_variables(formula, obs)
    as_factor = set(re.findall(r"\bC\(\s*([A-Za-z_][A-Za-z0-9_.]*)", formula))
    for v in used:
        if v not in as_factor:
            _refuse_mixed(obs[v], v)
    levels = {v: _observed_levels(obs[v]) for v in used if v in as_factor or not _is_numeric(obs[v])}
    probe = DesignEncoding(formula, (), levels, tuple(v for v in used if v not in levels))
    try:
        mm = formulaic.model_matrix(formula, probe._prepare(obs), na_action="raise")
    except Exception as err:
        raise DataError(f"cannot build design {formula!r}: {_formulaic_message(err)}") from err
    if mm.model_spec.transform_state:
        raise DataError(f"formula {formula!r} uses stateful transforms {sorted(mm.model_spec.transform_state)} "
                        "whose fitted state cannot be saved; standardise the column in obs beforehand.")
    data_vars = mm.model_spec.variables_by_source.get("data", set())  # drop spurious identifiers
    numeric = tuple(v for v in probe.numeric if v in data_vars)
    ranges = {}
    for v in numeric:
        x = _numeric_values(obs[v], v)
        ranges[v] = (float(x.min()), float(x.max())) if len(x) else (0.0, 0.0)
    encoding = DesignEncoding(formula, tuple(str(c) for c in mm.columns),
                              {k: v for k, v in levels.items() if k in data_vars}, numeric, ranges)
    design = encoding.transform(obs)
    _warn_design(design, encoding, obs)
    if not np.array_equal(design, mm.to_numpy(dtype=np.float32)):
        raise DataError(f"the design of {formula!r} cannot be reproduced from its saved encoding; "
                        "simplify the formula (plain columns and interactions).")
    return design, encoding


def _refuse_mixed(col: pd.Series, name: str) -> None:
    """A text column whose values are mostly numbers but a few are not is a numeric column with stray text
    (e.g. 'NA ' or 'unknown'): refused, rather than silently becoming a factor with one level per number."""
    if _is_numeric(col) or isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(col):
        return
    distinct = pd.Series(col.dropna().astype(str).unique())
    if not len(distinct):
        return
    is_num = pd.to_numeric(distinct, errors="coerce").notna()
    if is_num.all() or is_num.mean() < MIXED_SHARE:
        return
    bad = list(distinct[~is_num])
    row = col.index[col.astype(str).isin(bad)][0]
    raise DataError(f"obs column {name!r} holds numbers and the non-numeric value(s) {_fmt(bad)} (e.g. at obs "
                    f"{str(row)!r}); fix or drop those rows (pd.to_numeric(obs[{name!r}]) finds them), or, if it "
                    f"is a factor, make it one explicitly: obs[{name!r}].astype('category') or C({name}) in the "
                    "formula.")


def _warn_design(design: np.ndarray, encoding: DesignEncoding, obs: pd.DataFrame) -> None:
    """Warn about factors with a single level and about design columns that are exact linear combinations
    of others (their coefficients are then set by the prior alone)."""
    single = [v for v, lv in encoding.levels.items() if len(lv) == 1]
    if single:
        only = _fmt([encoding.levels[v][0] for v in single])
        warnings.warn(f"factor(s) {_fmt(single)} have a single level in the data ({only}): "
                      "they explain nothing; drop them from the formula", DesignWarning, stacklevel=4)
    p = design.shape[1]
    if p < 2 or design.shape[0] == 0:
        return
    d = design.astype(np.float64)
    d = d / np.maximum(np.sqrt((d**2).sum(0)), 1e-300)  # unit columns: the rank test does not see scales
    gram = d.T @ d  # (p, p): rank(d) without an SVD of all rows

    def rank(k: int) -> int:
        return int(np.sum(np.linalg.eigvalsh(gram[:k, :k]) > 1e-9 * k))

    if rank(p) < p:
        dependent = [encoding.columns[j] for j in range(1, p) if rank(j + 1) <= rank(j)]
        warnings.warn(f"the design of {encoding.formula!r} has perfectly collinear columns: {_fmt(dependent)} "
                      "are linear combinations of the columns before them, so the data cannot tell their effects "
                      "apart (only the prior sets them); drop one of the collinear covariates",
                      DesignWarning, stacklevel=4)


def _blocks(matrix):
    """Yield the stored values in chunks: sparse ``.data`` slices, dense row chunks, or a row source's
    row blocks (read from disk one at a time)."""
    if isinstance(matrix, RowSource):
        for _, block in matrix.blocks(_rows_per_block(matrix)):
            yield block.data if sp.issparse(block) else block
    elif sp.issparse(matrix):
        for i in range(0, matrix.data.size, _BLOCK):
            yield matrix.data[i:i + _BLOCK]
    else:
        step = max(1, _BLOCK // max(1, matrix.shape[1]))
        for i in range(0, matrix.shape[0], step):
            yield np.asarray(matrix[i:i + step])


def _rows_per_block(source: RowSource) -> int:
    """Rows per streamed block: about _BLOCK stored values (dense) or 16x that many rows (sparse)."""
    return max(1, _BLOCK // max(1, source.shape[1]) * (16 if source.sparse else 1))


def _locate(matrix, predicate) -> tuple[int, int]:
    """(row, column) of the first stored entry of `matrix` where `predicate(values)` holds."""
    if isinstance(matrix, RowSource):
        for start, block in matrix.blocks(_rows_per_block(matrix)):
            dense = block.toarray() if sp.issparse(block) else np.asarray(block)
            r, c = np.nonzero(predicate(dense))
            if r.size:
                return start + int(r[0]), int(c[0])
    elif sp.issparse(matrix):
        for i in range(0, matrix.data.size, _BLOCK):
            hit = np.flatnonzero(predicate(matrix.data[i:i + _BLOCK]))
            if hit.size:
                k = i + int(hit[0])
                return int(np.searchsorted(matrix.indptr, k, side="right") - 1), int(matrix.indices[k])
    else:
        step = max(1, _BLOCK // max(1, matrix.shape[1]))
        for i in range(0, matrix.shape[0], step):
            r, c = np.nonzero(predicate(np.asarray(matrix[i:i + step])))
            if r.size:
                return i + int(r[0]), int(c[0])
    return -1, -1


def validate_counts(matrix: np.ndarray | sp.spmatrix, likelihood: str, *, name: str = "X",
                    obs_names: Sequence[str] | None = None, var_names: Sequence[str] | None = None) -> None:
    """Check that ``matrix`` holds finite, non-negative integers as count likelihoods need, none above
    MAX_COUNT (2**31 - 1), with a warning above PRECISE_COUNT (2**24, the largest range in which float32,
    the likelihood's arithmetic, holds every integer)."""
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}")
    matrix = matrix if sp.issparse(matrix) or isinstance(matrix, RowSource) else np.asarray(matrix)
    dtype = matrix.dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"counts in {name} have dtype {dtype}; raw counts must be an integer or float "
                        "array of non-negative integers.")
    fix = "pass the raw count layer with layer=... (e.g. layer='counts')"
    n_bad = {"nonfinite": 0, "negative": 0, "fraction": 0, "huge": 0, "imprecise": 0}
    example: dict[str, Any] = {}
    for block in _blocks(matrix):
        if not np.issubdtype(dtype, np.integer) or np.iinfo(dtype).max > PRECISE_COUNT:
            where = np.isfinite(block) if np.issubdtype(dtype, np.floating) else True
            big = np.greater(block, PRECISE_COUNT, where=where, out=np.zeros(block.shape, bool))
            n_bad["imprecise"] += int(np.count_nonzero(big))
            n_bad["huge"] += int(np.count_nonzero(np.asarray(block[big], np.float64) > MAX_COUNT))
        if np.issubdtype(dtype, np.floating):
            finite = np.isfinite(block)
            n_bad["nonfinite"] += int(block.size - np.count_nonzero(finite))
            frac = finite & (block != np.floor(np.where(finite, block, 0)))
            k = int(np.count_nonzero(frac))
            if k:
                n_bad["fraction"] += k
                example.setdefault("fraction", block[frac][:3].tolist())
        if not np.issubdtype(dtype, np.unsignedinteger):
            neg = block < 0
            k = int(np.count_nonzero(neg))
            if k:
                n_bad["negative"] += k
                example.setdefault("negative", block[neg][:3].tolist())
    if n_bad["nonfinite"]:
        raise DataError(f"counts in {name} contain {n_bad['nonfinite']} NaN or infinite values; raw counts "
                        f"must be finite non-negative integers: fix or remove them, or {fix}.")
    if n_bad["negative"]:
        raise DataError(f"counts in {name} contain {n_bad['negative']} negative values (e.g. "
                        f"{example['negative']}); raw counts must be non-negative integers; {fix}.")
    if n_bad["huge"]:
        row, col = _locate(matrix, lambda b: np.isfinite(b) & (np.asarray(b, np.float64) > MAX_COUNT))
        where = (f"obs {str(obs_names[row]) if obs_names is not None else row!r}, gene "
                 f"{str(var_names[col]) if var_names is not None else col!r}")
        raise DataError(f"counts in {name} contain {n_bad['huge']} value(s) above {MAX_COUNT:,} (2**31 - 1), e.g. "
                        f"{_entry(matrix, row, col):g} at {where}: no sequencing run counts that many fragments of one gene, "
                        "and float32, the likelihood's arithmetic, is off by millions of nats there, so a single such "
                        "entry would drive its gene's fit; fix or remove the entry.")
    if n_bad["imprecise"]:
        warnings.warn(f"counts in {name} contain {n_bad['imprecise']} value(s) above {PRECISE_COUNT:,} (2**24), where "
                      "float32, the likelihood's arithmetic, no longer holds every integer: their log-likelihood is "
                      "approximate (tens of nats off at 2**24); check that they are real counts.", RuntimeWarning,
                      stacklevel=3)
    if n_bad["fraction"]:
        raise DataError(f"counts in {name} contain {n_bad['fraction']} non-integer values (e.g. "
                        f"{example['fraction']}), as in normalized or log-transformed data; the "
                        f"{likelihood!r} likelihood needs raw integer counts; {fix}.")


def _as_matrix(x: Any, name: str, memory_budget: int | None = None):
    """Dense ndarray or canonical CSR matrix (CSC/backed/other sparse converted); a backed (on-disk)
    matrix stays on disk as a row source when it would take more than `memory_budget` bytes in memory."""
    if x is None:
        raise DataError(f"{name} is empty (None); store the raw counts there or pass layer=...")
    if isinstance(x, RowSource):
        return x.to_memory() if not x.on_disk or x.nbytes() <= _budget(memory_budget) else x
    if hasattr(x, "to_memory") or type(x).__module__.startswith(("h5py", "zarr")):  # anndata backed / on disk
        source = Disk(x, name)
        if source.nbytes() > _budget(memory_budget):
            return source
        x = x.to_memory() if hasattr(x, "to_memory") else np.asarray(x[...])
    if sp.issparse(x):
        x = sp.csr_matrix(x)  # no copy when already a csr_matrix
        if not x.has_canonical_format:
            x = x.copy()
            x.sum_duplicates()
        return x
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D (cells x genes), got shape {x.shape}")
    return x


def _budget(memory_budget: int | None) -> int:
    return default_memory_budget() if memory_budget is None else int(memory_budget)


def _entry(matrix, row: int, col: int) -> float:
    if isinstance(matrix, RowSource):
        block = matrix.read(np.array([row]))
        return float((block.toarray() if sp.issparse(block) else block)[0, col])
    return float(matrix[row, col])


def _margins(m) -> tuple[np.ndarray, np.ndarray]:
    """Row sums and column sums as float64, without a full float64 copy (a row source in one pass)."""
    if isinstance(m, RowSource):
        rows, cols = [], np.zeros(m.shape[1])
        for _, block in m.blocks(_rows_per_block(m)):
            rows.append(np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())
            cols += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
        return np.concatenate(rows) if rows else np.zeros(0), cols
    if sp.issparse(m):
        return (np.asarray(m.sum(axis=1, dtype=np.float64)).ravel(),
                np.asarray(m.sum(axis=0, dtype=np.float64)).ravel())
    step = max(1, _BLOCK // max(1, m.shape[1]))
    rows, cols = [], np.zeros(m.shape[1])
    for i in range(0, m.shape[0], step):
        rows.append(m[i:i + step].sum(axis=1, dtype=np.float64))
        cols += m[i:i + step].sum(axis=0, dtype=np.float64)
    return np.concatenate(rows) if rows else np.zeros(0), cols


def group_codes(obs: pd.DataFrame, key: str, levels: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """int32 codes of ``obs[key]`` against ``levels`` (observed levels when None)."""
    if key not in obs.columns:
        raise DataError(f"group_key {key!r} is not an obs column; available: {_fmt(list(obs.columns), 20)}")
    col = obs[key]
    if col.isna().any():
        raise DataError(f"group column {key!r} has {int(col.isna().sum())} missing value(s); fill or drop them.")
    levels = _observed_levels(col) if levels is None else [str(x) for x in levels]
    codes = pd.Categorical(col.astype(str), categories=levels).codes
    if (codes < 0).any():
        unseen = sorted(set(col.astype(str)) - set(levels))
        raise DataError(f"group column {key!r} has unseen levels {_fmt(unseen)}; known: {_fmt(levels, 20)}")
    return codes.astype(np.int32), levels


@dataclass
class CountData:
    """Validated counts with their design, ready for the models."""

    counts: np.ndarray | sp.csr_matrix | RowSource  # a row source: streamed from disk (`probgex.rowsource`)
    library_size: np.ndarray
    design: np.ndarray
    encoding: DesignEncoding
    obs: pd.DataFrame
    var_names: pd.Index
    groups: np.ndarray | None = None
    group_levels: list[str] | None = None
    offset: np.ndarray | None = None  # (n, G) float32 log stage-1 mean fraction (residual story only)

    def __post_init__(self) -> None:
        n, g = self.counts.shape
        if self.offset is not None and self.offset.shape[0] != n:
            raise DataError(f"shape mismatch: the stage-1 offset has {self.offset.shape[0]} rows but counts "
                            f"have {n}; predict stage 1 for the same cells as the counts.")
        sizes = {"design rows": self.design.shape[0], "library_size": len(self.library_size),
                 "obs rows": len(self.obs)} | ({"groups": len(self.groups)} if self.groups is not None else {})
        for what, k in sizes.items():
            if k != n:
                raise DataError(f"shape mismatch: {what} = {k} but counts have {n} rows; build the "
                                "design and metadata from the same cells as the counts.")
        if len(self.var_names) != g:
            raise DataError(f"shape mismatch: {len(self.var_names)} var_names for {g} genes")

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.counts.shape[1]

    @property
    def n_design(self) -> int:
        """Number of design columns."""
        return self.design.shape[1]

    @property
    def streamed(self) -> bool:
        """Whether the counts are read from disk (a row source) rather than held in memory."""
        return isinstance(self.counts, RowSource) and self.counts.on_disk

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 counts of the rows ``idx``."""
        idx = np.asarray(idx)
        block = self.counts.read(idx) if isinstance(self.counts, RowSource) else self.counts[idx]
        return (block.toarray() if sp.issparse(block) else block).astype(np.float32, copy=False)

    def subset(self, idx: np.ndarray) -> CountData:
        """The rows ``idx`` (integer indices or boolean mask) as a new CountData."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        counts = self.counts.take(rows=idx) if isinstance(self.counts, RowSource) else self.counts[idx]
        return replace(self, counts=counts, library_size=self.library_size[idx],
                       design=self.design[idx], obs=self.obs.iloc[idx],
                       groups=None if self.groups is None else self.groups[idx],
                       offset=None if self.offset is None else self.offset[idx])


def without_obs(data: CountData) -> CountData:
    """`data` without its obs table: an empty frame of as many rows (a RangeIndex), for a fit whose loop
    has taken what it needs from the metadata (the design, groups and library sizes are arrays of their
    own). At 1M cells the obs names alone are ~60 MB of Python strings, with pandas' hash table of them
    (built by the first lookup) ~30 MB more, and the columns 1-8 bytes a cell each."""
    return replace(data, obs=pd.DataFrame(index=pd.RangeIndex(data.n_obs)))


def _gene_index(var_names: pd.Index, genes: Sequence[str]) -> np.ndarray:
    """Column positions of ``genes`` in ``var_names``; every one must be present."""
    genes = list(genes)
    if len(set(genes)) != len(genes) or not var_names.is_unique:
        raise DataError("gene names must be unique; call adata.var_names_make_unique() and pass unique genes")
    idx = var_names.get_indexer(genes)
    missing = [g for g, i in zip(genes, idx) if i < 0]
    if missing:
        raise DataError(f"{len(missing)} of {len(genes)} required genes not found in adata.var_names, e.g. "
                        f"{_fmt(missing)}; held-out data must contain every fitted gene.")
    return idx


def _drop_empty(row_sums: np.ndarray, col_sums: np.ndarray, genes_fixed: bool, empty: str,
                name: str) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of cells and genes to keep, per the ``empty`` option."""
    keep_rows, keep_cols = row_sums > 0, (col_sums > 0) | genes_fixed
    n_c, n_g = int((~keep_rows).sum()), int((~keep_cols).sum())
    if empty == "keep" or not (n_c or n_g):
        return np.ones(row_sums.size, bool), np.ones(col_sums.size, bool)
    what = f"{n_g} all-zero genes and {n_c} all-zero cells in {name}"
    if empty == "error":
        raise DataError(f"there are {what}; drop them, or pass empty='warn' to drop them automatically "
                        "(or empty='keep').")
    warnings.warn(f"dropping {what}", EmptyWarning, stacklevel=3)
    return keep_rows, keep_cols


def from_anndata(adata: Any, formula: str | None = None, *, layer: str | None = None,
                 likelihood: str = "nb", empty: str = "warn", encoding: DesignEncoding | None = None,
                 genes: Sequence[str] | None = None, group_key: str | None = None,
                 group_levels: list[str] | None = None, counts: RowSource | None = None,
                 memory_budget: int | None = None) -> CountData:
    """Validate an AnnData's counts and metadata and build the design. `adata` may also be the path of
    an .h5ad file or a .zarr AnnData store, read without loading its counts first.

    With ``encoding`` (a fitted design) the metadata are re-encoded identically; with
    ``genes`` the counts are aligned to those genes, which are never dropped.  With
    neither ``formula`` nor ``encoding`` the design is intercept-only (``"~ 1"``).
    ``counts``: the counts as a row source (`probgex.rowsource.open_anndata` of an .h5ad or .zarr)
    in place of ``adata.X``. Counts on disk (that source, or a backed AnnData's X) stay there, read in
    row chunks, when in memory they would take more than ``memory_budget`` bytes
    (`rowsource.default_memory_budget()` when None); validation streams over them too.
    """
    import anndata

    if isinstance(adata, str | Path) and counts is None:  # an .h5ad file or .zarr store: counts stay on disk
        adata, counts = open_anndata(check_store(adata), layer=layer)
    if not isinstance(adata, anndata.AnnData):
        raise DataError(f"expected an AnnData object, got {type(adata).__name__}; load one with "
                        "anndata.read_h5ad(path) or build anndata.AnnData(X=counts, obs=metadata)")
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}")
    if empty not in EMPTY_MODES:
        raise DataError(f"empty={empty!r} is not one of {list(EMPTY_MODES)}")
    if encoding is not None and formula is not None and formula != encoding.formula:
        raise DataError(f"formula {formula!r} differs from the encoding's {encoding.formula!r}; pass only one")
    if counts is None and layer is not None and layer not in adata.layers:
        raise DataError(f"layer {layer!r} not found in adata.layers; available layers: "
                        f"{[k for k in adata.layers.keys() if k is not None]} (use layer=None for adata.X)")
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if counts is not None:
        name = counts.label
        if counts.shape != adata.shape:
            raise DataError(f"shape mismatch: the counts are {counts.shape[0]} x {counts.shape[1]} but the AnnData "
                            f"is {adata.n_obs} x {adata.n_vars}; pass the counts of the same cells and genes")
    m = _as_matrix(counts if counts is not None else adata.X if layer is None else adata.layers[layer], name,
                   memory_budget)
    var_names = pd.Index(adata.var_names)
    if genes is not None:
        idx = _gene_index(var_names, genes)
        if not np.array_equal(idx, np.arange(m.shape[1])):
            m = m.take(cols=idx) if isinstance(m, RowSource) else m[:, idx]
            var_names = var_names[idx]
    if 0 in m.shape:
        raise DataError(f"{name} is empty ({m.shape[0]} cells x {m.shape[1]} genes); pass a dataset with counts")
    validate_counts(m, likelihood, name=name, obs_names=adata.obs_names, var_names=var_names)
    if genes is None and not var_names.is_unique:
        dup = var_names[var_names.duplicated()].unique()
        raise DataError(f"gene names must be unique: {len(dup)} are duplicated, e.g. {_fmt(list(dup))}; a model "
                        "with duplicated genes could never be matched to data again. Call "
                        "adata.var_names_make_unique() (or sum the duplicates) first.")
    row_sums, col_sums = _margins(m)
    keep_rows, keep_cols = _drop_empty(row_sums, col_sums, genes is not None, empty, name)
    if isinstance(m, RowSource) and not (keep_rows.all() and keep_cols.all()):
        m = m.take(rows=None if keep_rows.all() else np.flatnonzero(keep_rows),
                   cols=None if keep_cols.all() else np.flatnonzero(keep_cols))
        var_names = var_names[keep_cols]
    if not isinstance(m, RowSource) and not keep_rows.all():
        m = m[keep_rows]
    if not isinstance(m, RowSource) and not keep_cols.all():
        m, var_names = m[:, keep_cols], var_names[keep_cols]
    if 0 in m.shape:
        raise DataError(f"nothing is left in {name} after dropping all-zero genes and cells")
    obs = adata.obs.iloc[np.flatnonzero(keep_rows)].copy()
    if encoding is None:
        _warn_shape(m.shape, obs, name)
        design, encoding = encode_design(formula if formula is not None else "~ 1", obs)
    else:
        design = encoding.transform(obs)
    groups, levels = group_codes(obs, group_key, group_levels) if group_key else (None, None)
    return CountData(m, row_sums[keep_rows], design, encoding, obs, var_names, groups, levels)


def _warn_shape(shape: tuple[int, int], obs: pd.DataFrame, name: str) -> None:
    """Warn (at fit time) about data a model can be fitted on but learns little from."""
    if shape[0] == 1 or shape[1] == 1:
        what = "one observation" if shape[0] == 1 else "one gene"
        warnings.warn(f"{name} has {what} ({shape[0]} x {shape[1]}): the model can be fitted, but "
                      + ("nothing can be learned about variation between observations" if shape[0] == 1 else
                         "dispersion trends and gene programs need many genes"), DesignWarning, stacklevel=4)
    if not obs.index.is_unique:
        dup = obs.index[obs.index.duplicated()].unique()
        warnings.warn(f"{len(dup)} observation name(s) are duplicated, e.g. {_fmt(list(dup))}: held-out "
                      "observations are recorded by name, so they become ambiguous; call "
                      "adata.obs_names_make_unique() first", DesignWarning, stacklevel=4)


def check_store(path: str | Path, what: str = "data", *, zarr: bool = True) -> Path:
    """`path` if it is an .h5ad (HDF5) file or (with `zarr`) a .zarr AnnData store, else a DataError
    saying what it is instead."""
    path = Path(path)
    kinds = "an .h5ad file or a .zarr store" if zarr else "an .h5ad file"
    if not path.exists():
        raise DataError(f"{what} file {str(path)!r} not found; pass the path of {kinds}")
    if path.is_dir():
        if zarr and is_store(path):
            return path
        raise DataError(f"{what} {str(path)!r} is a folder; pass the path of {kinds}")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise DataError(f"{what} file {str(path)!r} is not an .h5ad (HDF5) file; write the AnnData with "
                        "adata.write_h5ad(path), or convert the table first")
    return path


def read_h5ad(path: str | Path, what: str = "data", *, obs_only: bool = False):
    """An AnnData from an .h5ad file (its obs only, without reading X, with `obs_only`); a missing,
    non-h5ad or truncated file is a DataError."""
    import anndata

    path = check_store(path, what, zarr=False)
    try:
        if not obs_only:
            return anndata.read_h5ad(path)
        adata = anndata.read_h5ad(path, backed="r")
        obs = adata.obs.copy()
        adata.file.close()
        return obs
    except Exception as e:  # h5py / anndata raise OSError, KeyError, ValueError ... on damaged files
        raise DataError(f"{what} file {str(path)!r} cannot be read as an AnnData (truncated or damaged: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); write or copy it "
                        "again") from e


def read_obs_table(path: str | Path) -> pd.DataFrame:
    """Cell metadata from a .csv / .tsv (first column = cell names when unnamed) or an .h5ad's obs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata file {str(path)!r} not found")
    suffix = path.name.lower().removesuffix(".gz")
    if suffix.endswith(".h5ad"):
        return read_h5ad(path, "metadata", obs_only=True)
    if not suffix.endswith((".csv", ".tsv", ".txt")):
        raise DataError(f"cannot read metadata from {path.name!r}; use a .csv, .tsv or .h5ad file")
    try:
        obs = pd.read_csv(path, sep="," if suffix.endswith(".csv") else "\t")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"metadata file {path.name!r} cannot be read as a table ({str(e).splitlines()[0]}); "
                        "it must be a header line of column names and one row per observation") from e
    if len(obs.columns) and (str(obs.columns[0]).startswith("Unnamed: 0") or obs.columns[0] in ("index", "obs_names")):
        obs = obs.set_index(obs.columns[0]).rename_axis(None)
    if obs.empty:
        raise DataError(f"metadata file {path.name!r} has no rows")
    return obs
