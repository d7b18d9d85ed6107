"""Entries of a local .zarr array read by decoding its stored chunks directly (`probgex._zarr_chunks`): the
same entries as zarr's own coordinate selection for the layouts decoded (sharded and one file per chunk,
chunks never written read as the fill value), None for any other layout so that the caller reads through
zarr, and CSR rows of a store read either way equal the rows in memory."""

import warnings

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec, ZstdCodec

from probgex._zarr_chunks import ChunkReader



def _positions(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _take(reader: ChunkReader, positions) -> np.ndarray:
    """Single entries as ranges of one."""
    positions = np.asarray(positions, np.int64)
    return reader.take_ranges(positions, positions + 1)


@pytest.mark.parametrize("shards", [None, (60,)])
@pytest.mark.parametrize("dtype", ["int32", "float32", "int64"])
def test_decoded_entries_equal_zarrs_selection(tmp_path, shards, dtype):
    values = (np.random.default_rng(0).integers(0, 50, 1000) * np.arange(1000) % 97).astype(dtype)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(1000,), chunks=(20,), shards=shards, dtype=dtype,
                            compressors=ZstdCodec(level=1))
    arr[:] = values
    reader = ChunkReader.open(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"))
    assert reader is not None and reader.sharded == (shards is not None)
    for seed in range(3):
        pos = _positions(1000, 137, seed)
        np.testing.assert_array_equal(_take(reader, pos), values[pos])
    np.testing.assert_array_equal(_take(reader, np.arange(1000)), values)  # the last shard / chunk included
    assert len(_take(reader, np.zeros(0, np.int64))) == 0
    with pytest.raises(IndexError):
        _take(reader, np.array([999, 1000]))


@pytest.mark.parametrize("shards", [None, (60,)])
def test_ranges_across_chunks_equal_the_slices_and_decode_each_chunk_once(tmp_path, shards, monkeypatch):
    """Ranges spanning several chunks, empty ones, one ending at the array's end, and two calls meeting
    inside a chunk: the entries equal the concatenated slices, and no chunk is decoded twice in a row."""
    values = np.random.default_rng(1).integers(0, 1000, 1000).astype("int32")
    arr = zarr.create_array(str(tmp_path / "r.zarr"), shape=(1000,), chunks=(20,), shards=shards, dtype="int32",
                            compressors=ZstdCodec(level=1))
    arr[:] = values
    reader = ChunkReader.open(zarr.open_array(str(tmp_path / "r.zarr"), mode="r"))
    decoded = []
    chunk = ChunkReader.chunk
    monkeypatch.setattr(ChunkReader, "chunk", lambda self, k: decoded.append(k) or chunk(self, k))
    first = np.array([0, 5, 19, 45, 45, 130, 390, 981])
    last = np.array([3, 5, 41, 45, 101, 131, 500, 1000])
    got = reader.take_ranges(first, last)
    np.testing.assert_array_equal(got, np.concatenate([values[a:b] for a, b in zip(first, last)]))
    assert decoded == sorted(set(decoded)), decoded  # each chunk once, in order
    assert set(decoded) == {k for a, b in zip(first, last) for k in range(a // 20, -(-b // 20))}
    decoded.clear()
    out = np.empty(15, "int32")
    reader.take_ranges([985], [1000], out)  # in the chunk decoded last (49): not decoded again
    np.testing.assert_array_equal(out, values[985:])
    assert decoded == []
    with pytest.raises(ValueError, match="out holds"):
        reader.take_ranges([0], [10], np.empty(3, "int32"))
    with pytest.raises(IndexError):
        reader.take_ranges([5], [3])


@pytest.mark.parametrize("shards", [None, (60,)])
def test_chunks_never_written_read_as_the_fill_value(tmp_path, shards):
    arr = zarr.create_array(str(tmp_path / "f.zarr"), shape=(200,), chunks=(20,), shards=shards, dtype="int32",
                            fill_value=7, compressors=ZstdCodec(level=1))
    arr[40:60] = np.arange(20)  # one chunk (one shard) written, the rest never
    reader = ChunkReader.open(zarr.open_array(str(tmp_path / "f.zarr"), mode="r"))
    pos = np.arange(0, 200, 3)
    np.testing.assert_array_equal(_take(reader, pos), arr[:][pos])


def test_a_damaged_chunk_is_a_clear_error(tmp_path):
    from probgex.errors import DataError

    arr = zarr.create_array(str(tmp_path / "d.zarr"), shape=(100,), chunks=(20,), dtype="int32",
                            compressors=ZstdCodec(level=1))
    arr[:] = np.arange(100)
    reader = ChunkReader.open(zarr.open_array(str(tmp_path / "d.zarr"), mode="r"))
    path = tmp_path / "d.zarr" / "c" / "2"
    path.write_bytes(path.read_bytes()[:5])  # truncated
    np.testing.assert_array_equal(_take(reader, np.array([3, 30])), [3, 30])  # other chunks still read
    with pytest.raises(DataError, match="stored chunk 2 cannot be read.*write or copy it again"):
        _take(reader, np.array([41]))


def test_other_layouts_are_left_to_zarr(tmp_path):
    gz = zarr.create_array(str(tmp_path / "g.zarr"), shape=(100,), chunks=(10,), dtype="int32", compressors=GzipCodec())
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=(100,), chunks=(10,), dtype="int32", zarr_format=2)
    two_d = zarr.create_array(str(tmp_path / "d.zarr"), shape=(10, 10), chunks=(5, 5), dtype="int32",
                              compressors=ZstdCodec())
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=(100,), chunks=(10,), dtype="int32",
                            compressors=ZstdCodec())
    for arr in (gz, v2, two_d, mem):
        assert ChunkReader.open(arr) is None


@pytest.mark.parametrize("compressor", ["default", "gzip"])
def test_csr_rows_of_a_store_read_decoded_or_through_zarr_equal_memory(small, tmp_path, monkeypatch, compressor):
    """anndata's default store is decoded here; a gzip-compressed one falls back to zarr: both give the rows
    in memory, in any order asked, and the same as zarr's path (DECODE_CHUNKS off)."""
    from probgex import rowsource

    path = tmp_path / "s.zarr"
    if compressor == "default":
        small.write_zarr(path)
    else:
        from anndata.io import write_elem

        b = small.copy()
        del b.X
        b.write_zarr(path)
        write_elem(zarr.open_group(str(path), mode="a", use_consolidated=False), "X", small.X,
                   dataset_kwargs={"chunks": (300,), "compressors": GzipCodec()})
        with warnings.catch_warnings():  # zarr 3: consolidated metadata is not in its format's specification
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(path))
    _, source = rowsource.open_anndata(path)
    assert (source._chunk_readers() is not None) == (compressor == "default")
    rows = np.r_[np.random.default_rng(4).permutation(small.n_obs)[:90], [0, 239]]
    decoded = source.read(rows).toarray()
    monkeypatch.setattr(rowsource, "DECODE_CHUNKS", False)
    assert source._chunk_readers() is None
    np.testing.assert_array_equal(decoded, small.X[rows].toarray())
    np.testing.assert_array_equal(source.read(rows).toarray(), decoded)


