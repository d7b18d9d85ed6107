"""Minibatches of fixed shape from a CountData, densified one block at a time.

All data access of the fit goes through `Minibatches`, so the counts may later stream from disk or be
sharded across devices: only one (B, G) block is dense at a time, and every block has the same shape
(the last one padded and masked), so the jitted step compiles once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from probgex.data import CountData
from probgex.rowsource import Held, RowSource
from probgex.models.batch import Batch, HighCounts


def listed(x: np.ndarray) -> np.ndarray:
    """The entries whose count term r(x, theta) is not 0: x >= 2 for the (validated) integer counts;
    written as x not in {0, 1} so that any other value would be listed too and the objective stay exact."""
    return (x != 0) & (x != 1)


def high_per_row(data: CountData, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Number of entries with count >= 2 in each of `rows`: (len(rows),) int64."""
    rows = np.asarray(rows)
    if sp.issparse(data.counts):
        return _high_csr(data.counts[rows]).astype(np.int64)
    if isinstance(data.counts, RowSource) and data.counts.sparse:  # CSR on disk: counted in CSR blocks
        return np.concatenate([_high_csr(sp.csr_matrix(data.counts.read(rows[s : s + 4 * chunk])))
                               for s in range(0, len(rows), 4 * chunk)] + [np.zeros(0, np.int64)]).astype(np.int64)
    return np.concatenate([listed(data.rows(rows[s : s + chunk])).sum(1) for s in range(0, len(rows), chunk)]
                          + [np.zeros(0, np.int64)]).astype(np.int64)


def _high_csr(m: sp.csr_matrix) -> np.ndarray:
    """Entries >= 2 in each row of a CSR block (one block read at a time)."""
    return np.diff(np.searchsorted(np.flatnonzero(listed(m.data)), m.indptr))


def high_bound(n_high: np.ndarray, batch_size: int) -> int:
    """An exact bound on the entries >= 2 of any batch of `batch_size` distinct rows: the sum of the
    `batch_size` largest per-row numbers (at least 1, so the list is never empty)."""
    top = np.sort(np.asarray(n_high))[::-1][:batch_size]
    return max(int(top.sum()), 1)


