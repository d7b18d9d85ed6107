"""Entries of a 1-D zarr v3 array on the local disk, read by decoding its stored chunks directly (the
`zarr.json` of the array, the chunk files, numcodecs' zstd) and picking the entries with numpy, bypassing
zarr's per-call pipeline (its event loop, per-coordinate indexing and buffers: ~2/3 of its CPU cost per
stored chunk in a coordinate selection, measured on the CSR values of a 100k-cell store).

Only the layouts written by anndata / zarr-python by default are decoded here: zarr format 3, one
dimension, a regular chunk grid, the default chunk key encoding, a little-endian numeric data type, and the
codecs either [bytes, zstd] (a file per chunk) or [sharding_indexed] with inner codecs [bytes, zstd] and a
[bytes, crc32c] index at either end of the shard. `ChunkReader.open` answers None for anything else (a
remote store, zarr format 2, other codecs or filters, a transposed or multi-dimensional array), and the
caller then reads through zarr itself. No JAX here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probgex.errors import DataError

_MISSING = np.uint64(2**64 - 1)  # a shard index entry of a chunk that was never written (fill value)


def _bytes_zstd(codecs: list) -> bool:
    """Whether `codecs` is exactly [bytes (little-endian or none), zstd]."""
    if len(codecs) != 2 or [c.get("name") for c in codecs] != ["bytes", "zstd"]:
        return False
    return (codecs[0].get("configuration") or {}).get("endian", "little") == "little"


class ChunkReader:
    """Decodes the stored chunks of one local 1-D zarr v3 array (`open`) and takes entries from them."""

    def __init__(self, root: Path, dtype: np.dtype, size: int, inner: int, per_shard: int, sharded: bool,
                 index_at_end: bool, separator: str, fill):
        import numcodecs

        self.root, self.dtype, self.size, self.inner = root, dtype, size, inner
        self.per_shard, self.sharded, self.index_at_end, self.separator = per_shard, sharded, index_at_end, separator
        self.fill = fill
        self._zstd = numcodecs.Zstd()
        self._index: dict[int, np.ndarray] = {}  # shard -> (per_shard, 2) offsets and lengths, read once
        self._last: tuple[int, np.ndarray] | None = None  # the chunk decoded last (one chunk held, ~0.6 MB)
        self._keep = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # ranges whose entries are kept (`keep`)
        self._pieces: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # chunk -> its kept (start, end, entries)

    @classmethod
    def open(cls, array) -> ChunkReader | None:
        """A reader for the zarr array `array` where its layout is one decoded here, else None."""
        try:
            root = Path(array.store.root) / array.path
            meta = json.loads((root / "zarr.json").read_text())
        except (AttributeError, OSError, TypeError, ValueError):  # not a local store, or no v3 metadata
            return None
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or len(meta.get("shape", ())) != 1:
            return None
        if meta.get("storage_transformers") or meta.get("chunk_grid", {}).get("name") != "regular":
            return None
        keys = meta.get("chunk_key_encoding", {})
        if keys.get("name") != "default":
            return None
        try:
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        except (TypeError, KeyError):
            return None
        if dtype.kind not in "iuf":
            return None
        outer = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        codecs = meta.get("codecs", [])
        if _bytes_zstd(codecs):
            inner, sharded, at_end = outer, False, True
        elif len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
            conf = codecs[0].get("configuration", {})
            index = conf.get("index_codecs", [])
            if not _bytes_zstd(conf.get("codecs", [])) or [c.get("name") for c in index] != ["bytes", "crc32c"]:
                return None
            if (index[0].get("configuration") or {}).get("endian", "little") != "little":
                return None
            inner, sharded = int(conf["chunk_shape"][0]), True
            at_end = conf.get("index_location", "end") == "end"
            if outer % inner:
                return None
        else:
            return None
        fill = meta.get("fill_value", 0)
        if not isinstance(fill, int | float) or isinstance(fill, bool):
            return None
        return cls(root, dtype, int(meta["shape"][0]), inner, outer // inner, sharded, at_end,
                   (keys.get("configuration") or {}).get("separator", "/"), fill)

    def _path(self, key: int) -> Path:
        return self.root / f"c{self.separator}{key}"

    def _shard_index(self, shard: int) -> np.ndarray | None:
        """(offset, length) of each inner chunk of a shard; None where the shard was never written."""
        if shard not in self._index:
            path = self._path(shard)
            if not path.exists():
                return None
            nbytes = self.per_shard * 16
            with open(path, "rb") as f:
                if self.index_at_end:
                    f.seek(-(nbytes + 4), 2)
                raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise DataError(f"{path}: the shard index is truncated ({len(raw)} of {nbytes} bytes); write or copy "
                                "the store again (adata.write_zarr)")
            self._index[shard] = np.frombuffer(raw, "<u8").reshape(self.per_shard, 2)
        return self._index[shard]

    def chunk(self, k: int) -> np.ndarray:
        """Stored chunk k decoded (its entries; the last chunk cut to the array's size)."""
        n = min(self.inner, self.size - k * self.inner)
        if self.sharded:
            index = self._shard_index(k // self.per_shard)
            entry = None if index is None else index[k % self.per_shard]
            if entry is None or entry[0] == _MISSING:
                return np.full(n, self.fill, self.dtype)
            with open(self._path(k // self.per_shard), "rb") as f:
                f.seek(int(entry[0]))
                raw = f.read(int(entry[1]))
        else:
            path = self._path(k)
            if not path.exists():
                return np.full(n, self.fill, self.dtype)
            raw = path.read_bytes()
        try:
            values = np.frombuffer(self._zstd.decode(raw), self.dtype)
        except Exception as e:  # numcodecs raises RuntimeError on a damaged frame
            values, why = None, f"{type(e).__name__}: {e}"
        if values is None or len(values) < n:
            what = why if values is None else f"{len(values)} entries, not {n}"
            raise DataError(f"{self.root}: stored chunk {k} cannot be read ({what}); the store is truncated or "
                            "damaged, write or copy it again (adata.write_zarr)")
        return values[:n]

    def keep(self, first: np.ndarray, last: np.ndarray) -> None:
        """Keep the entries of the stored ranges [first_i, last_i) (increasing, not overlapping) whenever a
        chunk holding some of them is decoded, for the life of the reader, and serve later reads inside one
        of them from the copy, not by decoding the chunk again. Meant for the CSR rows that straddle a chunk
        boundary (`straddling_rows`): a pool reading such a row needs the piece of it in the next chunk,
        which another pool decodes anyway; kept, that chunk is decoded once an epoch, not twice."""
        self._keep = (np.asarray(first, np.int64), np.asarray(last, np.int64))
        self._pieces.clear()

    def kept_entries(self) -> int:
        """Entries held in kept pieces now."""
        return sum(len(v) for pieces in self._pieces.values() for _, _, v in pieces)

    def _piece(self, k: int, a: int, e: int) -> np.ndarray | None:
        """The kept entries [a, e) of chunk k, where a kept piece holds all of them; else None."""
        for s, t, v in self._pieces.get(k, ()):
            if s <= a and e <= t:
                return v[a - s : e - s]
        return None

    def _decoded(self, k: int) -> np.ndarray:
        """Stored chunk k, decoded unless it is the chunk decoded last (consecutive reads of a file in parts
        meet at a chunk: it is decoded once, not once per part); the kept ranges' pieces in it copied out
        the first time it is decoded."""
        if self._last is None or self._last[0] != k:
            self._last = (k, self.chunk(k))
            first, last = self._keep
            if len(first) and k not in self._pieces:
                lo, hi = k * self.inner, k * self.inner + len(self._last[1])
                i, j = np.searchsorted(last, lo, side="right"), np.searchsorted(first, hi, side="left")
                self._pieces[k] = [(s, t, self._last[1][s - lo : t - lo].copy()) for s, t in
                                   zip(np.maximum(first[i:j], lo).tolist(), np.minimum(last[i:j], hi).tolist())
                                   if t > s]
        return self._last[1]

    def take_ranges(self, first: np.ndarray, last: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The entries of the stored ranges [first_i, last_i) (increasing, not overlapping, in range),
        concatenated, each stored chunk decoded once: slices copied range by range, with no array of a
        position per entry (a pool of 16k rows is 6.5M entries; its ranges are the few runs of rows). A part
        of a range inside a kept piece (`keep`) is copied from it, its chunk not decoded."""
        first, last = np.asarray(first, np.int64), np.asarray(last, np.int64)
        if len(first) and (first[0] < 0 or last[-1] > self.size or (last < first).any()):
            raise IndexError(f"ranges outside 0..{self.size}")
        n = int((last - first).sum())
        out = np.empty(n, self.dtype) if out is None else out
        if len(out) != n:
            raise ValueError(f"out holds {len(out)} entries; the ranges hold {n}")
        pos, inner = 0, self.inner
        for a, b in zip(first.tolist(), last.tolist(), strict=True):
            while a < b:
                k = a // inner
                e = min(b, (k + 1) * inner)
                kept = None if self._last is not None and self._last[0] == k else self._piece(k, a, e)
                out[pos : pos + e - a] = self._decoded(k)[a - k * inner : e - k * inner] if kept is None else kept
                pos, a = pos + e - a, e
        return out


KEEP_SHARE = 16  # straddling rows kept (`straddling_rows`) only where they hold at most 1/16 of the entries


def straddling_rows(indptr: np.ndarray, inner: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) in the stored entries of the CSR rows (row pointers `indptr`) that cross a boundary of
    stored chunks of `inner` entries, each row once, increasing; empty where these rows together hold more
    than 1/KEEP_SHARE of the entries (chunks of a few rows each: keeping them would hold most of the array).
    At 395 entries a row and 154k a chunk: ~1 row a chunk, 0.26% of the entries (8 MB at 1M cells)."""
    indptr = np.asarray(indptr, np.int64)
    size = int(indptr[-1]) if len(indptr) else 0
    bounds = np.arange(inner, size, inner, dtype=np.int64)
    row = np.searchsorted(indptr, bounds, side="right") - 1  # the row holding the boundary's entry
    row = np.unique(row[indptr[row] < bounds])  # that starts before it
    first, last = indptr[row], indptr[row + 1]
    if int((last - first).sum()) * KEEP_SHARE > size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return first, last
