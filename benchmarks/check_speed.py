"""Speed of `probgex.diagnostics.check` (issue 4 goal: under one minute for 1,000 held-out cells x 2,000
genes with 200 predictive draws, on 2 cores).

Setup: kang_ctrl5 restricted to the 2,000 genes with the highest total counts; a fixed random permutation
of the cells (numpy default_rng(0)); the first 1,000 cells are held out, a GLM NB `~ cluster_id` is fitted
on the rest (default early stopping), then `check(fit, heldout, n_samples=200)` is timed twice: the first
call as a user sees it (including JIT compilation), then a second, compiled call under cProfile (top
functions by cumulative and by own time go into the result; cProfile adds a little overhead).

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--n-samples", type=int, default=200)
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
    rep, t_first = timed(check, fit, test, n_samples=args.n_samples, progress=False)
    print(f"check (first call, with compilation): {t_first:.1f} s", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    rep2, t_second = timed(check, fit, test, n_samples=args.n_samples, progress=False)
    prof.disable()
    print(f"check (second call, profiled): {t_second:.1f} s", flush=True)
    cum = profile_lines(prof, "cumulative", 35)
    own = profile_lines(prof, "tottime", 25)
    print("\n".join(own))
    s = rep.summary()
    write(args.out, {
        "n_test": int(test.n_obs), "n_genes": int(test.n_vars), "n_train": int(train.n_obs),
        "n_samples": args.n_samples, "fit_seconds": t_fit, "epochs_run": len(fit.history.train),
        "check_seconds_first": t_first, "check_seconds_second_profiled": t_second,
        "goal_seconds": 60, "coverage": s["coverage"], "lpd": s["mean_log_predictive_density"],
        "profile_cumulative": cum, "profile_tottime": own,
        "threads_env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "machine": machine()})


if __name__ == "__main__":
    main()
