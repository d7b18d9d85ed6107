"""Scale past memory (issue 14): the cVAE-NB fit on counts streamed from disk (.h5ad, .zarr) against the
same counts in memory, at growing numbers of cells.

Data: kang_ctrl5's cells (8,684 PBMCs) resampled with replacement to N cells in random order, on its 2,000
genes of highest total count, written once as CSR to an .h5ad and a .zarr store, 100k rows at a time (`make`).
Each row (`run`) fits `~ cluster_id`, cVAE-NB (latent 10, encoder/decoder (128,)), batch 128, in a fresh
process, for `--epochs` epochs (patience above it, so every epoch runs) with the default 10% held out:
  - "memory": anndata.read_h5ad(path) (the counts in memory; the default fit copies them to the device
    when they fit its 1 GiB device budget)
  - "h5ad" / "zarr": Model.fit(path, memory_budget=0): the counts stay on disk, read in row chunks
    (the default budget, an eighth of the machine's memory up to 1 GiB, streams 1M cells by itself):
    an .h5ad a window of 64-row runs at a time, a .zarr store a pool of 8 windows of whole stored
    chunks at a time (`Minibatches.pools`).
Seconds per epoch: the time between the ends of the last two epochs (steady state: compilation and the
first epoch's reads excluded), wall clock and the process's CPU time (all its threads: the machine is
shared, so wall times depend on the load, recorded too), from a progress reporter injected into the fit.
Peak memory: the fit process's peak resident set (ru_maxrss), everything included (Python, JAX, the model,
the data).
`predict`: one epoch's cVAE-NB saved, then `predict_to_file` of `--draws` draws for the first N cells'
metadata, in a fresh process per N (seconds, CPU seconds, file size, peak RSS).
`devices`: the same cVAE-NB on kang_ctrl5 in memory (batch 256) on 1, 2, 4 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N), seconds per epoch.

Usage:
  python benchmarks/scale.py make --sizes 100000 300000 1000000
  python benchmarks/scale.py run --sizes 100000 300000 1000000 --sources memory h5ad zarr --epochs 3 \
      --out benchmarks/results/scale.json
  python benchmarks/scale.py predict --sizes 500 2000 --draws 200 --out benchmarks/results/scale.json
  python benchmarks/scale.py devices --devices 1 2 4 --epochs 3 --out benchmarks/results/scale_devices.json
  python benchmarks/scale.py peer --sizes 100000 --epochs 2 --out benchmarks/results/scale_peer.json
  python benchmarks/scale.py ratio --n 100000 --rounds 3 --epochs 3 --out benchmarks/results/scale_ratio.json
  python benchmarks/scale.py ratio --n 100000 --rounds 3 --epochs 4 --spare-core --out benchmarks/results/scale_ratio_spare.json
`ratio`: `--rounds` interleaved rounds of `one` (memory, h5ad, zarr in turn, each in a fresh process): wall and CPU
medians, min / max, and the speed of each streamed source as a share of the in-memory one (the issue 14 goal: 80%).
`peer`: probgex's loader alone (`loader_one`) against scvi-tools' AnnDataLoader and SCVI on the same .h5ad
(benchmarks/scale_peer.py, run in benchmarks/.peer-venv from benchmarks/peer_env.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine, write  # noqa: E402

WORK = Path("/tmp/probgex-scale")
GENES = 2000


def path_of(n: int, kind: str) -> Path:
    return WORK / f"kang_{n}.{kind}"


def make(sizes: list[int]) -> None:
    """Write N resampled cells (in random order: the copies of one cell are not neighbours, so the zarr
    store compresses like real counts) to an .h5ad and a .zarr store, 100k rows at a time (the counts are
    appended on disk, `anndata.io.sparse_dataset(...).append`), so that 1M cells need no 3 GB in memory."""
    import anndata as ad
    import h5py
    import numpy as np
    import scipy.sparse as sp
    import zarr
    from anndata.io import sparse_dataset, write_elem

    a = load("kang_ctrl5")
    x = sp.csr_matrix(a.X)
    top = np.argsort(-np.asarray(x.sum(0)).ravel())[:GENES]
    a = a[:, np.sort(top)].copy()
    x = sp.csr_matrix(a.X)
    WORK.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        if path_of(n, "h5ad").exists() and path_of(n, "zarr").exists():
            continue
        rng = np.random.default_rng(n)
        pick = rng.choice(a.n_obs, n, replace=True)
        obs = a.obs.iloc[pick].copy()
        obs.index = [f"c{i}" for i in range(n)]
        meta = ad.AnnData(obs=obs, var=a.var)
        for kind in ("h5ad", "zarr"):
            path = path_of(n, kind)
            meta.write_h5ad(path) if kind == "h5ad" else meta.write_zarr(path)
            store = h5py.File(path, "a") if kind == "h5ad" else \
                zarr.open_group(str(path), mode="a", use_consolidated=False)
            for start in range(0, n, CHUNK):
                part = x[pick[start : start + CHUNK]]
                if start == 0:
                    write_elem(store, "X", part)
                else:
                    sparse_dataset(store["X"]).append(part)
            if kind == "h5ad":
                store.close()
            else:
                zarr.consolidate_metadata(str(path))
        print(f"wrote {n} cells: {x[pick[:CHUNK]].nnz / min(n, CHUNK):.0f} non-zero counts per cell", flush=True)


CHUNK = 100_000  # rows written at a time


class Clock:
    """A progress reporter that records when each epoch ends (wall clock and the process's CPU time)."""

    ends: list[tuple[float, float]] = []

    def __init__(self, label, total, completed=0, *, unit="epoch"):
        Clock.ends = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, completed, msg=""):
        Clock.ends.append((time.perf_counter(), time.process_time()))
        TRACE.append(("epoch", completed, round(time.perf_counter() - T0, 2), vm_rss_mb()))


