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
