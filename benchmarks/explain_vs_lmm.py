"""`pg.explain` against a variancePartition-style linear mixed model per gene (issue 16, part 1).

For one data set: a random subset of expressed genes; probgex fits an NB GLM with the additive formula
of the metadata and `pg.explain` splits each gene's log1p CP10k variance into the formula's terms,
"overdispersion" (the NB's Gamma layer), "other" and count "noise". The reference is what
variancePartition (Hoffman & Schadt 2016) fits: per gene a linear mixed model with every categorical
covariate as a random effect (statsmodels MixedLM, REML, variance components of one all-observations
group), on log-CPM as voom computes it,
log2((x + 0.5) / (L + 1) * 1e6); the share of a term is its variance component over the sum of the
components and the residual variance. The same LMM on log1p CP10k (probgex's scale) separates the
effect of the scale from that of the model. L is the total count over all genes for every method:
probgex gets the other genes' counts as one extra column (dropped from the comparison) and
library="observed", so its CP10k and the LMM's CPM divide by the same library.

    PYTHONPATH=. .venv/bin/python benchmarks/explain_vs_lmm.py --dataset gtex_brain

Needs statsmodels (`pip install statsmodels`, in the `bench` extra). Prints a markdown table and writes
benchmarks/results/explain_vs_lmm_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine  # noqa: E402

SETS = {  # formula terms (categorical obs columns) and how the covariates are read
    "gtex_brain": ["class", "sex", "age"],
    "bottomly": ["strain", "batch"],
    "kang_muscat": ["cluster_id", "group_id", "donor"],
}


def covariates(name: str, a: ad.AnnData) -> pd.DataFrame:
    obs = a.obs.copy()
    if name == "bottomly":
        obs["batch"] = "exp" + obs["experiment.number"].astype(str)
    if name == "kang_muscat":
        obs["donor"] = "d" + obs["sample_id"].astype(str).str[-3:]
    return pd.DataFrame({t: obs[t].astype(str).to_numpy() for t in SETS[name]}, index=a.obs_names)


def select(name: str, a: ad.AnnData, n_genes: int, n_cells: int | None, seed: int):
    """Observations (a random subset of cells for single-cell data), expressed genes, and the library."""
    rng = np.random.default_rng(seed)
    if n_cells is not None and a.n_obs > n_cells:
        a = a[np.sort(rng.choice(a.n_obs, n_cells, replace=False))]
    x = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    x = x.astype(np.float64)
    lib = x.sum(1)
    if name == "kang_muscat":  # single cell: detected in at least 10% of the cells
        expressed = (x > 0).mean(0) >= 0.10
    else:  # bulk: at least 1 CPM in at least half of the samples (edgeR-style filter)
        expressed = (x / lib[:, None] * 1e6 >= 1).mean(0) >= 0.5
    idx = np.flatnonzero(expressed)
    if len(idx) > n_genes:
        idx = np.sort(rng.choice(idx, n_genes, replace=False))
    return a, x, lib, idx


def lmm_shares(y: np.ndarray, obs: pd.DataFrame, terms: list[str]) -> np.ndarray:
    """Per gene (columns of y) the variance components of each term and the residual, as shares."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    n = y.shape[0]
    vc = {t: {0: pd.get_dummies(obs[t]).to_numpy(np.float64)} for t in terms}
    out = np.full((y.shape[1], len(terms) + 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in range(y.shape[1]):
            model = MixedLM(y[:, g], np.ones((n, 1)), np.zeros(n), exog_vc=vc)
            try:
                r = model.fit(reml=True, method=["lbfgs"])
            except (np.linalg.LinAlgError, ValueError):
                continue
            comp = dict(zip(model.exog_vc.names, np.maximum(r.vcomp, 0.0), strict=True))
            v = np.array([comp[t] for t in terms] + [r.scale])
            out[g] = v / v.sum()
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=list(SETS), required=True)
    p.add_argument("--genes", type=int, default=1000, help="random expressed genes compared")
    p.add_argument("--cells", type=int, default=None, help="random cells (single-cell data)")
    p.add_argument("--n-draws", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--figures", type=Path, default=None, help="folder for explain's files (csv, json, png)")
    args = p.parse_args()

    import probgex as pg

    name, terms = args.dataset, SETS[args.dataset]
    a, x, lib, idx = select(name, load(name), args.genes, args.cells, args.seed)
    obs = covariates(name, a)
    rest = np.delete(x, idx, axis=1).sum(1, keepdims=True)  # the other genes: one column, for the library
    genes = list(a.var_names[idx])
    fit_data = ad.AnnData(np.hstack([x[:, idx], rest]).astype(np.float32), obs=obs,
                          var=pd.DataFrame(index=genes + ["__other_genes__"]))
    formula = "~ " + " + ".join(terms)
    t0 = time.perf_counter()
    fit = pg.Model(formula, likelihood="nb", library="observed").fit(fit_data, seed=args.seed, progress=False)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = pg.explain(fit, fit_data, n_draws=args.n_draws, seed=args.seed)
    t_explain = time.perf_counter() - t0
    ds = ds.sel(gene=genes)
    if args.figures is not None:
        from probgex.diagnostics.variance_report import write

        write(ds, args.figures)
    pg_share = {t: ds.share.sel(term=t).values for t in terms}
    pg_share["residual"] = ds.share.sel(term=["overdispersion", "other", "noise"]).sum("term").values

    xs = x[:, idx]
    scales = {"log-CPM": np.log2((xs + 0.5) / (lib[:, None] + 1) * 1e6),
              "log1p CP10k": np.log1p(xs / lib[:, None] * 1e4)}
    rows, t_lmm = [], {}
    for scale, y in scales.items():
        t0 = time.perf_counter()
        ref = lmm_shares(y, obs, terms)
        t_lmm[scale] = time.perf_counter() - t0
        for k, t in enumerate(terms + ["residual"]):
            rows.append({"reference": f"LMM on {scale}", "term": t, "spearman": spearman(pg_share[t], ref[:, k]),
                         "median_probgex": float(np.median(pg_share[t])),
                         "median_lmm": float(np.nanmedian(ref[:, k])),
                         "n_genes": int(np.isfinite(ref[:, k]).sum())})
    result = {"dataset": name, "n_obs": int(a.n_obs), "n_genes": len(genes), "formula": formula,
              "n_draws": args.n_draws, "noise_median": float(np.median(ds.share.sel(term="noise"))),
              "overdispersion_median": float(np.median(ds.share.sel(term="overdispersion"))),
              "other_median": float(np.median(ds.share.sel(term="other"))),
              "fit_seconds": t_fit, "explain_seconds": t_explain, "lmm_seconds": t_lmm,
              "best_epoch": fit.history.best_epoch, "rows": rows, "machine": machine(),
              "command": "PYTHONPATH=. .venv/bin/python benchmarks/explain_vs_lmm.py " + " ".join(sys.argv[1:])}
    out = args.out or RESULTS / f"explain_vs_lmm_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{name}: {a.n_obs} obs x {len(genes)} genes, {formula}; fit {t_fit:.0f} s, explain {t_explain:.0f} s, "
          f"LMM {sum(t_lmm.values()):.0f} s; probgex median noise share {result['noise_median']:.3f}, "
          f"overdispersion {result['overdispersion_median']:.3f}, "
          f"other {result['other_median']:.3f}")
    print("| reference | term | Spearman | median share probgex | median share LMM |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['reference']} | {r['term']} | {r['spearman']:.3f} | {r['median_probgex']:.3f} | "
              f"{r['median_lmm']:.3f} |")


if __name__ == "__main__":
    main()
