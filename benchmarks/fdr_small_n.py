"""Realized FDR of probgex's DE test on a known NB truth at small n, and where it departs from pydeseq2.

    PYTHONPATH=. .venv/bin/python benchmarks/fdr_small_n.py [--n 3,6] [--experiments 16] [--peer 4] [--before]

The truth is `power_speed.yeast_truth()` (6,878 yeast genes, each with its WT mean share and the
dispersion `de_test` estimates on all clean replicates); 10% of genes DE at |log2FC| = 0.585; libraries
1e7 (log sd 0.2); the experiments are drawn with numpy seed 0, as in power_speed.py. For each n: the
false discovery proportion (FDP) at padj < 0.05 of `deseq_batch` on `--experiments` experiments (mean
+- its Monte Carlo SE) and the power. With `--peer k`, pydeseq2 (no Cook's filtering or refit, no
independent filtering: the same test) runs the first k experiments; per experiment it prints both FDPs,
the genes whose gene-wise dispersion sits at the minimum (1e-8) in each, the trend coefficients (a0, a1),
the prior variance of log alpha, and the Spearman correlation of the p-values.

`--before` restores the gene-wise rule of probgex before this benchmark (every gene at its Cox-Reid
maximum, also where DESeq2's moments start is at the minimum; see `dispersion.genewise_log_alpha`)
for the test of the simulated experiments (the truth is built with the current rule either way), for
the before/after comparison in benchmarks/README.md. Results: benchmarks/results/fdr_small_n.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402
from power_speed import yeast_truth  # noqa: E402

from probgex.power import dispersion  # noqa: E402
from probgex.power.de import deseq_batch  # noqa: E402
from probgex.power.simulate import simulate_counts  # noqa: E402

CHUNK = 8


def pydeseq2_run(y: np.ndarray, n: int) -> dict:
    """pydeseq2 on one experiment (counts (2n, G)): per-gene and global quantities."""
    import warnings

    import pandas as pd
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    names = [f"s{i}" for i in range(2 * n)]
    meta = pd.DataFrame({"group": ["A"] * n + ["B"] * n}, index=names)
    counts = pd.DataFrame(y.astype(np.int64), index=names, columns=[f"g{j}" for j in range(y.shape[1])])
    inf = DefaultInference(n_cpus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~group", refit_cooks=False, quiet=True,
                           inference=inf)
        dds.deseq2()
        st = DeseqStats(dds, contrast=["group", "B", "A"], cooks_filter=False, independent_filter=False,
                        quiet=True, inference=inf)
        st.summary()
    return {"genewise": dds.var["genewise_dispersions"].to_numpy(float),
            "trend": np.asarray(dds.uns["trend_coeffs"], float), "prior_var": float(dds.uns["prior_disp_var"]),
            "pvalue": st.results_df["pvalue"].to_numpy(float), "padj": st.results_df["padj"].to_numpy(float)}


def fdp_power(padj: np.ndarray, l2fc: np.ndarray) -> tuple[float, float, int]:
    call = np.nan_to_num(padj, nan=1.0) < 0.05
    return (float((call & (l2fc == 0)).sum() / max(call.sum(), 1)),
            float((call & (l2fc != 0)).sum() / max((l2fc != 0).sum(), 1)), int(call.sum()))


def main() -> None:
    from scipy import stats

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="3,6")
    ap.add_argument("--experiments", type=int, default=16)
    ap.add_argument("--peer", type=int, default=0)
    ap.add_argument("--before", action="store_true")
    args = ap.parse_args()
    truth = yeast_truth()  # with the current rule either way, so that --before tests the same truth
    if args.before:
        dispersion.genewise_log_alpha = lambda y, mu, X, sf, max_disp: dispersion.fit_log_alpha(y, mu, X, max_disp)
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(t) for t in args.n.split(",")]:
        sims = [simulate_counts(truth, 0, n, depth=1e7, depth_sd=0.2, lfc=0.585, de_fraction=0.1, rng=rng)
                for _ in range(args.experiments)]
        y, l2fc = np.stack([s[0] for s in sims]), np.stack([s[1] for s in sims])
        X = np.column_stack([np.ones(2 * n), np.repeat([0.0, 1.0], n)]).astype(np.float32)
        keys = ("padj", "pvalue", "genewise", "trend", "prior_var")
        parts = {k: [] for k in keys}
        for i in range(0, len(y), CHUNK):
            r = deseq_batch(jnp.asarray(y[i:i + CHUNK]), X, coef=1)
            for k in keys:
                parts[k].append(np.asarray(getattr(r, k)))
        res = {k: np.concatenate(v) for k, v in parts.items()}
        ours = [fdp_power(res["padj"][e], l2fc[e]) for e in range(len(y))]
        fdp = np.array([o[0] for o in ours])
        row = {"n_per_group": n, "experiments": len(y), "before": args.before,
               "fdr_mean": float(fdp.mean()), "fdr_se": float(fdp.std(ddof=1) / np.sqrt(len(fdp))),
               "power_mean": float(np.mean([o[1] for o in ours])), "fdp": fdp.tolist(),
               "prior_var_mean": float(res["prior_var"].mean()), "trend_mean": res["trend"].mean(0).tolist(),
               "peer": []}
        for e in range(min(args.peer, len(y))):
            t = time.perf_counter()
            p = pydeseq2_run(y[e], n)
            ok = np.isfinite(p["pvalue"]) & np.isfinite(res["pvalue"][e])
            row["peer"].append({
                "experiment": e, "seconds": time.perf_counter() - t,
                "fdp_power_calls_pydeseq2": fdp_power(p["padj"], l2fc[e]),
                "fdp_power_calls_probgex": ours[e],
                "genewise_at_min_pydeseq2": int((p["genewise"][ok] < 1e-7).sum()),
                "genewise_at_min_probgex": int((res["genewise"][e][ok] < 1e-7).sum()),
                "trend_pydeseq2": p["trend"].tolist(), "trend_probgex": res["trend"][e].tolist(),
                "prior_var_pydeseq2": p["prior_var"], "prior_var_probgex": float(res["prior_var"][e]),
                "spearman_p": float(stats.spearmanr(p["pvalue"][ok], res["pvalue"][e][ok])[0])})
            print(json.dumps(row["peer"][-1]), flush=True)
        rows.append(row)
        print(f"n = {n}: FDR {row['fdr_mean']:.4f} +- {row['fdr_se']:.4f}, power {row['power_mean']:.3f} "
              f"({len(y)} experiments{', before' if args.before else ''})", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"fdr_small_n{'_before' if args.before else ''}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
