"""Windows of counts streamed from disk, assembled on the host: one window's rows read once (CSR or dense),
densified into a buffer of the padded shape, its entries >= 2 listed straight from the CSR block (no pass
over the dense window), every array zero-padded with numpy, then put on the device in one transfer.

Every window has the same shapes (`pad_rows` rows, `pad_high` listed entries), so nothing is compiled per
window: padding on the device (`jnp.pad` of arrays whose length changed from window to window) compiled a
program for every new length, about 0.7 MB each, kept for the life of the process; a long fit's memory
grew with its windows. No JAX here but `put`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from probgex.data import CountData
from probgex.inference.minibatch import listed
from probgex.rowsource import RowSource

FIELDS = ("x", "log_lib", "design", "group", "offset", "high_ptr", "high_gene", "high_count", "row")


def csr_high(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries >= 2 of a CSR block (`listed`), in the order of `np.nonzero` of the dense block (row-major,
    genes increasing): (entries per row, genes int32, counts float32)."""
    if not m.has_canonical_format:  # unsorted or duplicated column indices: as the dense block has them
        m = m.copy()
        m.sum_duplicates()
    at = np.flatnonzero(listed(m.data))  # the listed entries' positions, increasing
    per_row = np.diff(np.searchsorted(at, m.indptr))  # listed entries before each row pointer, differenced
    return per_row.astype(np.int64), m.indices[at].astype(np.int32), m.data[at].astype(np.float32)


def dense_high(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same list from a dense block."""
    r, g = np.nonzero(listed(x))
    return np.bincount(r, minlength=len(x)).astype(np.int64), g.astype(np.int32), x[r, g].astype(np.float32)


ALIGN = 64  # bytes: a host buffer aligned to it is used by the CPU device as it is (`put` copies nothing)


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized array whose data start at a multiple of ALIGN bytes. JAX's CPU client takes such a
    numpy array without copying it (`jax.device_put` aliases it; numpy's own large arrays start 16 or 32
    bytes past a page and are copied: 16 MB a window, ~1 ms quiet, ~4 ms on the loaded 2 cores), so the
    window must not be written after `put`: every window gets a buffer of its own."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    skip = (-raw.ctypes.data) % ALIGN
    return raw[skip : skip + nbytes].view(dtype).reshape(shape)


def window_arrays(data: CountData, rows: np.ndarray, *, high: bool, pad_rows: int, pad_high: int | None,
                  row_ids: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """The rows `rows` of `data` as host arrays of one fixed shape (the fields of `svi.DeviceData`): counts
    (pad_rows, G) float32, zero rows after len(rows); with `high`, their entries >= 2 as row pointers
    (pad_rows + 1, the last repeated) and a list of `pad_high` genes and counts (zeros after the real ones).
    `row_ids`: the rows' positions in the fitted data (`rows` when None)."""
    rows = np.asarray(rows)
    n, extra = len(rows), pad_rows - len(rows)
    if extra < 0:
        raise ValueError(f"{n} rows do not fit in a window of {pad_rows}")
    block = data.counts.read(rows) if isinstance(data.counts, RowSource) else data.counts[rows]
    x = aligned_empty((pad_rows, data.n_genes), np.float32)
    x[n:] = 0
    if sp.issparse(block):
        block = sp.csr_matrix(block)
        if block.dtype != np.float32:
            block = block.astype(np.float32)
        block.toarray(out=x[:n])  # scipy zeroes `out`, then adds the entries into it
    else:
        x[:n] = block
    out: dict[str, np.ndarray | None] = dict.fromkeys(FIELDS)

    def pad(a, dtype):
        a = np.asarray(a, dtype)
        return np.concatenate([a, np.zeros((extra,) + a.shape[1:], dtype)])

    out.update(x=x, log_lib=pad(np.log(data.library_size[rows]), np.float32),
               design=pad(data.design[rows], np.float32 if data.design.dtype == np.float64 else data.design.dtype),
               group=pad(np.zeros(n) if data.groups is None else data.groups[rows], np.int32),
               row=pad(rows if row_ids is None else row_ids, np.int32))
    if data.offset is not None:
        out["offset"] = pad(data.offset[rows], np.float32)
    if high:
        per_row, genes, counts = csr_high(block) if sp.issparse(block) else dense_high(x[:n])
        if len(genes) > pad_high:
            raise ValueError(f"{len(genes)} entries >= 2 do not fit in a list of {pad_high}")
        ptr = np.zeros(pad_rows + 1, np.int32)
        ptr[1 : n + 1] = np.cumsum(per_row)
        ptr[n + 1 :] = ptr[n]
        more = pad_high - len(genes)
        out.update(high_ptr=ptr, high_gene=np.concatenate([genes, np.zeros(more, np.int32)]),
                   high_count=np.concatenate([counts, np.zeros(more, np.float32)]))
    return out


def read_windows(train, *, high: bool, pad_rows: int, pad_high: int | None) -> Iterator[tuple]:
    """(positions held, the window's order, its host arrays) for every window of one epoch of the
    streamed minibatches `train` (`Minibatches.pools`): each pool's rows read in one go when its first
    window is asked for, each window assembled from them when asked for."""
    for pool in train.pools():
        data = train.pool_data(pool)
        for held, order in pool:
            rows = train.index[held]
            yield held, order, window_arrays(data, rows, high=high, pad_rows=pad_rows, pad_high=pad_high)


def in_order_windows(mb, *, high: bool, pad_rows: int, pad_high: int | None) -> Iterator[tuple]:
    """The same triples for the rows of `mb` (`Minibatches`) in their order, `pad_rows` at a time (the held-out
    pass): one read of a window's rows, each of a .zarr store's stored chunks decoded once a window."""
    for w in range(0, len(mb.index), pad_rows):
        held = np.arange(w, min(w + pad_rows, len(mb.index)))
        yield held, np.arange(len(held)), window_arrays(mb.data, mb.index[held], high=high, pad_rows=pad_rows,
                                                        pad_high=pad_high)


def put(arrays: dict[str, np.ndarray | None]):
    """The host arrays of a window on the device, in one transfer, as `svi.DeviceData` fields (on a CPU
    device the counts' aligned buffer is taken as it is, `aligned_empty`)."""
    import jax

    return jax.device_put(arrays)
