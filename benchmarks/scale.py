"""Scale past memory (issue 14): the cVAE-NB fit on counts streamed from disk (.h5ad, .zarr) against the
same counts in memory, at growing numbers of cells.

Data: kang_ctrl5's cells (8,684 PBMCs) resampled with replacement to N cells, on its 2,000 genes of
highest total count, written once as CSR to an .h5ad and a .zarr store (`make`).
Each row (`run`) fits `~ cluster_id`, cVAE-NB (latent 10, encoder/decoder (128,)), batch 128, in a fresh
process, for `--epochs` epochs (patience above it, so every epoch runs) with the default 10% held out:
  - "memory": anndata.read_h5ad(path) (the counts in memory; the default fit copies them to the device
    when they fit its 1 GiB device budget)
  - "h5ad" / "zarr": Model.fit(path, memory_budget=0): the counts stay on disk, read in row chunks
    (the default budget, an eighth of the machine's memory up to 1 GiB, streams 1M cells by itself).
Seconds per epoch: the time between the ends of the last two epochs (steady state: compilation and the
first epoch's reads excluded), from a progress reporter injected into the fit. Peak memory: the fit
process's peak resident set (ru_maxrss), everything included (Python, JAX, the model, the data).

Usage:
  python benchmarks/scale.py make --sizes 100000 300000 1000000
  python benchmarks/scale.py run --sizes 100000 300000 1000000 --sources memory h5ad zarr --epochs 3 \
      --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
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
    import numpy as np
    import scipy.sparse as sp

    a = load("kang_ctrl5")
    x = sp.csr_matrix(a.X)
    top = np.argsort(-np.asarray(x.sum(0)).ravel())[:GENES]
    a = a[:, np.sort(top)].copy()
    a.X = sp.csr_matrix(a.X)
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in sizes:
        if path_of(n, "h5ad").exists() and path_of(n, "zarr").exists():
            continue
        b = a[np.sort(rng.choice(a.n_obs, n, replace=True))].copy()
        b.obs_names = [f"c{i}" for i in range(n)]
        b.X = sp.csr_matrix(b.X)
        b.write_h5ad(path_of(n, "h5ad"))
        b.write_zarr(path_of(n, "zarr"))
        print(f"wrote {n} cells: {b.X.nnz / n:.0f} non-zero counts per cell", flush=True)


class Clock:
    """A progress reporter that records when each epoch ends."""

    ends: list[float] = []

    def __init__(self, label, total, completed=0, *, unit="epoch"):
        Clock.ends = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, completed, msg=""):
        Clock.ends.append(time.perf_counter())


def one(n: int, source: str, epochs: int) -> dict:
    import anndata as ad

    import probgex as pg

    model = pg.Model("~ cluster_id", likelihood="nb", latent=pg.latent.Gaussian(dim=10), encoder=(128,),
                     decoder=(128,), library="observed")
    t0 = time.perf_counter()
    if source == "memory":
        data, budget = ad.read_h5ad(path_of(n, "h5ad")), None
    else:
        data, budget = path_of(n, source), 0
    fit = model.fit(data, seed=0, max_epochs=epochs, patience=epochs + 1, batch_size=128, progress=Clock,
                    memory_budget=budget)
    total = time.perf_counter() - t0
    per_epoch = Clock.ends[-1] - Clock.ends[-2]
    return {"cells": n, "source": source, "epochs": len(fit.history.train), "streamed": fit.fit_info["streamed"],
            "s_per_epoch": per_epoch, "cells_per_s": 0.9 * n / per_epoch, "total_s": total,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(sizes: list[int], sources: list[str], epochs: int, out: Path) -> None:
    rows = []
    for n in sizes:
        for source in sources:
            r = subprocess.run([sys.executable, __file__, "one", "--n", str(n), "--source", source,
                                "--epochs", str(epochs)], capture_output=True, text=True)
            if r.returncode:
                rows.append({"cells": n, "source": source, "error": r.stderr.strip().splitlines()[-1][:300]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            write(out, {"machine": machine(), "rows": rows, "epochs": epochs})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["make", "run", "one"])
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
        run(a.sizes, a.sources, a.epochs, a.out)
    else:
        print(json.dumps(one(a.n, a.source, a.epochs)))


if __name__ == "__main__":
    main()
