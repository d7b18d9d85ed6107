"""Where a CountData's counts live, read by rows: in memory (dense or CSR) or on disk, streamed from a
backed `.h5ad` or a `.zarr` AnnData store in row chunks (anndata's own on-disk elements: an HDF5 / zarr
array for dense counts, `anndata.io.sparse_dataset` for CSR). The metadata and design stay in memory;
the counts do not. No JAX here.

A source answers `shape`, `read(rows)` (the rows in the order asked, dense or CSR) and `blocks(n)`
(contiguous row blocks, for one streaming pass: validation, margins, summaries). `take(rows, cols)`
is a view: the cells and genes kept after dropping empty ones, or the fitted genes in their order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from probgex.errors import DataError

Block = np.ndarray | sp.csr_matrix


def default_memory_budget() -> int:
    """Bytes the counts may take in memory before a file is streamed instead: an eighth of the
    machine's physical memory, at most 1 GiB (the rest is for the model, its optimizer, the batches and
    a device copy of the training counts, which the fit keeps below 1 GiB too)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(min(2**30, total // 8))


class RowSource:
    """The protocol (and shared behaviour) of every row source."""

    shape: tuple[int, int]
    dtype: np.dtype
    sparse: bool
    on_disk: bool = False
    label: str = "memory"

    def read(self, rows: np.ndarray) -> Block:
        raise NotImplementedError

    def blocks(self, n_rows: int) -> Iterator[tuple[int, Block]]:
        """(first row, block) over contiguous blocks of at most n_rows rows."""
        for start in range(0, self.shape[0], n_rows):
            yield start, self.read(np.arange(start, min(start + n_rows, self.shape[0])))

    def take(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> RowSource:
        return View(self, rows, cols)

    def nbytes(self) -> int:
        """Bytes the counts take held in memory (CSR: values and column indices; dense: the array)."""
        raise NotImplementedError

    def chunk_of(self, rows: np.ndarray) -> np.ndarray | None:
        """The stored chunk each of `rows` starts in, where reading one row decodes a whole compressed
        chunk (a .zarr store); None where rows are read by themselves (memory, an uncompressed .h5ad)."""
        return None

    def to_memory(self) -> np.ndarray | sp.csr_matrix:
        parts = [b for _, b in self.blocks(max(1, 2**22 // max(1, self.shape[1])))]
        if self.sparse:
            return sp.vstack(parts, format="csr") if parts else sp.csr_matrix(self.shape, dtype=self.dtype)
        return np.concatenate(parts) if parts else np.zeros(self.shape, self.dtype)


class Memory(RowSource):
    """Counts held in memory: a dense ndarray or a canonical CSR matrix."""

    def __init__(self, matrix: np.ndarray | sp.csr_matrix):
        self.matrix, self.shape, self.dtype = matrix, matrix.shape, matrix.dtype
        self.sparse = sp.issparse(matrix)

    def read(self, rows):
        return self.matrix[np.asarray(rows)]

    def nbytes(self) -> int:
        return int(self.matrix.data.nbytes + self.matrix.indices.nbytes) if self.sparse else int(self.matrix.nbytes)

    def to_memory(self):
        return self.matrix


class Disk(RowSource):
    """Counts on disk: an HDF5 / zarr array (dense) or an anndata sparse dataset (CSR), read as sorted,
    de-duplicated rows (runs of rows as one slice each; CSR from its stored arrays, `_csr_rows`) and put
    back in the order asked."""

    on_disk = True

    def __init__(self, elem, label: str):
        self.elem, self.label = elem, label
        self.sparse = not hasattr(elem, "ndim")  # anndata's sparse datasets have shape but no ndim
        if self.sparse and getattr(elem, "format", "csr") != "csr":
            raise DataError(f"the counts in {label} are stored as {elem.format.upper()}, which cannot be read by "
                            "rows; write them as CSR (adata.X = scipy.sparse.csr_matrix(adata.X)) to stream them")
        self.shape = tuple(int(s) for s in elem.shape)
        self.dtype = np.dtype(elem.dtype)
        self._indptr: np.ndarray | None = None  # the CSR row pointers, read on first use
        self._readers: tuple | None = None  # direct chunk readers of a .zarr store (`_chunk_readers`)

    def read(self, rows):
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype) if self.sparse else \
                np.zeros((0, self.shape[1]), self.dtype)
        uniq, back = np.unique(rows, return_inverse=True)
        block = self._csr_rows(uniq) if self.sparse else self._dense_rows(uniq)
        return block if np.array_equal(uniq, rows) else block[back]

    def _csr_rows(self, uniq: np.ndarray) -> sp.csr_matrix:
        """Sorted unique rows of the CSR counts, read from the stored arrays: the row pointers once (held,
        8 bytes a row), then only the values and column indices of the rows asked: a .zarr store in one
        coordinate selection per array (zarr decodes each stored chunk it touches once, concurrently),
        an .h5ad file in one slice per run of rows (`_ranges`)."""
        indptr = self._row_pointers()
        lo, hi = indptr[uniq], indptr[uniq + 1]
        lens = hi - lo
        out_ptr = np.r_[0, np.cumsum(lens)]
        data, indices = self.elem.group["data"], self.elem.group["indices"]
        if uniq[-1] - uniq[0] + 1 == len(uniq):  # one contiguous run: one slice
            a, b = int(lo[0]), int(hi[-1])
            values, cols = np.asarray(data[a:b]), np.asarray(indices[a:b])
        elif hasattr(data, "get_coordinate_selection"):  # zarr: its stored chunks decoded here, or selections
            values, cols = _select_rows(data, indices, lo, lens, out_ptr, self._chunk_readers())
        else:  # h5py: a slice per run of rows (at most READ_ENTRIES at a time), the rows' entries copied out
            first, last = _ranges(uniq)
            values, cols = _read_runs(data, indices, indptr[first], indptr[last], lo, hi, out_ptr)
        return sp.csr_matrix((values.astype(self.dtype, copy=False), cols, out_ptr), shape=(len(uniq), self.shape[1]))

    def _chunk_readers(self) -> tuple | None:
        """Direct readers of the stored chunks of a .zarr store's CSR values and column indices
        (`_zarr_chunks`), where DECODE_CHUNKS and the layout is one decoded there; else None (zarr reads)."""
        if self._readers is None:
            from probgex._zarr_chunks import ChunkReader, straddling_rows

            pair = tuple(ChunkReader.open(self.elem.group[k]) for k in ("data", "indices"))
            self._readers = pair if None not in pair else ()
            for reader in self._readers:  # the rows crossing a chunk boundary kept when their chunks are decoded
                reader.keep(*straddling_rows(self._row_pointers(), reader.inner))
        return self._readers if DECODE_CHUNKS and self._readers else None

    def chunk_of(self, rows):
        """A .zarr store's stored chunk of each row's first entry (CSR: of the values, whose chunks hold a
        fixed number of entries, ~390 rows of 395 entries at 154k a chunk; dense: of the rows)."""
        arr = self.elem.group["data"] if self.sparse else self.elem
        if not hasattr(arr, "get_coordinate_selection"):  # h5py: not a zarr array
            return None
        rows = np.asarray(rows, np.int64)
        first = self._row_pointers()[rows] if self.sparse else rows.copy()
        first //= int(arr.chunks[0])
        return first.astype(np.int32)  # chunk ids (a chunk holds >= 1 entry, so fewer than 2^31 of them)

    def _row_pointers(self) -> np.ndarray:
        if self._indptr is None:
            self._indptr = np.asarray(self.elem.group["indptr"][:], np.int64)
        return self._indptr

    def _dense_rows(self, uniq: np.ndarray) -> np.ndarray:
        first, last = _ranges(uniq)
        if len(first) == 1 or len(first) * 4 <= len(uniq):  # few runs (streamed minibatch windows): a slice each
            block = np.concatenate([np.asarray(self.elem[int(a):int(b)]) for a, b in zip(first, last, strict=True)])
            offset = np.r_[0, np.cumsum(last - first)[:-1]]
            k = np.searchsorted(first, uniq, side="right") - 1
            return block[uniq - first[k] + offset[k]]
        return _dense_rows(self.elem, uniq)

    def nbytes(self) -> int:
        if self.sparse:
            nnz = int(self.elem.group["data"].shape[0])
            return nnz * (self.dtype.itemsize + 4)
        return int(np.prod(self.shape)) * self.dtype.itemsize


GAP_ROWS = 64  # rows between two runs of wanted rows read over rather than skipped (one read, not two)
READ_ENTRIES = 1 << 22  # most stored entries read in one slice (32 MB of values and column indices)
DECODE_CHUNKS = True  # a .zarr store's CSR entries read by decoding its stored chunks here (`_zarr_chunks`)
SELECT_ENTRIES = 1 << 21  # most entries of a .zarr array read in one coordinate selection (~13 stored chunks)


def _select_rows(data, indices, lo: np.ndarray, lens: np.ndarray, out_ptr: np.ndarray, readers: tuple | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The stored values and column indices of rows starting at stored positions `lo` (increasing) with
    `lens` entries each, by zarr coordinate selections of whole rows of at most SELECT_ENTRIES entries
    (a row longer than that alone): zarr's selection holds several int64 arrays the length of its
    coordinates while it runs, and the positions of a part are made only for it, written into the
    outputs in place (a pool of 16k rows is 6.5M entries: its positions as one int64 array were 52 MB,
    built from two more of that size, and the parts' results were concatenated into a second copy).
    `readers`: the arrays' `_zarr_chunks.ChunkReader`s, which decode the stored chunks themselves: then the
    rows are joined into runs of adjacent entries and copied a slice at a time (`take_ranges`), each stored
    chunk decoded once a call, with no position array per entry at all."""
    values, cols = np.empty(int(out_ptr[-1]), data.dtype), np.empty(int(out_ptr[-1]), indices.dtype)
    if readers and len(lo):  # the rows joined into runs of adjacent stored entries, copied a slice at a time
        lo = np.asarray(lo, np.int64)
        hi = lo + np.asarray(lens, np.int64)
        starts = np.r_[0, np.flatnonzero(lo[1:] != hi[:-1]) + 1]
        first, last = lo[starts], hi[np.r_[starts[1:] - 1, len(lo) - 1]]
        readers[0].take_ranges(first, last, values)
        readers[1].take_ranges(first, last, cols)
        return values, cols
    i = 0
    while i < len(lo):
        j = max(i + 1, int(np.searchsorted(out_ptr, out_ptr[i] + SELECT_ENTRIES, side="right")) - 1)
        a, b = int(out_ptr[i]), int(out_ptr[j])
        if b > a:
            want = np.repeat(lo[i:j] - out_ptr[i:j], lens[i:j]) + np.arange(a, b)  # stored positions, increasing
            values[a:b] = np.asarray(data.get_coordinate_selection(want))
            cols[a:b] = np.asarray(indices.get_coordinate_selection(want))
        i = j
    return values, cols


def _read_runs(data, indices, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, out_ptr: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """The stored values and column indices of the rows [lo_i, hi_i) (increasing; `out_ptr` their offsets in
    the output), read range by range of [a, b) (covering them) in slices of at most READ_ENTRIES: each run
    of adjacent rows' entries copied from the slice into preallocated outputs, with no array of a position
    per entry (a window's 2,048 rows are ~800k entries in ~230 runs). Rows spread thinly (the held-out rows,
    every ~10th: runs of one row, under RUN_ENTRIES entries on average) are taken by positions instead
    (`_read_positions`: one fancy index a slice, cheaper than thousands of small copies)."""
    starts = np.r_[0, np.flatnonzero(lo[1:] != hi[:-1]) + 1] if len(lo) else np.zeros(0, np.int64)
    if len(starts) * RUN_ENTRIES > int(out_ptr[-1]):
        lens = hi - lo
        want = np.repeat(lo - out_ptr[:-1], lens) + np.arange(out_ptr[-1])  # stored positions, increasing
        return _read_positions(data, indices, a, b, want)
    run_lo, run_hi = lo[starts], hi[np.r_[starts[1:] - 1, len(lo) - 1]]
    at = out_ptr[starts]  # each run's place in the outputs
    values, cols = np.empty(int(out_ptr[-1]), data.dtype), np.empty(int(out_ptr[-1]), indices.dtype)
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        for s in range(i, j, READ_ENTRIES):
            e = min(s + READ_ENTRIES, j)
            r0, r1 = int(np.searchsorted(run_hi, s, side="right")), int(np.searchsorted(run_lo, e, side="left"))
            if r1 <= r0:
                continue
            v, c = np.asarray(data[s:e]), np.asarray(indices[s:e])
            for f, t, o in zip(run_lo[r0:r1].tolist(), run_hi[r0:r1].tolist(), at[r0:r1].tolist(), strict=True):
                f2, t2 = max(f, s), min(t, e)  # a run may cross the slice's ends
                if t2 > f2:
                    o += f2 - f
                    values[o : o + t2 - f2] = v[f2 - s : t2 - s]
                    cols[o : o + t2 - f2] = c[f2 - s : t2 - s]
    return values, cols


RUN_ENTRIES = 64  # mean entries a run of rows below which `_read_runs` takes positions instead of runs


def _read_positions(data, indices, a: np.ndarray, b: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stored values and column indices at positions `want` (increasing, inside the ranges [a, b)),
    read range by range in slices of at most READ_ENTRIES and cut down to the positions asked at once: rows
    spread thinly over the file (the held-out rows, every ~10th) join into one long range (`_ranges`), which
    read whole would hold ~10x the rows asked (520 MB for 16,384 held-out rows of a 300k-cell file)."""
    values, cols = [np.zeros(0, data.dtype)], [np.zeros(0, indices.dtype)]
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        for s in range(i, j, READ_ENTRIES):
            e = min(s + READ_ENTRIES, j)
            lo, hi = np.searchsorted(want, [s, e])
            if hi > lo:
                local = want[lo:hi] - s
                values.append(np.asarray(data[s:e])[local])
                cols.append(np.asarray(indices[s:e])[local])
    return np.concatenate(values), np.concatenate(cols)


def _ranges(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first rows, ends) of the row ranges read for the sorted unique rows `uniq`: runs of consecutive
    rows, joined where at most GAP_ROWS rows lie between them (a window of a chunked permutation of the
    training rows: its 64-row runs are broken by the held-out rows between them)."""
    cut = np.flatnonzero(np.diff(uniq) > GAP_ROWS + 1) + 1
    return uniq[np.r_[0, cut]], uniq[np.r_[cut, len(uniq)] - 1] + 1


def _dense_rows(elem, uniq: np.ndarray) -> np.ndarray:
    """Sorted unique rows of a dense HDF5 / zarr array: the covering slice when it is at most 4x the rows
    asked (one read), else an orthogonal selection."""
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 4 * len(uniq):
        return np.asarray(elem[lo:hi])[uniq - lo]
    if hasattr(elem, "oindex"):  # zarr
        return np.asarray(elem.oindex[uniq, :])
    return np.asarray(elem[uniq])  # h5py: increasing indices


class View(RowSource):
    """Rows `rows` and columns `cols` of another source (None: all)."""

    def __init__(self, base: RowSource, rows: np.ndarray | None, cols: np.ndarray | None):
        if isinstance(base, View):  # a view of a view reads the base once
            rows = base.rows if rows is None else (np.asarray(rows) if base.rows is None else base.rows[np.asarray(rows)])
            cols = base.cols if cols is None else (np.asarray(cols) if base.cols is None else base.cols[np.asarray(cols)])
            base = base.base
        self.base, self.rows, self.cols = base, None if rows is None else np.asarray(rows), \
            None if cols is None else np.asarray(cols)
        self.sparse, self.dtype, self.on_disk, self.label = base.sparse, base.dtype, base.on_disk, base.label
        self.shape = (base.shape[0] if self.rows is None else len(self.rows),
                      base.shape[1] if self.cols is None else len(self.cols))

    def read(self, rows):
        rows = np.asarray(rows)
        block = self.base.read(rows if self.rows is None else self.rows[rows])
        return block if self.cols is None else block[:, self.cols]

    def chunk_of(self, rows):
        rows = np.asarray(rows)
        return self.base.chunk_of(rows if self.rows is None else self.rows[rows])

    def nbytes(self) -> int:
        share = (self.shape[0] / max(1, self.base.shape[0])) * (self.shape[1] / max(1, self.base.shape[1]))
        return int(self.base.nbytes() * share)


class Held(RowSource):
    """Rows of another source read once and held in memory (a pool of streamed windows): `rows` (sorted,
    unique) of `base`, as `block`; answers `read` for any of those rows and no others."""

    def __init__(self, base: RowSource, rows: np.ndarray, block: Block):
        self.rows, self.block = np.asarray(rows), block
        self.shape, self.dtype, self.sparse, self.label = base.shape, base.dtype, base.sparse, base.label
        self.on_disk = base.on_disk

    def read(self, rows):
        rows = np.asarray(rows)
        at = np.searchsorted(self.rows, rows)
        if rows.size and (at.max() >= len(self.rows) or not np.array_equal(self.rows[at], rows)):
            raise ValueError("rows asked that were not read")
        return self.block[at]

    def nbytes(self) -> int:
        return int(self.block.data.nbytes + self.block.indices.nbytes) if self.sparse else int(self.block.nbytes)


def as_source(x) -> RowSource:
    return x if isinstance(x, RowSource) else Memory(x)


def is_store(path: str | Path) -> bool:
    """Whether `path` is a .zarr AnnData store (a folder) rather than an .h5ad file."""
    path = Path(path)
    return path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists())


def open_anndata(path: str | Path, *, layer: str | None = None, what: str = "data"):
    """(an AnnData with the obs and var of the file and no X, the counts as a Disk source) of an .h5ad
    file or a .zarr store: the counts are not read."""
    import anndata
    from anndata.io import read_elem, sparse_dataset

    path = Path(path)
    try:
        if is_store(path):
            import zarr

            store = zarr.open_group(str(path), mode="r")
        else:
            import h5py

            store = h5py.File(path, "r")
        obs, var = read_elem(store["obs"]), read_elem(store["var"])
        where = "X" if layer is None else f"layers/{layer}"
        if layer is not None and ("layers" not in store or layer not in store["layers"]):
            have = list(store["layers"].keys()) if "layers" in store else []
            raise DataError(f"layer {layer!r} not found in {path}; available layers: {have} (omit --layer for X)")
        elem = store[where]
    except DataError:
        raise
    except Exception as e:  # h5py / zarr / anndata raise many kinds on damaged stores
        raise DataError(f"{what} {str(path)!r} cannot be read as an AnnData (truncated or damaged: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); write or copy it again (adata.write_h5ad / "
                        "adata.write_zarr)") from e
    encoding = elem.attrs.get("encoding-type", "array")
    counts = Disk(sparse_dataset(elem) if encoding in ("csr_matrix", "csc_matrix") else elem,
                  f"{path}:{where}")
    if counts.shape != (len(obs), len(var)):
        raise DataError(f"{path}: the counts are {counts.shape[0]} x {counts.shape[1]} but obs has {len(obs)} rows "
                        f"and var {len(var)}; the store is inconsistent, write it again")
    return anndata.AnnData(obs=obs, var=var), counts
