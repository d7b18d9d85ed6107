"""What a streamed fit holds in memory (issue 14, 1M cells under 1.5 GB): the changes that make it hold less
keep every result identical -- the epoch's permutation of a chunked store, the rows' stored chunks, and a fit
that lets go of the obs table gives the same losses, parameters and held-out names."""


import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from probgex.data import from_anndata, without_obs
from probgex.inference.minibatch import stored_chunk_permutation



def _reference_permutation(chunks, rng, pool):
    """The permutation as written before (np.unique with its int64 inverse)."""
    uniq, inv = np.unique(np.asarray(chunks), return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[rng.permutation(len(uniq))] = np.arange(len(uniq))
    order = np.argsort(rank[inv], kind="stable")
    for w in range(0, len(order), pool):
        order[w : w + pool] = rng.permutation(order[w : w + pool])
    return order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stored_chunk_permutation_equals_the_np_unique_one(seed):
    """Chunk ids with gaps (chunks holding only held-out rows) and runs, int32 as `chunk_of` gives them: the
    same order as the np.unique-based permutation for the same generator, and the generator left in the same
    state (the next epoch's draws unchanged)."""
    g = np.random.default_rng(100 + seed)
    sizes = g.integers(1, 40, 300)
    ids = np.repeat(np.sort(g.choice(1000, 300, replace=False)), sizes).astype(np.int32)
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    got = stored_chunk_permutation(ids, a, 97)
    np.testing.assert_array_equal(got, _reference_permutation(ids.astype(np.int64), b, 97))
    assert sorted(got.tolist()) == list(range(len(ids)))
    assert a.integers(1 << 30) == b.integers(1 << 30)


def test_stored_chunk_permutation_of_no_rows():
    assert len(stored_chunk_permutation(np.zeros(0, np.int32), np.random.default_rng(0), 8)) == 0


def test_chunk_of_is_int32_and_the_row_pointers_over_the_chunk_length(small, tmp_path):
    path = tmp_path / "c.zarr"
    small.write_zarr(path)
    data = from_anndata(path, "~ group_id", memory_budget=0, empty="keep")
    rows = np.arange(0, small.n_obs, 3)
    chunks = data.counts.chunk_of(rows)
    length = int(data.counts.base.elem.group["data"].chunks[0]) if hasattr(data.counts, "base") else \
        int(data.counts.elem.group["data"].chunks[0])
    indptr = sp.csr_matrix(small.X).indptr.astype(np.int64)
    assert chunks.dtype == np.int32
    np.testing.assert_array_equal(chunks, indptr[rows] // length)


def test_without_obs_keeps_the_rows_and_every_array(small, tmp_path):
    path = tmp_path / "o.h5ad"
    small.write_h5ad(path)
    data = from_anndata(path, "~ group_id", memory_budget=0, empty="keep", group_key="group_id")
    slim = without_obs(data)
    assert slim.obs.shape == (data.n_obs, 0) and isinstance(slim.obs.index, pd.RangeIndex)
    assert slim.counts is data.counts and slim.design is data.design and slim.groups is data.groups
    rows = np.array([5, 0, 17])
    np.testing.assert_array_equal(slim.subset(rows).rows(np.arange(3)), data.rows(rows))


@pytest.mark.slow  # two small fits
def test_a_streamed_fit_without_its_obs_table_is_unchanged(small, tmp_path, monkeypatch):
    """The streamed fit drops the obs table before its loop (`fit.without_obs`): the loop sees no names or
    columns, and the losses, parameters and held-out names equal those of the same fit keeping the table."""
    import probgex as pg
    from probgex import fit as fit_mod
    from probgex.inference import svi

    path = tmp_path / "f.zarr"
    small.write_zarr(path)
    model = pg.Model("~ group_id", likelihood="nb", latent=pg.latent.Gaussian(dim=2), encoder=(8,), decoder=(8,),
                     library="observed")
    opts = dict(seed=3, max_epochs=2, patience=5, batch_size=16, progress=False, memory_budget=0)
    seen = []
    real = svi.fit_svi

    def spy(story, data, *args, **kwargs):
        seen.append(data.obs)
        return real(story, data, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "fit_svi", spy)
    slim = model.fit(path, **opts)
    monkeypatch.setattr(fit_mod, "without_obs", lambda data: data)
    kept = model.fit(path, **opts)
    assert seen[0].shape[1] == 0 and isinstance(seen[0].index, pd.RangeIndex)
    assert list(seen[1].columns) == list(small.obs.columns)
    assert slim.fit_info["streamed"]
    assert slim.history.train == kept.history.train and slim.history.heldout == kept.history.heldout
    import jax

    a, b = jax.tree.leaves(slim.params), jax.tree.leaves(kept.params)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(slim.heldout_obs, kept.heldout_obs)
    assert set(slim.heldout_obs) <= set(small.obs_names) and len(slim.heldout_obs) == 24


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 21])
def test_zarr_rows_read_in_parts_of_whole_rows_exactly(small, tmp_path, monkeypatch, size):
    """A .zarr store's scattered rows read by coordinate selections of whole rows of at most SELECT_ENTRIES
    entries (a longer row alone; empty rows among them), written in place: the rows in memory, whatever the
    part length."""
    from probgex import rowsource

    a = small.copy()
    x = a.X.tolil()
    x[[3, 4, 50], :] = 0  # empty rows inside the selection
    a.X = sp.csr_matrix(x)
    a.write_zarr(tmp_path / "p.zarr")
    _, source = rowsource.open_anndata(tmp_path / "p.zarr")
    rows = np.r_[np.arange(0, 120, 3), [4, 50, 121, 122, 239]]
    monkeypatch.setattr(rowsource, "SELECT_ENTRIES", size)
    got = source.read(rows)
    np.testing.assert_array_equal(got.toarray(), a.X[rows].toarray())
    assert got.dtype == source.dtype
