"""Counts streamed from disk (`probgex.rowsource`): a backed .h5ad or a .zarr store read in row chunks
gives the same CountData rows, margins and validation errors as the counts in memory, and a fit on
streamed counts follows the in-memory fit's loss to float32 rounding."""

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from probgex.data import from_anndata
from probgex.errors import DataError
from probgex.rowsource import Disk, open_anndata



def _write(a: ad.AnnData, path: Path, dense: bool) -> Path:
    b = a.copy()
    if dense:
        b.X = np.asarray(b.X.todense())
    b.write_zarr(path) if path.suffix == ".zarr" else b.write_h5ad(path)
    return path


@pytest.mark.parametrize("name,dense", [("c.h5ad", False), ("d.h5ad", True), ("c.zarr", False), ("d.zarr", True)])
def test_streamed_rows_match_memory(small, tmp_path, name, dense):
    path = _write(small, tmp_path / name, dense)
    mem = from_anndata(small, "~ group_id", empty="keep")
    disk = from_anndata(path, "~ group_id", memory_budget=0, empty="keep")
    assert disk.streamed and not mem.streamed
    assert isinstance(open_anndata(path)[1], Disk)
    idx = np.random.default_rng(0).choice(small.n_obs, 50)  # unsorted, with repeats
    np.testing.assert_array_equal(disk.rows(idx), mem.rows(idx))
    np.testing.assert_array_equal(disk.library_size, mem.library_size)
    np.testing.assert_array_equal(disk.design, mem.design)
    sub = disk.subset(np.arange(10, 40))
    np.testing.assert_array_equal(sub.rows(np.arange(5)), mem.rows(np.arange(10, 15)))
    # a budget the counts fit: read into memory as before
    assert not from_anndata(path, "~ group_id", empty="keep").streamed


@pytest.mark.parametrize("name,dense", [("c.h5ad", False), ("d.h5ad", True), ("c.zarr", False), ("d.zarr", True)])
def test_disk_reads_any_row_pattern_exactly(small, tmp_path, name, dense):
    """Runs of rows broken by gaps shorter and longer than GAP_ROWS (a streamed window of training rows),
    one contiguous block, a single row, repeats out of order, no rows: the rows of the matrix in memory."""
    from probgex.rowsource import GAP_ROWS

    _, disk = open_anndata(_write(small, tmp_path / name, dense))
    x = small.X.toarray()
    window = np.r_[3:20, 25:40, 41:43, 43 + GAP_ROWS + 5:200]  # gaps of 5, 1, 0 and GAP_ROWS + 5 rows
    for rows in (window, np.arange(17, 150), np.array([239]), np.array([90, 3, 90, 3, 200, 0]),
                 np.zeros(0, np.int64)):
        block = disk.read(rows)
        assert sp.issparse(block) != dense
        got = block.toarray() if sp.issparse(block) else np.asarray(block)
        np.testing.assert_array_equal(got, x[rows])


def test_dropping_empty_genes_and_aligning_genes_streams(small, tmp_path):
    a = small.copy()
    x = np.asarray(a.X.todense())
    x[:, 3] = 0  # an all-zero gene is dropped
    a.X = sp.csr_matrix(x)
    path = _write(a, tmp_path / "e.h5ad", dense=False)
    with pytest.warns(UserWarning, match="dropping 1 all-zero genes"):
        disk = from_anndata(path, "~ 1", memory_budget=0)
    with pytest.warns(UserWarning, match="dropping 1 all-zero genes"):
        mem = from_anndata(a, "~ 1")
    assert list(disk.var_names) == list(mem.var_names)
    np.testing.assert_array_equal(disk.rows(np.arange(30)), mem.rows(np.arange(30)))
    genes = list(a.var_names[[7, 2, 11]])  # the fitted genes, in their own order
    aligned = from_anndata(path, encoding=mem.encoding, genes=genes, memory_budget=0, empty="keep")
    np.testing.assert_array_equal(aligned.rows(np.arange(5)), a[:5, genes].X.toarray())


