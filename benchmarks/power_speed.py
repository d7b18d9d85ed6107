"""Simulated experiments tested per second: probgex's vectorized test (all experiments of a chunk in one
vmapped call) against pydeseq2 run on the same simulated experiments, one after another.

    PYTHONPATH=. .venv/bin/python benchmarks/power_speed.py [--n 3,6] [--experiments 32] [--peer 2]

The truth: every gene of schurch_yeast's clean WT replicates with its mean share of the library and
its DESeq2-style dispersion (probgex.power.de_test on all clean replicates); 10% of genes DE at
|log2FC| = 0.585; libraries of 1e7 reads (sd 0.2 on the log scale). probgex: `--experiments`
experiments in chunks of 8 (compilation timed apart, once per n); pydeseq2 (n_cpus=2, no Cook's
filtering or refit, no independent filtering: the same test): the first `--peer` experiments.
Also checks that both call the same genes. Results: benchmarks/results/power_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

import probgex as pg  # noqa: E402
from probgex.power.de import deseq_batch  # noqa: E402
from probgex.power.simulate import Truth, simulate_counts  # noqa: E402

CHUNK = 8


def yeast_truth() -> Truth:
    a = pg.datasets.schurch_yeast()
    a = a[~a.obs["flagged_bad_rep"].astype(bool)].copy()
    res = pg.power.de_test(a, "~ strain", ("strain", "Snf2", "WT"))
    wt = np.asarray(a[a.obs["strain"] == "WT"].X, np.float64)
    frac = (wt / wt.sum(1, keepdims=True)).mean(0)
    ok = (frac > 0) & res["dispersion"].notna().to_numpy()
    return Truth.fixed(frac[ok], res["dispersion"].to_numpy()[ok], genes=np.asarray(a.var_names)[ok])


def pydeseq2_run(y: np.ndarray, n: int, n_cpus: int = 2) -> dict:
    """pydeseq2 on one two-group experiment (counts (2n, G)), Cook's filtering and independent
    filtering off: per-gene and global quantities."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    names = [f"s{i}" for i in range(2 * n)]
    meta = pd.DataFrame({"group": ["A"] * n + ["B"] * n}, index=names)
    counts = pd.DataFrame(y.astype(np.int64), index=names, columns=[f"g{j}" for j in range(y.shape[1])])
    inf = DefaultInference(n_cpus=n_cpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~group", refit_cooks=False, quiet=True, inference=inf)
        dds.deseq2()
        st = DeseqStats(dds, contrast=["group", "B", "A"], cooks_filter=False, independent_filter=False,
                        quiet=True, inference=inf)
        st.summary()
    return {"genewise": dds.var["genewise_dispersions"].to_numpy(float),
            "trend": np.asarray(dds.uns.get("trend_coeffs", [np.nan, np.nan]), float), "prior_var": float(dds.uns["prior_disp_var"]),
            "pvalue": st.results_df["pvalue"].to_numpy(float), "padj": st.results_df["padj"].to_numpy(float)}


def pydeseq2_calls(y: np.ndarray, n: int) -> np.ndarray:
    return pydeseq2_run(y, n)["padj"] < 0.05


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="3,6")
    ap.add_argument("--experiments", type=int, default=32)
    ap.add_argument("--peer", type=int, default=2)
    args = ap.parse_args()
    truth = yeast_truth()
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(t) for t in args.n.split(",")]:
        sims = [simulate_counts(truth, 0, n, depth=1e7, depth_sd=0.2, lfc=0.585, de_fraction=0.1, rng=rng)
                for _ in range(args.experiments)]
        y = np.stack([s[0] for s in sims])
        X = np.column_stack([np.ones(2 * n), np.repeat([0.0, 1.0], n)]).astype(np.float32)
        t = time.perf_counter()
        jax.block_until_ready(deseq_batch(jnp.asarray(y[:CHUNK]), X, coef=1).padj)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        padj = np.concatenate([np.asarray(deseq_batch(jnp.asarray(y[i:i + CHUNK]), X, coef=1).padj)
                               for i in range(0, args.experiments, CHUNK)])
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        peer = [pydeseq2_calls(y[e], n) for e in range(args.peer)]
        t_peer = time.perf_counter() - t
        agree = [float(np.mean((np.nan_to_num(padj[e], nan=1) < 0.05) == peer[e])) for e in range(args.peer)]
        jacc = [float(((np.nan_to_num(padj[e], nan=1) < 0.05) & peer[e]).sum()
                      / max(1, ((np.nan_to_num(padj[e], nan=1) < 0.05) | peer[e]).sum())) for e in range(args.peer)]
        row = {"n_per_group": n, "genes": int(y.shape[2]), "experiments_probgex": args.experiments,
               "seconds_probgex": t_ours, "compile_plus_first_chunk_s": t_first,
               "per_s_probgex": args.experiments / t_ours, "experiments_pydeseq2": args.peer,
               "seconds_pydeseq2": t_peer, "per_s_pydeseq2": args.peer / t_peer,
               "ratio": (args.experiments / t_ours) / (args.peer / t_peer),
               "call_agreement": agree, "call_jaccard": jacc}
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "power_speed.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    print("| n per group | genes | probgex exp/s | pydeseq2 exp/s | ratio | compile + first chunk (s) | Jaccard of calls |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n_per_group']} | {r['genes']} | {r['per_s_probgex']:.3f} | {r['per_s_pydeseq2']:.4f} | "
              f"{r['ratio']:.0f}x | {r['compile_plus_first_chunk_s']:.0f} | {np.mean(r['call_jaccard']):.3f} |")


if __name__ == "__main__":
    main()
