"""Speed of `probgex.diagnostics.check` (issue 4 goal: under one minute for 1,000 held-out cells x 2,000
genes with 200 predictive draws, on 2 cores).

Setup: kang_ctrl5 restricted to the 2,000 genes with the highest total counts; a fixed random permutation
of the cells (numpy default_rng(0)); the first 1,000 cells are held out, a GLM NB `~ cluster_id` is fitted
on the rest (default early stopping), then `check(fit, heldout, n_samples=200)` is timed twice: the first
call as a user sees it (including JIT compilation), then a second, compiled call under cProfile (top
functions by cumulative and by own time go into the result; cProfile adds a little overhead). Each call
also records its process CPU time (all threads) and the 1-minute load average, since the machine may be
shared: wall time under load overstates the cost, CPU time is the steadier number.

Writes benchmarks/results/check/speed.json and prints the numbers.

Usage:
  .venv/bin/python benchmarks/check_speed.py
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine, timed, write  # noqa: E402


def profile_lines(prof: cProfile.Profile, key: str, n: int) -> list[str]:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(n)
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--n-samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=None, help="check's worker threads (default: CPU count, <= 4)")
    p.add_argument("--out", type=Path, default=RESULTS / "check" / "speed.json")
    args = p.parse_args(argv)
    from probgex.diagnostics import check
    from probgex.fit import Model

    a = load("kang_ctrl5")
    totals = np.asarray(a.X.sum(0)).ravel()
    genes = np.sort(np.argsort(-totals, kind="stable")[: args.n_genes])
    a = a[:, genes].copy()
    perm = np.random.default_rng(0).permutation(a.n_obs)
    test_mask = np.zeros(a.n_obs, bool)
    test_mask[perm[: args.n_test]] = True
    train, test = a[~test_mask].copy(), a[test_mask].copy()
    fit, t_fit = timed(Model("~ cluster_id", likelihood="nb").fit, train, seed=0, progress=False)
    print(f"fit: {t_fit:.1f} s, {len(fit.history.train)} epochs", flush=True)
    kw = {"n_samples": args.n_samples, "progress": False, "workers": args.workers}
    load0, cpu0 = os.getloadavg()[0], cpu_seconds()
    rep, t_first = timed(check, fit, test, **kw)
    cpu_first, load1 = cpu_seconds() - cpu0, os.getloadavg()[0]
    print(f"check (first call, with compilation): {t_first:.1f} s wall, {cpu_first:.1f} s CPU, load {load0:.1f}"
          f" -> {load1:.1f}", flush=True)
    prof = cProfile.Profile()
    cpu0 = cpu_seconds()
    prof.enable()
    rep2, t_second = timed(check, fit, test, **kw)
    prof.disable()
    cpu_second, load2 = cpu_seconds() - cpu0, os.getloadavg()[0]
    print(f"check (second call, profiled): {t_second:.1f} s wall, {cpu_second:.1f} s CPU, load {load2:.1f}", flush=True)
    cum = profile_lines(prof, "cumulative", 35)
    own = profile_lines(prof, "tottime", 25)
    print("\n".join(own))
    s = rep.summary()
    write(args.out, {
        "n_test": int(test.n_obs), "n_genes": int(test.n_vars), "n_train": int(train.n_obs),
        "n_samples": args.n_samples, "fit_seconds": t_fit, "epochs_run": len(fit.history.train),
        "check_seconds_first": t_first, "check_seconds_second_profiled": t_second,
        "check_cpu_seconds_first": cpu_first, "check_cpu_seconds_second_profiled": cpu_second,
        "load_average_1min": {"before": load0, "after_first": load1, "after_second": load2},
        "workers": args.workers,
        "goal_seconds": 60, "coverage": s["coverage"], "lpd": s["mean_log_predictive_density"],
        "profile_cumulative": cum, "profile_tottime": own,
        "threads_env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "machine": machine()})


if __name__ == "__main__":
    main()