@pytest.mark.parametrize("bad,message", [(-1, "negative values"), (2.5, "non-integer values"),
                                         (np.nan, "NaN or infinite")])
def test_validation_streams_with_the_same_errors(small, tmp_path, bad, message):
    a = small.copy()
    x = np.asarray(a.X.todense(), np.float32)
    x[200, 17] = bad
    a.X = sp.csr_matrix(x)
    path = _write(a, tmp_path / "bad.zarr", dense=False)
    with pytest.raises(DataError, match=message):
        from_anndata(path, "~ 1", memory_budget=0)


def test_csc_counts_are_refused_for_streaming(small, tmp_path):
    a = small.copy()
    a.X = sp.csc_matrix(a.X)
    path = tmp_path / "csc.h5ad"
    a.write_h5ad(path)
    with pytest.raises(DataError, match="CSC.*cannot be read by rows"):
        from_anndata(path, "~ 1", memory_budget=0)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        from_anndata(tmp_path / "nope.h5ad")
    (tmp_path / "t.h5ad").write_text("gene,count\n")
    with pytest.raises(DataError, match="not an .h5ad"):
        from_anndata(tmp_path / "t.h5ad")


@pytest.mark.slow  # a fit (the default suite is near its 10-minute budget)
def test_streamed_fit_follows_the_in_memory_fit(small, tmp_path):
    import probgex as pg

    path = _write(small, tmp_path / "fit.zarr", dense=False)
    opts = dict(seed=0, holdout=0.0, max_epochs=4, batch_size=256, progress=False)  # one batch an epoch
    model = pg.Model("~ group_id", likelihood="nb", library="observed")
    mem = model.fit(small, **opts)
    disk = model.fit(path, memory_budget=0, **opts)
    assert disk.fit_info["streamed"] and not mem.fit_info["streamed"]
    np.testing.assert_allclose(disk.history.train, mem.history.train, rtol=1e-5)
    np.testing.assert_allclose(disk.params["gp_loc"], mem.params["gp_loc"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a fit (the default suite is near its 10-minute budget)
def test_shell_streams_and_info_reports_it(small, tmp_path):
    import json

    from probgex.cli import app

    path = _write(small, tmp_path / "cli.zarr", dense=False)
    out = tmp_path / "m.npz"
    r = CliRunner().invoke(app, ["fit", str(path), "--out", str(out), "--formula", "~ group_id",
                                 "--max-epochs", "2", "--memory-budget", "1e-6"])
    assert r.exit_code == 0, r.output
    assert "streaming them from disk" in r.output
    r = CliRunner().invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["fit_info"]["streamed"] is True and info["fit_info"]["n_obs"] == small.n_obs
    assert info["spec"]["formula"] == "~ group_id" and info["history"]["epochs"] == 2
    r = CliRunner().invoke(app, ["info", str(tmp_path / "none.npz")])
    assert r.exit_code == 2 and "not found" in r.output


@pytest.mark.slow  # a fit (the default suite is near its 10-minute budget)
def test_prediction_written_block_by_block_equals_the_in_memory_one(small, tmp_path):
    import xarray as xr

    import probgex as pg
    from probgex.inference import predict as pred_mod

    fit = pg.Model("~ group_id", likelihood="nb", library="observed").fit(small, seed=0, max_epochs=3,
                                                                          progress=False)
    obs = small.obs.iloc[:70]
    old = pred_mod.BLOCK_ENTRIES
    pred_mod.BLOCK_ENTRIES = 12 * 60 * 8  # blocks of 8 rows (both ways: a block's draws depend on its key)
    try:
        mem = fit.predict(obs, n_samples=12, levels=(0.5, 0.9), seed=4)
        sizes = pred_mod.predict_to_file(fit, obs, tmp_path / "p.nc", n_samples=12, levels=(0.5, 0.9), seed=4)
    finally:
        pred_mod.BLOCK_ENTRIES = old
    assert sizes == {"sample": 12, "obs": 70, "gene": 60, "level": 2}
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as disk:
        for v in ("counts", "mean", "sd", "lower", "upper"):
            np.testing.assert_array_equal(disk[v].values, mem[v].values)
        assert list(disk["obs"].values) == list(mem["obs"].values)
        assert list(disk["gene"].values) == list(mem["gene"].values)
        assert disk.attrs["likelihood"] == "nb"


def test_info_prints_the_header_of_a_fitted_model(glm_fit, glm_ckpt):
    import json

    from probgex.cli import app

    r = CliRunner().invoke(app, ["info", str(glm_ckpt)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["fit_info"]["streamed"] is False and info["fit_info"]["devices"] == 1
    assert info["fit_info"]["n_obs"] == glm_fit.fit_info["n_obs"] and info["fit_info"]["processes"] == 1
    assert info["history"]["epochs"] == len(glm_fit.history.train)
    assert info["history"]["best_epoch"] == glm_fit.history.best_epoch
    assert info["spec"] == glm_fit.spec.to_dict()


def test_pseudobulk_sums_counts_on_disk_in_chunks(small, tmp_path):
    from probgex.power.pseudobulk import _sums, pseudobulk

    path = _write(small, tmp_path / "pb.zarr", dense=False)
    mem = pseudobulk(small, "sample_id", min_cells=1)
    disk = pseudobulk(path, "sample_id", min_cells=1, memory_budget=0)
    np.testing.assert_array_equal(disk.X, mem.X)
    assert list(disk.obs_names) == list(mem.obs_names)
    np.testing.assert_array_equal(disk.obs["n_cells"], mem.obs["n_cells"])
    # the chunked sum itself, with chunks smaller than the data
    _, source = open_anndata(path)
    codes = np.arange(small.n_obs) % 3
    direct = np.stack([np.asarray(small.X[codes == k].sum(0)).ravel() for k in range(3)])
    np.testing.assert_array_equal(_sums(source, codes, 3, chunk=37), direct)


def test_stage1_mlp_trains_from_minibatches_of_counts_on_disk(small, tmp_path):
    from probgex.mean.mlp import MLPMean

    path = _write(small, tmp_path / "mlp.zarr", dense=False)
    mem = from_anndata(small, "~ group_id", empty="keep")
    disk = from_anndata(path, "~ group_id", memory_budget=0, empty="keep")
    a = MLPMean.train(mem, seed=0, max_epochs=4, progress=False)
    b = MLPMean.train(disk, seed=0, max_epochs=4, progress=False)  # targets read batch by batch
    np.testing.assert_allclose(np.array(b.history), np.array(a.history), rtol=1e-4)
    np.testing.assert_allclose(b.predict_log1p(mem.design[:5]), a.predict_log1p(mem.design[:5]), rtol=1e-3, atol=1e-4)


def test_streamed_windows_visit_every_row_once_and_read_it_exactly(small, tmp_path):
    """A streamed epoch (`Minibatches.windows`) over training rows broken by held-out ones: every row once,
    each window read from the .zarr store in one go equal to the rows in memory."""
    from probgex.inference.minibatch import Minibatches

    path = _write(small, tmp_path / "w.zarr", dense=False)
    disk = from_anndata(path, "~ group_id", memory_budget=0, empty="keep")
    mem = from_anndata(small, "~ group_id", empty="keep")
    train = np.flatnonzero(np.arange(small.n_obs) % 10 != 3)  # every 10th row held out
    mb = Minibatches(disk, train, 4, shuffle=True, rng=np.random.default_rng(5))
    seen = []
    for held, order in mb.windows():
        assert np.all(np.diff(held) > 0) and sorted(order) == list(range(len(held)))
        np.testing.assert_array_equal(mb.window_data(held).rows(order), mem.rows(train[held][order]))
        seen.append(train[held][order])
    assert sorted(np.concatenate(seen).tolist()) == train.tolist()


def test_entries_above_one_are_counted_from_csr_blocks_on_disk(small, tmp_path):
    from probgex.inference.minibatch import high_per_row

    disk = from_anndata(_write(small, tmp_path / "h.h5ad", dense=False), "~ 1", memory_budget=0, empty="keep")
    rows = np.random.default_rng(2).permutation(small.n_obs)[:200]
    np.testing.assert_array_equal(high_per_row(disk, rows, chunk=16), (small.X.toarray()[rows] >= 2).sum(1))


def _write_chunked(a: ad.AnnData, path: Path, entries: int) -> Path:
    """A .zarr store whose CSR values and column indices are stored in chunks of `entries` entries."""
    import zarr
    from anndata.io import write_elem

    b = a.copy()
    del b.X
    b.write_zarr(path)
    group = zarr.open_group(str(path), mode="a", use_consolidated=False)
    write_elem(group, "X", sp.csr_matrix(a.X), dataset_kwargs={"chunks": (entries,)})
    with warnings.catch_warnings():  # zarr 3 says consolidated metadata is not in its format's specification
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))
    return path


def test_zarr_windows_take_stored_chunks_whole_and_shuffle_them_in_pools(small, tmp_path, monkeypatch):
    """On a .zarr store the streamed epoch takes each stored chunk's rows into one pool of windows (two
    where a pool ends inside it), so each chunk is decoded about once an epoch; every training row once,
    read exactly; an .h5ad keeps one window a pool (the permutation of before)."""
    from probgex.inference import minibatch
    from probgex.inference.minibatch import Minibatches

    monkeypatch.setattr(minibatch, "POOL_WINDOWS", 3)
    path = _write_chunked(small, tmp_path / "k.zarr", 200)  # ~11 rows a stored chunk, 22 chunks
    disk = from_anndata(path, "~ group_id", memory_budget=0, empty="keep")
    mem = from_anndata(small, "~ group_id", empty="keep")
    train = np.flatnonzero(np.arange(small.n_obs) % 10 != 3)
    chunk = disk.counts.chunk_of(train)
    indptr = np.r_[0, np.cumsum(np.diff(sp.csr_matrix(small.X).indptr))]
    np.testing.assert_array_equal(chunk, indptr[train] // 200)
    mb = Minibatches(disk, train, 4, shuffle=True, rng=np.random.default_rng(5))  # windows of 64 rows
    pools = list(mb.pools())
    assert len(pools) == 2 and [len(p) for p in pools] == [3, 1]
    seen, incidences = [], 0
    for pool in pools:
        data = mb.pool_data(pool)
        for held, order in pool:
            local = data.subset(train[held])
            np.testing.assert_array_equal(local.rows(order), mem.rows(train[held][order]))
            seen.append(train[held][order])
        incidences += len(np.unique(chunk[np.concatenate([h for h, _ in pool])]))
    assert sorted(np.concatenate(seen).tolist()) == train.tolist()
    assert incidences <= len(np.unique(chunk)) + len(pools) - 1  # a chunk split only where a pool ends
    first = np.concatenate([train[h][o] for h, o in pools[0]])  # shuffled across the pool's chunks
    assert len(np.unique(chunk[first[:8]])) > 1
    h5 = from_anndata(_write(small, tmp_path / "k.h5ad", dense=False), "~ group_id", memory_budget=0, empty="keep")
    assert h5.counts.chunk_of(train) is None
    assert all(len(p) == 1 for p in Minibatches(h5, train, 4, shuffle=True, rng=np.random.default_rng(5)).pools())


def test_held_out_batches_of_counts_on_disk_read_a_window_at_a_time(small, tmp_path):
    """The batches in order (the held-out pass) of counts on disk, read 16 batches at a time, equal the
    batches of the counts in memory."""
    from probgex.inference.minibatch import Minibatches

    disk = from_anndata(_write_chunked(small, tmp_path / "h.zarr", 200), "~ group_id", memory_budget=0, empty="keep")
    mem = from_anndata(small, "~ group_id", empty="keep")
    held = np.flatnonzero(np.arange(small.n_obs) % 3 == 1)  # 80 rows: two windows of 16 batches of 3
    a, b = list(Minibatches(disk, held, 3, shuffle=False)), list(Minibatches(mem, held, 3, shuffle=False))
    assert len(a) == len(b) == 27
    for x, y in zip(a, b, strict=True):
        for field in ("x", "log_lib", "design", "mask", "row"):
            np.testing.assert_array_equal(np.asarray(getattr(x, field)), np.asarray(getattr(y, field)))


def test_shuffled_batches_of_a_chunked_store_come_from_its_pools(small, tmp_path, monkeypatch):
    """Shuffled batches one at a time (the path of several devices) on a .zarr store: read a pool at a time,
    every training row once, each batch's counts the in-memory rows of its row ids."""
    from probgex.inference import minibatch
    from probgex.inference.minibatch import Minibatches

    monkeypatch.setattr(minibatch, "POOL_WINDOWS", 3)
    disk = from_anndata(_write_chunked(small, tmp_path / "b.zarr", 200), "~ group_id", memory_budget=0, empty="keep")
    mem = from_anndata(small, "~ group_id", empty="keep")
    train = np.flatnonzero(np.arange(small.n_obs) % 10 != 3)
    seen = []
    for b in Minibatches(disk, train, 4, shuffle=True, rng=np.random.default_rng(2)):
        real = np.asarray(b.mask)
        ids = np.asarray(b.row)[real]
        np.testing.assert_array_equal(np.asarray(b.x)[real], mem.rows(ids))
        seen.append(ids)
    assert sorted(np.concatenate(seen).tolist()) == train.tolist()


@pytest.mark.parametrize("keep", [True, False])
def test_a_streamed_epoch_decodes_each_stored_chunk_about_once(small, tmp_path, monkeypatch, keep):
    """Pools of one window (64 rows, ~2 stored chunks of ~33 rows): every training row once and exactly
    the in-memory row; with the straddling rows kept (the default) each array's chunks are decoded at most
    once an epoch plus once per pool boundary inside a chunk; without, the chunks after a straddling row
    are decoded again in the pool of that row (the count this change removed)."""
    from probgex import _zarr_chunks
    from probgex._zarr_chunks import ChunkReader
    from probgex.inference import minibatch
    from probgex.inference.minibatch import Minibatches

    monkeypatch.setattr(minibatch, "POOL_WINDOWS", 1)
    if not keep:
        monkeypatch.setattr(_zarr_chunks, "KEEP_SHARE", 10**9)  # nothing kept
    disk = from_anndata(_write_chunked(small, tmp_path / "s.zarr", 600), "~ group_id", memory_budget=0, empty="keep")
    mem = from_anndata(small, "~ group_id", empty="keep")
    train = np.flatnonzero(np.arange(small.n_obs) % 10 != 3)
    mb = Minibatches(disk, train, 4, shuffle=True, rng=np.random.default_rng(4))
    decoded = []
    chunk = ChunkReader.chunk
    monkeypatch.setattr(ChunkReader, "chunk", lambda self, k: decoded.append((id(self), k)) or chunk(self, k))
    n_chunks = -(-small.X.nnz // 600)
    for epoch in range(2):
        decoded.clear()
        seen, pools = [], 0
        for pool in mb.pools():
            pools += 1
            data = mb.pool_data(pool)
            for held, order in pool:
                np.testing.assert_array_equal(data.subset(train[held]).rows(order), mem.rows(train[held][order]))
                seen.append(train[held][order])
        assert sorted(np.concatenate(seen).tolist()) == train.tolist()
        per_array = len(decoded) / 2
        if keep:
            assert per_array <= n_chunks + pools - 1, (epoch, per_array, n_chunks, pools)
        else:
            assert per_array > n_chunks + pools - 1, (epoch, per_array, n_chunks, pools)
