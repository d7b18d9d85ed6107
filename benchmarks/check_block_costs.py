"""Where `check` spends its time, per block of observations, before and after the issue-4 speed work.

Same setup as check_speed.py (kang_ctrl5, the 2,000 genes with the most counts, GLM NB `~ cluster_id`
fitted on all but 1,000 held-out cells). On one prediction block (32 held-out cells x 2,000 genes x 200
draws) each step is timed in process CPU seconds (all threads), the minimum of 3 repeats, the old way
and the new way side by side in the same process: CPU time is steadier than wall time on a shared
machine, and the pairs see the same load.

old PIT: scipy incomplete beta for F(y - 1) plus the gammaln pmf over every draw and entry; new PIT:
P(X = 0) per draw and entry, the pmf recursion for counts <= 64. old sample: NumPy Gamma-Poisson; new
sample: inversion by the same recursion for means <= 4 (Gamma-Poisson above). Also moments vs mean and
the int64 vs int32 sort of the samples, and the CRPS.

Usage:
  .venv/bin/python benchmarks/check_block_costs.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, check_speed_split, machine, write  # noqa: E402


def main():
    import jax

    from probgex.diagnostics.scores import crps_from_samples
    from probgex.fit import Model
    from probgex.inference.predictive import Draws
    from probgex.models import likelihoods as lk

    train, test = check_speed_split()
    fit = Model("~ cluster_id", likelihood="nb").fit(train, seed=0, progress=False)
    data = fit.data(test)
    rows, d = next(fit.predictive_blocks(data, 200, jax.random.PRNGKey(0)))
    y = data.rows(rows).astype(np.float64)
    rng = np.random.default_rng(0)
    res: dict[str, list[float]] = {}

    def timed(name, f):
        t = time.process_time()
        out = f()
        res.setdefault(name, []).append(time.process_time() - t)
        return out

    for _ in range(3):
        d2 = Draws(d.kind, d.mu, d.theta, d.gate)  # fresh: P(X = 0) is cached per Draws
        old = timed("old PIT: incomplete beta cdf + gammaln pmf", lambda: (d2.cdf(y - 1), d2.pmf(y)))
        timed("new: P(X = 0) per draw and entry (shared)", lambda: d2.zero_prob)
        new = timed("new PIT: pmf recursion", lambda: d2.below_and_at(y))
        x = timed("old sample: Gamma-Poisson", lambda: lk.sample_counts(d.kind, rng, d.mu, d.theta, d.gate))
        timed("new sample: inversion (means <= 4)", lambda: d2.sample(rng))
        timed("old: moments (mean and sd)", d2.moments)
        timed("new: mean only", d2.mean)
        timed("old: sort int64 samples", lambda: np.sort(x, axis=0))
        xs = timed("new: sort int32 samples", lambda: np.sort(x.astype(np.int32), axis=0))
        timed("CRPS from sorted samples", lambda: crps_from_samples(xs, y, is_sorted=True))
    best = {k: min(v) for k, v in res.items()}
    for k, v in best.items():
        print(f"{k:45s} {v:7.3f} s")
    diff = max(float(np.max(np.abs(old[0] - new[0]))), float(np.max(np.abs(old[1] - new[1]))))
    print(f"largest |old - new| of F(y - 1) and p(y): {diff:.2e}")
    write(RESULTS / "check" / "block_costs.json", {
        "block": {"cells": len(rows), "genes": data.n_genes, "draws": 200}, "cpu_seconds_min_of_3": best,
        "max_abs_difference_pit_terms": diff, "machine": machine()})


if __name__ == "__main__":
    main()
