"""Where predict's time goes (issue 14): `predict_to_file` of DRAWS draws for the first N cells of scale.py's
100k resample of kang_ctrl5 (the same obs as `scale.py predict_one`), 2,000 genes, the benchmark's cVAE-NB
(fitted and saved to /tmp/probgex-scale/model.npz as `scale.py predict` does, if missing), in this process,
with the CPU time of each part (time.thread_time of the main thread; the device forward's XLA threads are
in the process total only) taken by wrapping the functions here (nothing in probgex changes).
  INSTR=0: no wrappers (for py-spy).  FIX=chunks[,sort]: the proposed changes patched in here only: the
  draws' chunks (1, block rows, genes) instead of (1, 256, genes); intervals sorted as int32.
Usage: PYTHONPATH=. python benchmarks/predict_profile.py 1000 200 >> result.jsonl
"""
import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import scipy.sparse as sp
from _common import load

import probgex as pg

WORK = Path("/tmp/probgex-scale"); WORK.mkdir(exist_ok=True)
GENES = 2000
n = int(sys.argv[1]); draws = int(sys.argv[2]) if len(sys.argv) > 2 else 200
instrument = os.environ.get("INSTR", "1") == "1"
a = load("kang_ctrl5")
a = a[:, np.sort(np.argsort(-np.asarray(sp.csr_matrix(a.X).sum(0)).ravel())[:GENES])].copy()
model = WORK / "model.npz"
if not model.exists():
    spec = pg.Model("~ cluster_id", likelihood="nb", latent=pg.latent.Gaussian(dim=10), encoder=(128,),
                    decoder=(128,), library="observed")
    spec.fit(a, seed=0, max_epochs=3, batch_size=128, progress=False).save(model)
pick = np.random.default_rng(100_000).choice(a.n_obs, 100_000, replace=True)[:n]
obs = a.obs.iloc[pick].copy(); obs.index = [f"c{i}" for i in range(n)]
fit = pg.load(model)

from probgex import library as L
from probgex.inference import predict as P
from probgex.inference import predictive as Q

T = defaultdict(lambda: [0.0, 0.0, 0])  # wall, thread cpu, calls
def wrap(owner, name, label, f=None):
    f = f or getattr(owner, name)
    def g(*args, **kw):
        w, c = time.perf_counter(), time.thread_time()
        r = f(*args, **kw)
        if label == "device forward (_predictive + to host)":
            r = {k: (None if v is None else np.asarray(v)) for k, v in r.items()}
        t = T[label]; t[0] += time.perf_counter() - w; t[1] += time.thread_time() - c; t[2] += 1
        return r
    (owner.__dict__.__setitem__(name, g) if owner is fit else setattr(owner, name, g))
if instrument:
    wrap(fit, "_predictive", f=fit._predictive, label= "device forward (_predictive + to host)")
    wrap(Q.Draws, "_set", "Draws._set (host copies, broadcast theta)")
    wrap(L, "draw_training", "library draws")
    wrap(Q.Draws, "scaled", "Draws.scaled (mu * lib, new Draws)")
    wrap(Q.Draws, "sample", "count sampling (gp_sample_inverse)")
    wrap(Q.Draws, "moments", "moments (mean, sd)")
    wrap(P, "empirical_intervals", "empirical intervals (sort over draws)")
    wrap(P, "_nonfinite", "non-finite check")
    import h5netcdf.core as HC
    wrap(HC.Variable, "__setitem__", "HDF5 write (+ cast, shuffle, gzip)")
if os.environ.get("FIX"):  # the proposed changes, patched in this driver only (not in probgex)
    import h5netcdf.core as HC2
    orig_cv = HC2.Group.create_variable
    bs = P.block_size(draws, GENES)
    def cv(self, name, dimensions=(), dtype=None, data=None, fillvalue=None, chunks=None, **kw):
        if name == "counts":
            chunks = (1, min(n, bs), GENES)
        return orig_cv(self, name, dimensions, dtype, data, fillvalue, chunks, **kw)
    HC2.Group.create_variable = cv
    if "sort" in os.environ["FIX"]:
        orig_ei = Q.sorted_intervals
        P.empirical_intervals = lambda s, levels: orig_ei(np.sort(s.astype(np.int32), axis=0), levels)
        if instrument:
            wrap(P, "empirical_intervals", "empirical intervals (sort over draws)")
# one stage after the other in the process: proc CPU includes XLA threads
w0, c0 = time.perf_counter(), time.process_time()
out = WORK / f"predict_{n}.nc"
P.predict_to_file(fit, obs, out, n_samples=draws)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
size = out.stat().st_size; out.unlink()
res = {"fix": os.environ.get("FIX", ""), "cells": n, "draws": draws, "wall_s": wall, "cpu_s": cpu, "file_gib": size / 2**30,
       "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
       "load": os.getloadavg()[0], "parts": {k: [round(v[0], 2), round(v[1], 2), v[2]] for k, v in T.items()}}
print(json.dumps(res))
