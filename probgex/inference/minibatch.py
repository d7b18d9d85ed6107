"""Minibatches of fixed shape from a CountData, densified one block at a time.

All data access of the fit goes through `Minibatches`, so the counts may later stream from disk or be
sharded across devices: only one (B, G) block is dense at a time, and every block has the same shape
(the last one padded and masked), so the jitted step compiles once.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from probgex.data import CountData
from probgex.models.batch import Batch


def make_batch(data: CountData, rows: np.ndarray, size: int, scale: float, *,
               with_counts: bool = True, log_lib: np.ndarray | None = None) -> Batch:
    """The rows `rows` of `data` as a Batch of exactly `size` rows (zero-padded, masked)."""
    n = len(rows)
    pad = size - n
    if pad < 0:
        raise ValueError(f"{n} rows do not fit in a batch of {size}")
    lib = np.log(data.library_size[rows]) if log_lib is None else log_lib
    groups = np.zeros(n, np.int32) if data.groups is None else data.groups[rows]
    x = None
    if with_counts:
        x = jnp.asarray(np.pad(data.rows(rows), ((0, pad), (0, 0))))
    return Batch(
        x=x,
        log_lib=jnp.asarray(np.pad(lib.astype(np.float32), (0, pad))),
        design=jnp.asarray(np.pad(data.design[rows], ((0, pad), (0, 0)))),
        group=jnp.asarray(np.pad(groups.astype(np.int32), (0, pad))),
        mask=jnp.asarray(np.arange(size) < n),
        scale=jnp.asarray(scale, jnp.float32),
        offset=None if data.offset is None else jnp.asarray(
            np.pad(data.offset[rows].astype(np.float32), ((0, pad), (0, 0)))),
    )


class Minibatches:
    """Iterates over `index` (row positions of `data`) in blocks of `batch_size` rows.

    With `shuffle`, the order is a permutation drawn from `rng` anew each pass. `n_total` is the
    number of observations the minibatch ELBO stands for: each block is scaled by n_total / rows in it.
    """

    def __init__(self, data: CountData, index: np.ndarray, batch_size: int, *, shuffle: bool,
                 rng: np.random.Generator | None = None, n_total: int | None = None):
        if len(index) == 0:
            raise ValueError("no observations to iterate over")
        self.data, self.index = data, np.asarray(index)
        self.batch_size = min(batch_size, len(self.index))
        self.shuffle, self.rng = shuffle, rng
        self.n_total = len(self.index) if n_total is None else n_total

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.rng.permutation(self.index) if self.shuffle else self.index
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield make_batch(self.data, rows, self.batch_size, self.n_total / len(rows))
