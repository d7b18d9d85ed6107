"""Windows of streamed counts assembled on the host (`inference.window`) and read ahead in a thread
(`inference.prefetch`): the same arrays as the rows read one by one, the same entries >= 2 as the dense
block's `np.nonzero`, the same windows in the same order, a fixed shape for every window."""

import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from probgex.data import from_anndata
from probgex.inference.minibatch import Minibatches, high_bound, high_per_row, listed
from probgex.inference.prefetch import prefetch
from probgex.inference.window import csr_high, dense_high, read_windows, window_arrays

DATA = Path(__file__).parent / "data" / "kang_muscat.h5ad"


def test_prefetch_delivers_every_item_in_order_and_raises_where_it_failed():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))
    assert list(prefetch(iter([]))) == []

    def failing():
        yield from range(3)
        raise KeyError("late")

    got = []
    with pytest.raises(KeyError, match="late"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [0, 1, 2]
    with pytest.raises(ValueError):
        next(prefetch(iter(range(3)), depth=0))


def test_prefetch_stays_bounded_and_stops_when_left():
    made = []

    def items():
        for k in range(100):
            made.append(k)
            yield k

    before = threading.active_count()
    it = prefetch(items(), depth=1)
    assert next(it) == 0
    threading.Event().wait(0.3)  # the thread runs ahead as far as it may
    assert len(made) <= 3  # the one taken, one queued, one being handed over
    it.close()
    assert threading.active_count() == before and len(made) <= 3


def test_csr_entry_list_equals_the_dense_nonzero_list():
    rng = np.random.default_rng(0)
    x = rng.poisson(0.7, (40, 30)).astype(np.float32) * (rng.random((40, 30)) < 0.5)
    x[3] = 0  # an empty row
    r, g = np.nonzero(listed(x))
    for m in (sp.csr_matrix(x), _shuffled_with_duplicates(x, rng)):
        per_row, genes, counts = csr_high(m)
        np.testing.assert_array_equal(per_row, np.bincount(r, minlength=40))
        np.testing.assert_array_equal(genes, g)
        np.testing.assert_array_equal(counts, x[r, g])
    for a, b in zip(dense_high(x), csr_high(sp.csr_matrix(x)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_csr_entry_counts_with_empty_rows_at_both_ends_and_a_full_row():
    from probgex.inference.minibatch import _high_csr

    rng = np.random.default_rng(3)
    x = rng.poisson(1.5, (12, 9)).astype(np.float32)
    x[[0, 5, 11]] = 0  # empty rows: first, inside, last
    x[7] = rng.integers(2, 9, 9)  # every gene listed
    x[8] = 1  # every gene non-zero, none listed
    m = sp.csr_matrix(x)
    r, g = np.nonzero(listed(x))
    per_row, genes, counts = csr_high(m)
    np.testing.assert_array_equal(per_row, listed(x).sum(1))
    np.testing.assert_array_equal(_high_csr(m), listed(x).sum(1))
    assert per_row[7] == 9 and per_row[8] == 0 and per_row[[0, 5, 11]].sum() == 0
    np.testing.assert_array_equal(genes, g)
    np.testing.assert_array_equal(counts, x[r, g])
    assert genes.dtype == np.int32 and counts.dtype == np.float32 and per_row.dtype == np.int64


def _shuffled_with_duplicates(x, rng):
    """CSR of x with its column indices out of order and some entries split in two (summed when dense)."""
    coo = sp.coo_matrix(x)
    half = coo.data // 2
    rows = np.r_[coo.row, coo.row]
    cols = np.r_[coo.col, coo.col]
    vals = np.r_[half, coo.data - half]
    p = rng.permutation(len(rows))
    order = np.argsort(rows[p], kind="stable")
    rows, cols, vals = rows[p][order], cols[p][order], vals[p][order]
    m = sp.csr_matrix((vals, cols, np.r_[0, np.cumsum(np.bincount(rows, minlength=x.shape[0]))]), shape=x.shape)
    assert not m.has_canonical_format
    return m


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    a = ad.read_h5ad(DATA)
    a = a[np.sort(np.random.default_rng(1).choice(a.n_obs, 300, replace=False)), :80].copy()
    a.X = sp.csr_matrix(a.X)
    path = tmp_path_factory.mktemp("win") / "w.zarr"
    a.write_zarr(path)
    return from_anndata(path, "~ group_id", memory_budget=0, empty="keep"), from_anndata(a, "~ group_id", empty="keep")


def test_window_arrays_are_the_rows_padded_to_one_shape(disk):
    from probgex.inference.svi import _to_device

    streamed, mem = disk
    rows = np.array([5, 6, 7, 40, 41, 200, 250, 251])
    n_high = high_per_row(mem, np.arange(mem.n_obs))
    pad_rows, pad_high = 12, high_bound(n_high, 12)
    got = window_arrays(streamed, rows, high=True, pad_rows=pad_rows, pad_high=pad_high)
    ref = _to_device(mem, rows, high=True)  # the rows put on the device one field at a time, unpadded
    n, k = len(rows), int(ref.high_gene.shape[0])
    for name in ("x", "log_lib", "design", "group", "row"):
        a, b = got[name], np.asarray(getattr(ref, name))
        assert a.shape == (pad_rows,) + b.shape[1:] and a.dtype == b.dtype, name
        np.testing.assert_array_equal(a[:n], b)
        assert not a[n:].any()
    assert got["high_ptr"].shape == (pad_rows + 1,) and got["high_gene"].shape == (pad_high,)
    np.testing.assert_array_equal(got["high_ptr"][: n + 1], np.asarray(ref.high_ptr))
    assert np.all(got["high_ptr"][n:] == k) and 0 < k < pad_high
    np.testing.assert_array_equal(got["high_gene"][:k], np.asarray(ref.high_gene))
    np.testing.assert_array_equal(got["high_count"][:k], np.asarray(ref.high_count))
    assert not got["high_gene"][k:].any() and not got["high_count"][k:].any()
    assert got["offset"] is None and got["high_count"].dtype == np.float32
    dense = window_arrays(mem, rows, high=True, pad_rows=pad_rows, pad_high=pad_high)  # dense block: same
    for name in got:
        np.testing.assert_array_equal(dense[name], got[name]) if got[name] is not None else None


def test_read_ahead_windows_are_the_epochs_windows_in_order(disk):
    streamed, _ = disk
    train = np.flatnonzero(np.arange(streamed.n_obs) % 10 != 3)

    def epoch():
        mb = Minibatches(streamed, train, 8, shuffle=True, rng=np.random.default_rng(4), high=True)
        return list(read_windows(mb, high=True, pad_rows=min(mb.window_rows, len(train)),
                                 pad_high=high_bound(mb.n_high, mb.window_rows)))

    direct, ahead = epoch(), None
    mb = Minibatches(streamed, train, 8, shuffle=True, rng=np.random.default_rng(4), high=True)
    ahead = list(prefetch(read_windows(mb, high=True, pad_rows=min(mb.window_rows, len(train)),
                                       pad_high=high_bound(mb.n_high, mb.window_rows)), 2))
    assert len(direct) == len(ahead) > 1
    for (h1, o1, a1), (h2, o2, a2) in zip(direct, ahead, strict=True):
        np.testing.assert_array_equal(h1, h2)
        np.testing.assert_array_equal(o1, o2)
        assert {k: None if v is None else v.shape for k, v in a1.items()} == \
            {k: None if v is None else v.shape for k, v in a2.items()}
        np.testing.assert_array_equal(a1["x"], a2["x"])
        np.testing.assert_array_equal(a1["high_gene"], a2["high_gene"])
    shapes = {tuple(None if v is None else v.shape for v in a.values()) for _, _, a in ahead}
    assert len(shapes) == 1  # one shape for every window, the last one too: nothing compiled per window


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_heap_pages_go_back_to_the_system():
    from probgex._heap import release_free_heap

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

    if not release_free_heap():
        pytest.skip("the allocator is not glibc")
    blocks = [bytearray(4000) for _ in range(40_000)]  # 160 MB of small heap chunks, touched
    keep = blocks[::64]  # a live chunk every 256 KB: the heap cannot shrink from its top
    del blocks
    before = rss_mb()
    assert release_free_heap()
    assert before - rss_mb() > 80 and len(keep) == 625


def test_thin_rows_of_an_h5ad_read_in_bounded_slices_exactly(tmp_path, monkeypatch):
    """Rows spread thinly (every 3rd: one long joined range) read in slices of at most READ_ENTRIES stored
    entries, cut to the rows asked: the same rows as in memory, whatever the slice length."""
    from probgex import rowsource

    a = ad.read_h5ad(DATA)[:400, :50].copy()
    a.X = sp.csr_matrix(a.X)
    a.write_h5ad(tmp_path / "t.h5ad")
    _, source = rowsource.open_anndata(tmp_path / "t.h5ad")
    rows = np.r_[np.arange(0, 300, 3), [301, 302, 390]]
    want = a.X[rows].toarray()
    window = np.r_[5:70, 72:140, 141:142, 230:300, 305:399]  # runs of rows broken by short and long gaps
    for size in (7, 64, 1 << 22):
        monkeypatch.setattr(rowsource, "READ_ENTRIES", size)
        np.testing.assert_array_equal(source.read(rows).toarray(), want)
        for run in (1, 10**9):  # the rows as runs copied from the slices (runs crossing their ends), or by positions
            monkeypatch.setattr(rowsource, "RUN_ENTRIES", run)
            np.testing.assert_array_equal(source.read(window).toarray(), a.X[window].toarray())
            np.testing.assert_array_equal(source.read(rows).toarray(), want)


def _old_csr_high(m):
    """The entry lists as counted before the sixth pass (an int64 cumsum over every entry): the reference."""
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    keep = listed(m.data)
    per_row = np.diff(np.r_[0, np.cumsum(keep)][m.indptr])
    return per_row.astype(np.int64), m.indices[keep].astype(np.int32), m.data[keep].astype(np.float32)


@pytest.mark.slow  # two small streamed fits
def test_a_streamed_fit_with_the_searched_entry_lists_equals_the_cumsum_one(small, tmp_path, monkeypatch):
    import jax

    import probgex as pg
    from probgex.inference import minibatch, window

    path = tmp_path / "f.h5ad"
    small.write_h5ad(path)
    model = pg.Model("~ group_id", likelihood="nb", latent=pg.latent.Gaussian(dim=2), encoder=(8,), decoder=(8,),
                     library="observed")
    opts = dict(seed=5, max_epochs=3, patience=5, batch_size=8, progress=False, memory_budget=0)
    new = model.fit(path, **opts)
    monkeypatch.setattr(window, "csr_high", _old_csr_high)
    monkeypatch.setattr(minibatch, "_high_csr", lambda m: _old_csr_high(sp.csr_matrix(m))[0])
    old = model.fit(path, **opts)
    assert new.fit_info["streamed"] and len(new.history.train) == 3
    assert new.history.train == old.history.train and new.history.heldout == old.history.heldout
    for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(old.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_window_counts_fill_every_entry_of_an_uninitialized_aligned_buffer(disk, monkeypatch):
    """The window's counts are written into an uninitialized buffer (`aligned_empty`): filled with garbage
    first, every entry is still the rows' count or a padding zero (sparse and dense blocks); the buffer
    starts at a multiple of ALIGN bytes, and a CPU device takes it without a copy."""
    import jax

    from probgex.inference import window

    streamed, mem = disk
    make = window.aligned_empty

    def garbage(shape, dtype):
        a = make(shape, dtype)
        a[...] = np.nan
        return a

    monkeypatch.setattr(window, "aligned_empty", garbage)
    rows = np.array([0, 3, 4, 150, 299])
    for source in (streamed, mem):
        x = window_arrays(source, rows, high=False, pad_rows=9, pad_high=None)["x"]
        np.testing.assert_array_equal(x[:5], mem.rows(rows))
        assert not x[5:].any() and not np.isnan(x).any()
    monkeypatch.undo()
    x = window_arrays(streamed, rows, high=False, pad_rows=9, pad_high=None)["x"]
    assert x.ctypes.data % window.ALIGN == 0 and x.flags.c_contiguous
    if jax.default_backend() == "cpu":
        assert window.put({"x": x})["x"].unsafe_buffer_pointer() == x.ctypes.data
