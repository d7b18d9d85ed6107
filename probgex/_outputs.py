"""Output-path safety for every command that writes: no output is ever one of the inputs, an existing
output is replaced only with `overwrite` and only once the new one is complete (written beside it,
swapped in at the end), and the path, its folder and their permissions are checked before any work.
Files get the user's normal mode (0o666 less the umask), not a temporary file's 0o600.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from probgex.errors import OutputError

# what each writer puts in its output folder (checked before a command starts: existing ones need
# --overwrite); here, with no JAX, so the shell checks its outputs before it loads the writers
FIGURES = ("pit_ecdf", "coverage", "coverage_by_decile", "mean_variance", "mean_zero_fraction",
           "rootograms_worst_genes", "summary_statistics")  # the calibration report's figures
REPORT_FILES = ("report.json", "report.html") + tuple(f"{f}.png" for f in FIGURES)  # `Report.save`
POWER_FILES = ("power.json", "power.nc", "power.png")  # `power.report.write`
EXPLAIN_FILES = ("variance.csv", "variance.json", "violins.png", "top_genes.png")  # `variance_report.write`
DEMO_FILES = ("model.npz", "predictions.nc", "power") + REPORT_FILES  # `probgex demo`


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _is_input(path: Path, inputs: Iterable[str | os.PathLike | None]) -> Path | None:
    for p in inputs:
        if p is None:
            continue
        p = Path(p)
        if _same(path, p) or path.resolve() == p.resolve():
            return p
    return None


def _writable_folder(folder: Path, option: str) -> None:
    """The folder (or, if it does not exist yet, its nearest existing ancestor) can take new files."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {folder}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {folder}: cannot write in {probe} (permission denied); choose a folder "
                          "you can write to")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 overwrite: bool = False, option: str = "--out") -> Path:
    """Check an output *file* before any work: not an input, not a folder, not existing unless
    `overwrite`, in a folder that exists or can be made and can be written to."""
    path = Path(path)
    clash = _is_input(path, inputs)
    if clash is not None:
        raise OutputError(f"{option} {path} is also an input ({clash}); writing there would destroy it: "
                          "choose another output path")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; pass a file path (e.g. {path / 'out'}{_suffix(path)})")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path} already exists; pass --overwrite to replace it (it is replaced only "
                          "once the new file is complete) or choose another path")
    _writable_folder(path.parent, option)
    return path


def _suffix(path: Path) -> str:
    return path.suffix or ""


def check_output_folder(folder: str | os.PathLike, names: Iterable[str],
                        inputs: Iterable[str | os.PathLike | None] = (), *, overwrite: bool = False,
                        option: str = "--out") -> Path:
    """Check an output *folder* that will receive the files `names`: not a file, none of `names` an
    input, none existing unless `overwrite`, writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file; pass a folder for the results")
    inputs = list(inputs)
    for name in names:
        clash = _is_input(folder / name, inputs)
        if clash is not None:
            raise OutputError(f"{option} {folder} would write {name} over the input {clash}; choose another folder")
    existing = sorted(n for n in names if (folder / n).exists())
    if existing and not overwrite:
        raise OutputError(f"{option} {folder} already holds {', '.join(existing)}; pass --overwrite to replace "
                          "them (replaced only once the new results are complete) or choose another folder")
    _writable_folder(folder, option)
    return folder


def file_mode() -> int:
    """The mode a new file gets under the current umask (0o666 & ~umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def temp_beside(path: Path) -> Path:
    """A fresh temporary name in `path`'s folder, keeping its suffix (matplotlib reads the format from it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    return Path(tmp)


def finish(tmp: Path, path: Path) -> None:
    """Give `tmp` the normal file mode and move it over `path` in one step."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_file(out) as tmp: write(tmp)`: `out` appears (or is replaced) only if the block ends
    without an error; otherwise the temporary file is removed and `out` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        yield tmp
        finish(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_folder(out) as tmp: write files into tmp`: at the end each file is moved into `out`
    (made if missing), replacing files of the same name; on an error `out` is untouched."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield tmp
        folder.mkdir(exist_ok=True)
        mode = file_mode()
        for item in sorted(tmp.rglob("*")):
            if item.is_file():
                dest = folder / item.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(item, mode)
                os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_ready(obj):
    """`obj` with every NaN / infinite float replaced by None (JSON has no NaN) and NumPy scalars and arrays
    as Python values, for `json.dumps(..., allow_nan=False)`."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
