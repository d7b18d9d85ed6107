"""Model files without pickle: one `.npz` of named arrays (loaded with allow_pickle=False) holding the
parameters and a JSON header (spec, design encoding, genes, sizes, history) with a SHA-256 of every
array, so a truncated or tampered file is refused with a clear error. Writes are atomic: a crash
mid-write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import jax
import numpy as np

from probgex._outputs import file_mode
from probgex.errors import ModelFileError

FORMAT = "probgex-model"
VERSION = 1
HEADER = "__header__"


def _digest(arrays: dict[str, np.ndarray], header: dict) -> str:
    """SHA-256 over the header (canonical JSON, without its own digest) and every array."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    """Parameter pytree -> {path string: array}."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {"param" + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def unflatten_params(template: dict, arrays: dict[str, np.ndarray]) -> dict:
    """Fill the structure of `template` with the arrays saved under the same paths."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        key = "param" + jax.tree_util.keystr(path)
        if key not in arrays:
            raise ModelFileError(f"the model file lacks parameter {key}; it was written by an "
                                 "incompatible version or edited: refit and save again")
        if arrays[key].shape != np.shape(leaf):
            raise ModelFileError(f"parameter {key} has shape {arrays[key].shape}, the spec implies "
                                 f"{np.shape(leaf)}: the file does not match its own header")
        out.append(arrays[key])
    return jax.tree_util.tree_unflatten(treedef, out)


def write(path: str | Path, header: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write header + arrays to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": VERSION, **header}
    header["sha256"] = _digest(arrays, header)
    blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{HEADER: blob}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp's 0o600 -> the user's normal mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a model file; every failure is a ModelFileError that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}; pass the path that `probgex fit --out` or "
                             "Fit.save wrote")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a readable probgex model file (not an npz archive: truncated, "
                             "corrupt or another kind of file); save or copy it again")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ModelFileError(f"{path} is not a readable probgex model file (truncated or corrupt: "
                             f"{type(e).__name__}: {e}); save or copy it again") from e
    if HEADER not in arrays:
        raise ModelFileError(f"{path} has no probgex header: it is not a probgex model file")
    try:
        header = json.loads(arrays.pop(HEADER).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"the header of {path} is corrupt ({e}); save or copy it again") from e
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a probgex model file (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise ModelFileError(f"{path} has model-file version {header.get('version')!r}; this probgex "
                             f"reads version {VERSION}: refit with this version")
    if header.get("sha256") != _digest(arrays, header):
        raise ModelFileError(f"{path} failed its checksum: the header or the arrays were modified or "
                             "damaged after saving; do not trust it, save or copy it again")
    return header, arrays