def high_typical(n_high: np.ndarray, batch_size: int) -> int:
    """A list length that fits nearly every random batch: the mean number of entries >= 2 per batch plus
    6 standard deviations (rounded up to 256, at most `high_bound`). Callers check each batch against
    it and use `high_bound` for any that does not fit, so no entry is ever dropped."""
    n = np.asarray(n_high, np.float64)
    typical = batch_size * n.mean() + 6.0 * np.sqrt(batch_size) * n.std()
    return min(max(int(-(-typical // 256) * 256), 256), high_bound(n, batch_size))


def host_high(x: np.ndarray, size: int) -> HighCounts:
    """The entries >= 2 of a dense (B, G) block as a `HighCounts` list of length `size`."""
    r, g = np.nonzero(listed(x))
    if len(r) > size:
        raise ValueError(f"{len(r)} entries >= 2 do not fit in a list of {size}")
    pad = size - len(r)
    row = np.concatenate([r, np.full(pad, x.shape[0] - 1)]).astype(np.int32)
    gene = np.concatenate([g, np.zeros(pad, np.int64)]).astype(np.int32)
    count = np.concatenate([x[r, g], np.zeros(pad, x.dtype)]).astype(np.float32)
    return HighCounts(jnp.asarray(row), jnp.asarray(gene), jnp.asarray(count))


def make_batch(data: CountData, rows: np.ndarray, size: int, scale: float, *,
               with_counts: bool = True, log_lib: np.ndarray | None = None,
               high_size: int | None = None, row_ids: np.ndarray | None = None) -> Batch:
    """The rows `rows` of `data` as a Batch of exactly `size` rows (zero-padded, masked). With
    `high_size`, the batch also lists its entries >= 2 (`HighCounts`, that many entries)."""
    n = len(rows)
    pad = size - n
    if pad < 0:
        raise ValueError(f"{n} rows do not fit in a batch of {size}")
    lib = np.log(data.library_size[rows]) if log_lib is None else log_lib
    groups = np.zeros(n, np.int32) if data.groups is None else data.groups[rows]
    x = high = None
    if with_counts:
        dense = np.pad(data.rows(rows), ((0, pad), (0, 0)))
        x = jnp.asarray(dense)
        high = None if high_size is None else host_high(dense, high_size)
    return Batch(
        x=x,
        log_lib=jnp.asarray(np.pad(lib.astype(np.float32), (0, pad))),
        design=jnp.asarray(np.pad(data.design[rows], ((0, pad), (0, 0)))),
        group=jnp.asarray(np.pad(groups.astype(np.int32), (0, pad))),
        mask=jnp.asarray(np.arange(size) < n),
        scale=jnp.asarray(scale, jnp.float32),
        offset=None if data.offset is None else jnp.asarray(
            np.pad(data.offset[rows].astype(np.float32), ((0, pad), (0, 0)))),
        high=high,
        row=jnp.asarray(np.pad(np.asarray(rows if row_ids is None else row_ids, np.int32), (0, pad))),
    )


class Minibatches:
    """Iterates over `index` (row positions of `data`) in blocks of `batch_size` rows.

    With `shuffle`, the order is a permutation drawn from `rng` anew each pass. `n_total` is the
    number of observations the minibatch ELBO stands for: each block is scaled by n_total / rows in it.
    With `high`, each block also lists its entries >= 2, in a list of one fixed length for all blocks.
    `multiple`: the block size is rounded up to a multiple of it (the devices a block is split across).
    `process` = (p, count): with several processes, every process draws the same global order and
    yields only its p-th part of each global batch (read from its own rows), to be assembled into the
    global batch across processes (`inference.sharding.global_batch`).
    """

    def __init__(self, data: CountData, index: np.ndarray, batch_size: int, *, shuffle: bool,
                 rng: np.random.Generator | None = None, n_total: int | None = None, high: bool = False,
                 multiple: int = 1, process: tuple[int, int] = (0, 1)):
        if len(index) == 0:
            raise ValueError("no observations to iterate over")
        self.data, self.index = data, np.asarray(index)
        self.batch_size = min(batch_size, len(self.index))
        # a multiple of the devices a batch is split across (the last rows padded and masked)
        self.batch_size = -(-self.batch_size // multiple) * multiple
        self.shuffle, self.rng = shuffle, rng
        # several processes: each global batch is cut in `count` equal parts, this process reading part `p`
        self.process, self.local_size = process, self.batch_size // process[1]
        self.n_total = len(self.index) if n_total is None else n_total
        self.n_high = high_per_row(data, self.index) if high else None
        self.high_size = None if self.n_high is None else high_bound(self.n_high, self.batch_size)

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        p, count = self.process
        if self.shuffle and self.data.streamed and count == 1:
            yield from self._streamed()
            return
        if not self.shuffle and self.data.streamed and count == 1:
            yield from self._in_order()
            return
        order = self.rng.permutation(self.index) if self.shuffle else self.index
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            if count > 1:  # this process's part of the global batch (the ELBO scale is the global batch's)
                part = rows[p * self.local_size : (p + 1) * self.local_size]
                yield make_batch(self.data, part, self.local_size, self.n_total / len(rows), high_size=self.high_size)
                continue
            yield make_batch(self.data, rows, self.batch_size, self.n_total / len(rows), high_size=self.high_size)

    @property
    def window_rows(self) -> int:
        """Rows read together when streaming (WINDOW_BATCHES batches)."""
        return self.batch_size * WINDOW_BATCHES

    def windows(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled windows for counts on disk (`pools`, one after the other). Yields (positions in `index`
        of the window's rows, sorted: one read, each run a slice; the window's shuffled order as positions
        into those)."""
        for pool in self.pools():
            yield from pool

    def pools(self) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
        """One epoch of shuffled windows for counts on disk, read as contiguous chunks (the approach of
        scverse's annbatch), in pools of windows whose rows are read together (`window_data` of the pool's
        rows). Where the counts lie in compressed stored chunks (a .zarr store, `RowSource.chunk_of`), the
        rows are taken a stored chunk at a time, the chunks in random order, and shuffled across a pool of
        POOL_WINDOWS windows (~16k rows from ~40 chunks at 154k entries a chunk): each stored chunk is
        decoded about once an epoch (its rows read in one pool), not once for every run of rows read from
        it. Elsewhere (memory, .h5ad) a pool is one window: runs of CHUNK_ROWS consecutive rows in random
        order, WINDOW_BATCHES batches' worth at a time."""
        window = self.window_rows
        chunks = self.data.counts.chunk_of(self.index) if isinstance(self.data.counts, RowSource) else None
        if chunks is None:
            order, pool = chunked_permutation(np.arange(len(self.index)), self.rng, CHUNK_ROWS), window
        else:
            pool = window * POOL_WINDOWS
            order = stored_chunk_permutation(chunks, self.rng, pool)
        for p in range(0, len(order), pool):
            part = order[p : p + pool]
            out = []
            for w in range(0, len(part), window):
                pos = part[w : w + window]
                held = np.sort(pos)
                out.append((held, np.searchsorted(held, pos)))
            yield out

    def window_data(self, held: np.ndarray) -> CountData:
        """The rows at positions `held` of `index` with their counts read into memory (one read)."""
        local = self.data.subset(self.index[held])
        return replace(local, counts=local.rows(np.arange(len(held))))

    def pool_data(self, pool: list[tuple[np.ndarray, np.ndarray]]) -> CountData:
        """The data with the counts of a pool's rows read from disk in one go and held (`rowsource.Held`):
        its windows then read from memory. A pool of one window is read by the window itself."""
        if len(pool) == 1 or not isinstance(self.data.counts, RowSource):
            return self.data
        rows = np.sort(self.index[np.concatenate([held for held, _ in pool])])
        return replace(self.data, counts=Held(self.data.counts, rows, self.data.counts.read(rows)))

    def _in_order(self) -> Iterator[Batch]:
        """The batches of counts on disk in order (the held-out pass), a window's rows read at a time: one
        read of the rows of 16 batches, not one a batch (a .zarr store's held-out rows, every ~10th, touch
        ~4 stored chunks a batch of 128, each decoded whole; a window of them decodes each chunk once)."""
        for w in range(0, len(self.index), self.window_rows):
            held = np.arange(w, min(w + self.window_rows, len(self.index)))
            local = self.window_data(held)
            for start in range(0, len(held), self.batch_size):
                p = np.arange(start, min(start + self.batch_size, len(held)))
                yield make_batch(local, p, self.batch_size, self.n_total / len(p), high_size=self.high_size,
                                 row_ids=self.index[held][p])

    def _streamed(self) -> Iterator[Batch]:
        """Shuffled batches of counts on disk, one pool of windows read at a time (`pools`)."""
        for pool in self.pools():
            data = self.pool_data(pool)
            for held, order in pool:
                local = data.subset(self.index[held])
                local = replace(local, counts=local.rows(np.arange(len(held))))
                for start in range(0, len(order), self.batch_size):
                    p = order[start : start + self.batch_size]
                    yield make_batch(local, p, self.batch_size, self.n_total / len(p), high_size=self.high_size,
                                     row_ids=self.index[held][p])


CHUNK_ROWS = 64  # consecutive rows read together when streaming from disk
WINDOW_BATCHES = 16  # batches whose rows are read, and shuffled, together
POOL_WINDOWS = 8  # windows whose rows are read, and shuffled, together from a store of compressed chunks


def chunked_permutation(index: np.ndarray, rng: np.random.Generator, chunk: int) -> np.ndarray:
    """`index` cut into runs of `chunk` consecutive entries, the runs in random order, then the entries
    shuffled within each window of 16 runs: every entry once, reads mostly contiguous."""
    runs = [index[i : i + chunk] for i in range(0, len(index), chunk)]
    order = np.concatenate([runs[k] for k in rng.permutation(len(runs))])
    span = chunk * 16
    for w in range(0, len(order), span):
        order[w : w + span] = rng.permutation(order[w : w + span])
    return order


def stored_chunk_permutation(chunks: np.ndarray, rng: np.random.Generator, pool: int) -> np.ndarray:
    """Positions 0..len(chunks)-1 grouped by their stored chunk `chunks` (the positions of one chunk
    together, the chunks in random order), then shuffled within each pool of `pool` positions: every
    position once, each stored chunk's positions in one pool (two where a pool ends inside it)."""
    chunks = np.asarray(chunks)
    present = np.zeros(int(chunks.max()) + 1 if chunks.size else 0, bool)  # the chunks' distinct ids, as
    present[chunks] = True  # np.unique would give them, without its sorted copy and int64 inverse (~5 arrays
    uniq = np.flatnonzero(present)  # of 8 bytes a row at once: ~35 MB at 900k rows)
    rank = np.zeros(len(present), np.int32)  # each chunk id's place in the random order of the chunks
    rank[uniq[rng.permutation(len(uniq))]] = np.arange(len(uniq), dtype=np.int32)
    order = np.argsort(rank[chunks], kind="stable")
    for w in range(0, len(order), pool):
        order[w : w + pool] = rng.permutation(order[w : w + pool])
    return order
