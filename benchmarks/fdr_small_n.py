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
the before/after comparison in benchmarks/README.md. `--oracle` also tests every experiment with the true
dispersions (NB GLM + Wald + BH, no estimation): the FDR the test would have if the dispersions were
known. `--kl-prior-var` (only where 2n - 2 <= 3, i.e. n = 2) also runs each experiment with DESeq2's
prior variance for few residual degrees of freedom (estimateDispersionsPriorVar: the log-residual
histogram matched by KL divergence to log(chi2_df / df) + N(0, s2), s2 on a grid, loess-smoothed;
pydeseq2 and probgex use max(MAD^2 - trigamma(df / 2), 0.25) there), ported to numpy here. Results: benchmarks/results/fdr_small_n.json.
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
from power_speed import pydeseq2_run, yeast_truth  # noqa: E402

from probgex.power import dispersion  # noqa: E402
from probgex.power.de import deseq_batch  # noqa: E402
from probgex.power.simulate import simulate_counts  # noqa: E402

CHUNK = 8


def _loess_argmin(x: np.ndarray, yv: np.ndarray, fine: np.ndarray, span: float = 0.2) -> float:
    """argmin over `fine` of a local quadratic fit with tricube weights (R's loess, span 0.2, degree 2)."""
    k = int(np.ceil(span * len(x)))
    out = np.empty(len(fine))
    for i, x0 in enumerate(fine):
        d = np.abs(x - x0)
        w = np.clip(1 - (d / np.sort(d)[k - 1]) ** 3, 0, None) ** 3
        A = np.column_stack([np.ones_like(x), x - x0, (x - x0) ** 2]) * np.sqrt(w)[:, None]
        out[i] = np.linalg.lstsq(A, yv * np.sqrt(w), rcond=None)[0][0]
    return float(fine[np.argmin(out)])


def deseq2_few_df_prior_var(resid: np.ndarray, df: int) -> tuple[float, float]:
    """DESeq2's (prior variance, varLogDispEsts) for residual df <= 3 from the log residuals of the
    gene-wise estimates (>= 100 x min disp) to the trend: a port of estimateDispersionsPriorVar's branch
    (numpy's generator with seed 2 stands in for R's set.seed(2))."""
    from scipy.special import polygamma

    rs = np.random.default_rng(2)
    brks = np.arange(-20, 21) / 2
    obs = resid[(resid > brks[0]) & (resid < brks[-1])]
    od = np.histogram(obs, brks)[0] / (len(obs) * 0.5)
    grid = np.linspace(0, 8, 200)
    kl = []
    for s2 in grid:
        r = np.log(rs.chisquare(df, 10000)) + rs.normal(0, np.sqrt(s2), 10000) - np.log(df)
        r = r[(r > brks[0]) & (r < brks[-1])]
        rd = np.histogram(r, brks)[0] / (len(r) * 0.5)
        z = np.r_[od, rd]
        small = z[z > 0].min()
        kl.append(np.sum(od * (np.log(od + small) - np.log(rd + small))))
    am = _loess_argmin(grid, np.array(kl), np.linspace(0, 8, 1000))
    return max(am, 0.25), am + float(polygamma(1, df / 2))


def test_with(y: np.ndarray, X: np.ndarray, alpha=None, few_df_prior: bool = False) -> np.ndarray:
    """padj (G,) of one experiment: with fixed dispersions `alpha` (G,), or the pipeline of `de._deseq`
    with DESeq2's few-df prior variance and outlier threshold (`few_df_prior`)."""
    import jax

    from probgex.power import nbglm
    from probgex.power.de import _first_means

    y, X = jnp.asarray(y, jnp.float32), jnp.asarray(X, jnp.float32)
    N, P = X.shape
    nz = y.sum(0) > 0
    sf = nbglm.size_factors(y)
    if alpha is None:
        max_disp = float(max(10, N))
        bm = (y / sf[:, None]).mean(0)
        mu0 = _first_means(y, X, sf, True, max_disp)
        log_gw = dispersion.genewise_log_alpha(y, mu0, X, sf, max_disp)
        tr = dispersion.fit_trend(jnp.exp(log_gw), bm, nz)
        log_trend = jnp.log(tr[0] + tr[1] / jnp.where(nz, bm, 1.0))
        ok = np.asarray(nz & (log_gw >= jnp.log(100 * dispersion.MIN_DISP)))
        pv, var_log = deseq2_few_df_prior_var(np.asarray(log_gw - log_trend)[ok], N - P)
        log_map = dispersion.fit_log_alpha(y, mu0, X, max_disp, prior=(log_trend, jnp.float32(pv)))
        alpha = dispersion.final_dispersion(log_gw, log_map, log_trend, jnp.float32(var_log))
    alpha = jnp.asarray(alpha, jnp.float32)
    beta, mu = nbglm.irls(y, X, sf, alpha, 30)
    z = beta[:, 1] / jnp.sqrt(nbglm.coef_covariance(X, mu, alpha)[:, 1, 1])
    p = jnp.where(nz, jax.scipy.special.erfc(jnp.abs(z) / jnp.sqrt(2.0)), jnp.nan)
    return np.asarray(nbglm.benjamini_hochberg(p))


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
    ap.add_argument("--oracle", action="store_true")
    ap.add_argument("--kl-prior-var", action="store_true")
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
        def summary(fp):
            fp = np.array(fp)
            return {"fdr_mean": float(fp[:, 0].mean()), "fdr_se": float(fp[:, 0].std(ddof=1) / np.sqrt(len(fp))),
                    "power_mean": float(fp[:, 1].mean()), "fdp": fp[:, 0].tolist()}
        if args.oracle:
            row["oracle"] = summary([fdp_power(test_with(y[e], X, alpha=truth.alpha[0]), l2fc[e])
                                     for e in range(len(y))])
            print(f"n = {n}, true dispersions: FDR {row['oracle']['fdr_mean']:.4f} +- {row['oracle']['fdr_se']:.4f}, "
                  f"power {row['oracle']['power_mean']:.3f}", flush=True)
        if args.kl_prior_var and 2 * n - 2 <= 3:
            row["kl_prior_var"] = summary([fdp_power(test_with(y[e], X, few_df_prior=True), l2fc[e])
                                           for e in range(len(y))])
            d = np.array(row["kl_prior_var"]["fdp"]) - fdp
            print(f"n = {n}, DESeq2's few-df prior variance: FDR {row['kl_prior_var']['fdr_mean']:.4f} +- "
                  f"{row['kl_prior_var']['fdr_se']:.4f}, power {row['kl_prior_var']['power_mean']:.3f}; paired "
                  f"difference to the trigamma rule {d.mean():.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f}", flush=True)
        for e in range(min(args.peer, len(y))):
            t = time.perf_counter()
            p = pydeseq2_run(y[e], n, n_cpus=1)
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
    out = RESULTS / f"fdr_small_n{'_before' if args.before else ''}{'_' + args.n.replace(',', '_') if args.n != '3,6' else ''}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