def test_straddling_rows_are_the_rows_crossing_a_chunk_boundary():
    """Against a row-by-row check: rows starting exactly at a boundary, empty rows at a boundary and a row
    spanning three chunks (listed once); none when they would hold more than 1/KEEP_SHARE of the entries."""
    from probgex._zarr_chunks import KEEP_SHARE, straddling_rows

    lens = np.array([3, 7, 0, 10, 0, 4, 25, 1, 9, 0, 1, 40, 2, 2, 8] * 3)
    indptr = np.r_[0, np.cumsum(lens)]
    for inner in (10, 13, 20, 400):
        nonempty = lens > 0
        crosses = nonempty & (indptr[:-1] // inner != (indptr[1:] - 1) // inner)
        share = lens[crosses].sum() * KEEP_SHARE <= indptr[-1]
        first, last = straddling_rows(indptr, inner)
        want = np.flatnonzero(crosses) if share else np.zeros(0, int)
        np.testing.assert_array_equal(first, indptr[want])
        np.testing.assert_array_equal(last, indptr[want + 1])
    big = np.r_[0, np.cumsum(np.full(1000, 5))]  # 5 entries a row, chunks of 100: every boundary starts a row
    assert len(straddling_rows(big, 100)[0]) == 0
    odd = np.r_[0, np.cumsum(np.full(1000, 7))]  # 7 entries a row, chunks of 1000: ~1 row a chunk, 0.7%
    first, last = straddling_rows(odd, 1000)
    assert len(first) == 6 and np.all(first // 1000 != (last - 1) // 1000)


@pytest.mark.parametrize("shards", [None, (60,)])
def test_kept_ranges_are_served_without_decoding_their_chunk_again(tmp_path, shards, monkeypatch):
    """A range kept (`keep`) whose chunk was decoded before (for another read) is copied from the kept
    piece: equal entries, that chunk not decoded again; a range reaching past a kept piece decodes it."""
    values = np.random.default_rng(3).integers(0, 1000, 1000).astype("int32")
    arr = zarr.create_array(str(tmp_path / "k.zarr"), shape=(1000,), chunks=(20,), shards=shards, dtype="int32",
                            compressors=ZstdCodec(level=1))
    arr[:] = values
    reader = ChunkReader.open(zarr.open_array(str(tmp_path / "k.zarr"), mode="r"))
    reader.keep(np.array([15, 57, 139]), np.array([27, 63, 181]))  # across 0|1, 2|3 and 6|7|8|9
    decoded = []
    chunk = ChunkReader.chunk
    monkeypatch.setattr(ChunkReader, "chunk", lambda self, k: decoded.append(k) or chunk(self, k))
    np.testing.assert_array_equal(reader.take_ranges([0, 40, 120], [20, 60, 200]), np.r_[values[:20], values[40:60],
                                                                                         values[120:200]])
    assert decoded == [0, 2, 6, 7, 8, 9]
    assert reader.kept_entries() == (20 - 15) + (60 - 57) + (181 - 139)
    decoded.clear()
    first, last = np.array([15, 57, 139]), np.array([27, 63, 181])  # the kept rows read alone, as a pool does
    np.testing.assert_array_equal(reader.take_ranges(first, last),
                                  np.concatenate([values[a:b] for a, b in zip(first, last)]))
    assert decoded == [1, 3]  # chunks 0, 2, 6-9 served from the pieces; 1 and 3 decoded (then kept too)
    decoded.clear()
    np.testing.assert_array_equal(reader.take_ranges([14, 55], [27, 63]), np.r_[values[14:27], values[55:63]])
    assert decoded == [0, 2]  # entry 14 and entries 55-56 lie outside the kept pieces
    decoded.clear()
    np.testing.assert_array_equal(reader.take_ranges(first, last),
                                  np.concatenate([values[a:b] for a, b in zip(first, last)]))
    assert decoded == []