def vm_rss_mb() -> float:
    """The process's resident set now (VmRSS, MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


T0 = time.perf_counter()


class Sampler:
    """VmRSS every 0.1 s in a thread: the highest before the fit's first window is read (setup: reading
    obs, validating the counts, counting entries >= 2) and after it (the fit)."""

    def __init__(self):
        import threading

        self.setup_mb = self.fit_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            rss = vm_rss_mb()
            if any(t[0] == "window" for t in TRACE[:1]):
                self.fit_mb = max(self.fit_mb, rss)
            else:
                self.setup_mb = max(self.setup_mb, rss)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"rss_setup_peak_mb": round(self.setup_mb), "rss_fit_peak_mb": round(self.fit_mb)}
TRACE: list[tuple[str, int, float, float]] = []  # ("window" / "epoch", number, s since start, VmRSS MB)


class Enough(Exception):
    """Raised after the windows to time (`one(..., max_windows=K)`)."""


def one(n: int, source: str, epochs: int, max_windows: int = 0) -> dict:
    """One fit; with `max_windows` K (counts on disk), only the first K + WARM windows of the first epoch
    run, each finished before the next starts (JAX's CPU async dispatch off, so that a window's time is its
    reads and its steps), and the seconds per epoch are extrapolated from the last K windows' times to the
    epoch's windows (labelled "extrapolated"; the held-out evaluation at the epoch's end not included)."""
    import anndata as ad
    import jax

    import probgex as pg
    from probgex.inference import minibatch
    from probgex.inference import window as window_mod

    marks: list[tuple[float, float]] = []
    assemble = window_mod.window_arrays

    def traced(*args, **kwargs):  # VmRSS each time a window is assembled (every window of every epoch)
        TRACE.append(("window", len(TRACE), round(time.perf_counter() - T0, 2), vm_rss_mb()))
        if max_windows:
            marks.append((time.perf_counter(), time.process_time()))
            if len(marks) > max_windows + WARM:
                raise Enough
        return assemble(*args, **kwargs)

    window_mod.window_arrays = traced
    from probgex import rowsource

    if os.environ.get("SCALE_DECODE_CHUNKS") == "0":  # .zarr read through zarr's own selections (the fifth pass's "before")
        rowsource.DECODE_CHUNKS = False
    if max_windows:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    if os.environ.get("SCALE_LOADER_CPU"):  # `ratio --spare-core`: the reading thread on a core of its own
        pin_reading_thread(int(os.environ["SCALE_LOADER_CPU"]))
    model = pg.Model("~ cluster_id", likelihood="nb", latent=pg.latent.Gaussian(dim=10), encoder=(128,),
                     decoder=(128,), library="observed")
    t0 = time.perf_counter()
    sampler = Sampler()
    if source == "memory":
        data, budget = ad.read_h5ad(path_of(n, "h5ad")), None
    else:
        data, budget = path_of(n, source), 0
    row = {"cells": n, "source": source, "decode_chunks": getattr(rowsource, "DECODE_CHUNKS", False)}
    try:
        fit = model.fit(data, seed=0, max_epochs=epochs, patience=epochs + 1, batch_size=128, progress=Clock,
                        memory_budget=budget)
    except Enough:
        (w1, c1), (w2, c2) = marks[WARM], marks[-1]
        per_epoch = -(-int(0.9 * n) // (128 * minibatch.WINDOW_BATCHES))  # windows in an epoch
        row.update(extrapolated=True, windows_timed=max_windows, streamed=True, setup_s=marks[0][0] - t0,
                   s_per_epoch=(w2 - w1) / max_windows * per_epoch,
                   cpu_s_per_epoch=(c2 - c1) / max_windows * per_epoch)
    else:
        (w1, c1), (w2, c2) = Clock.ends[-2:]
        row.update(epochs=len(fit.history.train), streamed=fit.fit_info["streamed"], s_per_epoch=w2 - w1,
                   cpu_s_per_epoch=c2 - c1)
    row.update(sampler.stop())
    rss = [t[3] for t in TRACE if t[0] == "window"]
    if rss:  # the resident set when each window was read: at the first, at 1/4 of them and at the last
        row.update(rss_windows_mb=[round(rss[0]), round(rss[len(rss) // 4]), round(rss[-1])],
                   rss_epoch_ends_mb=[round(t[3]) for t in TRACE if t[0] == "epoch"])
    if os.environ.get("SCALE_TRACE"):  # the whole trace, to PREFIX_N_SOURCE.json
        Path(f"{os.environ['SCALE_TRACE']}_{n}_{source}.json").write_text(json.dumps(TRACE))
    row.update(cells_per_s=0.9 * n / row["s_per_epoch"], total_s=time.perf_counter() - t0,
               load_1min=os.getloadavg()[0], peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return row


WARM = 3  # windows of the first epoch not timed (compilation)


def pin_reading_thread(cpu: int) -> None:
    """Run the fit's read-ahead thread (`prefetch`) on CPU `cpu` only: the process is started on the other
    core(s) (`taskset`), where XLA sizes its compute pool by the cores it may use, so the windows are read
    beside the compute instead of taking turns with it (a machine with a core to spare, emulated)."""
    from probgex.inference import svi

    made = svi.prefetch

    def pinned(items, depth):
        def first_pinned():  # its first step runs in the reading thread
            os.sched_setaffinity(0, {cpu})
            yield from items

        return made(first_pinned(), depth)

    svi.prefetch = pinned


def run(sizes: list[int], sources: list[str], epochs: int, out: Path, max_windows: int = 0) -> None:
    """Each (size, source) in a fresh process; its row replaces any row of the same size and source in
    `out` (so that sizes can be measured in separate runs)."""
    for n in sizes:
        for source in sources:
            r = subprocess.run([sys.executable, __file__, "one", "--n", str(n), "--source", source,
                                "--epochs", str(epochs), "--max-windows", str(max_windows)],
                               capture_output=True, text=True)
            if r.returncode:
                row = {"cells": n, "source": source, "error": r.stderr.strip().splitlines()[-1][:300]}
            else:
                row = json.loads(r.stdout.strip().splitlines()[-1])
            key = (n, source, bool(max_windows))
            rows = json.loads(out.read_text())["rows"] if out.exists() else []  # read anew: runs may share it
            rows = [q for q in rows if (q["cells"], q["source"], q.get("extrapolated", False)) != key] + [row]
            rows.sort(key=lambda q: (q["cells"], ["memory", "h5ad", "zarr"].index(q["source"])
                                     if q["source"] in ("memory", "h5ad", "zarr") else 9))
            print(json.dumps(row), flush=True)
            write(out, {"machine": machine(), "rows": rows, "epochs": epochs})


def ratio(n: int, rounds: int, epochs: int, out: Path, sources: list[str], spare_core: bool = False) -> dict:
    """`rounds` interleaved rounds of `one` for each of `sources` (memory first), each fit in its own process as
    `run` does: per source the wall and CPU seconds an epoch of every round, their median, min and max, the
    peak RSS, and the ratios of speed streamed / memory (memory's seconds over the source's: 80% = the streamed
    epoch takes 1.25x as long) on the medians and per round; the load (1 min) before each fit. Written to `out`.
    `spare_core`: every fit started on CPU 0 alone (`taskset -c 0`: XLA computes on one core) and a streamed
    fit's reading thread moved to CPU 1 (`pin_reading_thread`): a machine with a core beyond the compute's."""
    runs: dict[str, list[dict]] = {s: [] for s in sources}
    for r in range(rounds):
        for source in sources:
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "one", "--n", str(n), "--source", source, "--epochs", str(epochs)]
            env = dict(os.environ)
            if spare_core:
                cmd, env["SCALE_LOADER_CPU"] = ["taskset", "-c", "0", *cmd], "1"
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                {"error": p.stderr.strip().splitlines()[-1][:300]}
            row.update(round=r + 1, load_1min_before=load)
            runs[source].append(row)
            print(json.dumps({k: row.get(k) for k in ("round", "source", "s_per_epoch", "cpu_s_per_epoch",
                                                      "load_1min_before", "error")}), flush=True)
    summary = {}
    for source, rows in runs.items():
        ok = [q for q in rows if "error" not in q]
        summary[source] = {"rounds": len(ok), "peak_rss_gb": [round(q["peak_rss_gb"], 3) for q in ok]}
        for key, name in (("s_per_epoch", "wall"), ("cpu_s_per_epoch", "cpu")):
            vals = [q[key] for q in ok]
            summary[source][name] = {"per_round": [round(v, 3) for v in vals],
                                     "median": round(statistics.median(vals), 3) if vals else None,
                                     "min": round(min(vals), 3) if vals else None,
                                     "max": round(max(vals), 3) if vals else None}
    ratios = {}
    base = summary.get("memory")
    for source in sources:
        if source == "memory" or base is None or not summary[source]["rounds"] or not base["rounds"]:
            continue
        ratios[source] = {}
        for name in ("wall", "cpu"):
            mem, got = base[name], summary[source][name]
            ratios[source][name] = {
                "of_medians": round(mem["median"] / got["median"], 3),
                "per_round": [round(m / g, 3) for m, g in zip(mem["per_round"], got["per_round"], strict=False)]}
    result = {"machine": machine(), "cells": n, "rounds": rounds, "epochs": epochs, "spare_core": spare_core,
              "summary": summary,
              "ratio_streamed_to_memory": ratios, "runs": runs, "uptime_after": open("/proc/loadavg").read().strip()}
    write(out, result)
    return result


def predict_one(n: int, draws: int) -> dict:
    """`predict` of `draws` draws for the first n cells' metadata of the 100k file, written block by block
    to a netCDF file (`inference.predict.predict_to_file`), in this process: wall and CPU seconds, the
    file's size, the process's peak resident set. The file is deleted afterwards."""
    import h5py
    from anndata.io import read_elem

    import probgex as pg
    from probgex.inference.predict import predict_to_file

    with h5py.File(path_of(100_000, "h5ad"), "r") as f:
        obs = read_elem(f["obs"]).iloc[:n]
    fit = pg.load(WORK / "model.npz")
    out = WORK / f"predict_{n}.nc"
    t0, c0 = time.perf_counter(), time.process_time()
    predict_to_file(fit, obs, out, n_samples=draws)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = out.stat().st_size
    out.unlink()
    return {"cells": n, "source": "predict", "draws": draws, "genes": GENES, "s": wall, "cpu_s": cpu,
            "file_gb": size / 2**30, "load_1min": os.getloadavg()[0],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def predict(sizes: list[int], draws: int, out: Path) -> None:
    """Fit the benchmark's cVAE-NB for 3 epochs on kang_ctrl5's cells (the 2,000 genes, in memory: the cost
    of predicting does not depend on how long the model was fitted) and save it, then one `predict_one` per
    size in a fresh process; rows added to `out` as source "predict"."""
    import numpy as np
    import scipy.sparse as sp

    import probgex as pg

    model = WORK / "model.npz"
    if not model.exists():
        a = load("kang_ctrl5")
        a = a[:, np.sort(np.argsort(-np.asarray(sp.csr_matrix(a.X).sum(0)).ravel())[:GENES])].copy()
        spec = pg.Model("~ cluster_id", likelihood="nb", latent=pg.latent.Gaussian(dim=10), encoder=(128,),
                        decoder=(128,), library="observed")
        spec.fit(a, seed=0, max_epochs=3, batch_size=128, progress=False).save(model)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for n in sizes:
        r = subprocess.run([sys.executable, __file__, "predict_one", "--n", str(n), "--draws", str(draws)],
                           capture_output=True, text=True)
        row = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else \
            {"cells": n, "source": "predict", "error": r.stderr.strip().splitlines()[-1][:300]}
        rows = [q for q in rows if (q["cells"], q["source"]) != (n, "predict")] + [row]
        print(json.dumps(row), flush=True)
        write(out, {"machine": machine(), "rows": rows})


def loader_one(n: int, source: str, epochs: int) -> dict:
    """probgex's loader alone, the counterpart of scvi-tools' `AnnDataLoader` (scale_peer.py): the training
    windows of `epochs` epochs of the fit's streamed minibatches built on the host (`window.read_windows`:
    the rows read, densified into the padded (2,048, G) window, entries >= 2 listed) and nothing else (no
    device step); "memory": the same from the counts in memory (anndata.read_h5ad, CSR). Seconds per epoch
    between the ends of the last two epochs; peak RSS of the process."""
    import anndata as ad

    from probgex import rng as streams
    from probgex.data import from_anndata
    from probgex.inference import plan
    from probgex.inference.minibatch import Minibatches, high_bound
    from probgex.inference.window import read_windows

    t0 = time.perf_counter()
    data = from_anndata(ad.read_h5ad(path_of(n, "h5ad")) if source == "memory" else path_of(n, source),
                        "~ cluster_id", memory_budget=None if source == "memory" else 0)
    train_idx, _ = plan.split(data.obs.index, 0.1, None, 0)
    train = Minibatches(data, train_idx, 128, shuffle=True, rng=streams.host_rng(0, "shuffle", 0), high=True)
    rows = min(train.window_rows, len(train.index))
    high = high_bound(train.n_high, rows)
    setup_s = time.perf_counter() - t0
    ends, windows = [(time.perf_counter(), time.process_time())], 0
    for epoch in range(1, epochs + 1):
        train.rng = streams.host_rng(0, "shuffle", epoch)
        for _ in read_windows(train, high=True, pad_rows=rows, pad_high=high):
            windows += 1
        ends.append((time.perf_counter(), time.process_time()))
    (w1, c1), (w2, c2) = ends[-2:]
    return {"tool": "probgex", "cells": n, "source": f"probgex {source}", "mode": "loader", "epochs": epochs,
            "streamed": bool(data.streamed), "windows": windows, "setup_s": setup_s, "s_per_epoch": w2 - w1,
            "cpu_s_per_epoch": c2 - c1, "cells_per_s": 0.9 * n / (w2 - w1), "total_s": time.perf_counter() - t0,
            "load_1min": os.getloadavg()[0],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


PEER = Path(__file__).resolve().parent / ".peer-venv" / "bin" / "python"


def peer(n: int, epochs: int, out: Path, what: list[str]) -> None:
    """Side by side, each in a fresh process, one after the other: probgex's loader on the counts in memory,
    the .h5ad and the .zarr store (`loader_one`), scvi-tools' `AnnDataLoader` on the same .h5ad in memory and
    backed (scale_peer.py in the peer venv), then scvi-tools' SCVI trained on it (memory, backed). `what`
    picks among "probgex", "scvi_loader", "scvi_train". Rows merged into `out` by (source, mode)."""
    jobs = []
    if "probgex" in what:
        jobs += [[sys.executable, __file__, "loader_one", "--n", str(n), "--source", s, "--epochs", str(epochs)]
                 for s in ("memory", "h5ad", "zarr")]
    for mode in ("loader", "train"):
        if f"scvi_{mode}" in what:
            jobs += [[str(PEER), str(Path(__file__).with_name("scale_peer.py")), "--h5ad", str(path_of(n, "h5ad")),
                      "--source", s, "--mode", mode, "--epochs", str(epochs)] for s in ("memory", "backed")]
    for cmd in jobs:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            row = {"cells": n, "cmd": " ".join(cmd[1:]), "error": r.stderr.strip().splitlines()[-1][:300]}
        else:
            row = json.loads(r.stdout.strip().splitlines()[-1])
        rows = json.loads(out.read_text())["rows"] if out.exists() else []
        rows = [q for q in rows if (q.get("cells"), q.get("source"), q.get("mode")) !=
                (row.get("cells"), row.get("source"), row.get("mode"))] + [row]
        print(json.dumps(row), flush=True)
        write(out, {"machine": machine(), "rows": rows})


def devices_one(n_dev: int, epochs: int) -> dict:
    """The benchmark's cVAE-NB on kang_ctrl5's 8,684 cells x 2,000 genes in memory, batch 256, on
    `n_dev` host devices (this process started with XLA_FLAGS=--xla_force_host_platform_device_count)."""
    import numpy as np
    import scipy.sparse as sp

    import probgex as pg

    a = load("kang_ctrl5")
    x = sp.csr_matrix(a.X)
    a = a[:, np.sort(np.argsort(-np.asarray(x.sum(0)).ravel())[:GENES])].copy()
    model = pg.Model("~ cluster_id", likelihood="nb", latent=pg.latent.Gaussian(dim=10), encoder=(128,),
                     decoder=(128,), library="observed")
    t0 = time.perf_counter()
    fit = model.fit(a, seed=0, max_epochs=epochs, patience=epochs + 1, batch_size=256, progress=Clock,
                    devices=n_dev)
    (w1, c1), (w2, c2) = Clock.ends[-2:]
    return {"devices": fit.fit_info["devices"], "cells": a.n_obs, "s_per_epoch": w2 - w1, "cpu_s_per_epoch": c2 - c1,
            "total_s": time.perf_counter() - t0, "final_train_loss": fit.history.train[-1],
            "load_1min": os.getloadavg()[0]}


def devices(counts: list[int], epochs: int, out: Path) -> None:
    """`devices_one` for each number of host devices, each in a fresh process."""
    import os as _os

    rows = []
    for n_dev in counts:
        env = dict(_os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_dev}", JAX_PLATFORMS="cpu")
        r = subprocess.run([sys.executable, __file__, "devices_one", "--n", str(n_dev), "--epochs", str(epochs)],
                           capture_output=True, text=True, env=env)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else
                    {"devices": n_dev, "error": r.stderr.strip().splitlines()[-1][:300]})
        print(json.dumps(rows[-1]), flush=True)
        write(out, {"machine": machine(), "rows": rows, "epochs": epochs})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["make", "run", "one", "predict", "predict_one", "devices",
                                       "devices_one", "loader_one", "peer", "ratio"])
    p.add_argument("--rounds", type=int, default=3, help="ratio: interleaved rounds of memory / h5ad / zarr")
    p.add_argument("--spare-core", action="store_true",
                   help="ratio: compute on CPU 0, the reading thread on CPU 1 (a machine with a core to spare)")
    p.add_argument("--peer", nargs="+", default=["probgex", "scvi_loader", "scvi_train"])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--max-windows", type=int, default=0,
                   help="time only this many windows of the first epoch and extrapolate (0: whole epochs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--sources", nargs="+", default=["memory", "h5ad", "zarr"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int)
    p.add_argument("--source")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    a = p.parse_args()
    if a.what == "make":
        make(a.sizes)
    elif a.what == "run":
        run(a.sizes, a.sources, a.epochs, a.out, a.max_windows)
    elif a.what == "predict":
        predict(a.sizes, a.draws, a.out)
    elif a.what == "ratio":
        if a.epochs < 2 or a.rounds < 1 or not a.n:
            p.error("ratio needs --n, --rounds >= 1 and --epochs >= 2 (an epoch's time is between the ends of the last two)")
        ratio(a.n, a.rounds, a.epochs, a.out, a.sources, a.spare_core)
    elif a.what == "devices":
        devices(a.devices, a.epochs, a.out)
    elif a.what == "devices_one":
        print(json.dumps(devices_one(a.n, a.epochs)))
    elif a.what == "loader_one":
        print(json.dumps(loader_one(a.n, a.source, a.epochs)))
    elif a.what == "peer":
        peer(a.sizes[0], a.epochs, a.out, a.peer)
    elif a.what == "predict_one":
        print(json.dumps(predict_one(a.n, a.draws)))
    else:
        print(json.dumps(one(a.n, a.source, a.epochs, a.max_windows)))


if __name__ == "__main__":
    main()
