"""Is the 1-df dispersion over-estimate on yeast a property of the method or of the drawn replicates? (issue 13)

The same training designs and genes as yeast_training_draws.py, but counts SIMULATED from NB with each gene's
strain mean (its share of the library over all clean replicates) and its reference dispersion (pydeseq2's gene-wise
estimate over all clean replicates, floored at 1e-4), at the training samples' own library sizes; 40 simulated
held-out samples per strain at the median library. Reports the fitted trend's median, E[alpha] / true (median over
genes) and held-out PIT coverage, for `--snf 1` and `--snf 2` with the same WT pair.

  PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/yeast_df1_simulated.py --draws 2 --out R.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import probgex as pg

sys.path.insert(0, str(Path(__file__).parent))
from yeast_df1_diagnosis import reference_dispersion  # noqa: E402
from yeast_training_draws import clean_yeast  # noqa: E402


def simulated_design(a, draw: int, nsnf: int):
    """(AnnData of 2 + nsnf training samples then 40 + 40 held-out, n training, the genes' true dispersions, strains,
    training names) of one simulated design: draw `draw` (generator seeds 100 + draw, draw, 1000 + draw)."""
    wt = list(a.obs_names[a.obs["strain"] == "WT"])
    snf = list(a.obs_names[a.obs["strain"] == "Snf2"])
    lib_all = a.X.sum(1)
    rng = np.random.default_rng(100 + draw)
    names = [str(n) for n in rng.choice(wt, 2, replace=False)] + \
            [str(n) for n in rng.choice(snf, nsnf, replace=False)]
    xt = np.asarray(a[names].X)
    genes = np.flatnonzero((xt > 0).all(0) & (xt.mean(0) >= 5))
    genes = np.sort(np.random.default_rng(draw).choice(genes, 600, replace=False))
    alpha = np.maximum(reference_dispersion(a, genes), 1e-4)
    share = {s: (a.X[a.obs["strain"] == s][:, genes] / lib_all[(a.obs["strain"] == s).values, None]).mean(0)
             for s in ("WT", "Snf2")}
    strains = ["WT", "WT"] + ["Snf2"] * nsnf + ["WT"] * 40 + ["Snf2"] * 40
    libs = np.concatenate([a[names].X.sum(1), np.full(80, np.median(lib_all))])
    mu = np.stack([share[s] for s in strains]) * libs[:, None]
    sim = np.random.default_rng(1000 + draw)
    y = sim.poisson(sim.gamma(1 / alpha, mu * alpha))
    obs = pd.DataFrame({"strain": pd.Categorical(strains, ["WT", "Snf2"])},
                       index=[f"s{i}" for i in range(len(strains))])
    b = ad.AnnData(y.astype(np.float32), obs=obs, var=pd.DataFrame(index=a.var_names[genes]))
    return b, 2 + nsnf, alpha, strains, names


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    a = clean_yeast(dense=True)
    out = {}
    for draw in range(args.draws):
        for nsnf in (1, 2):
            b, n, alpha, strains, names = simulated_design(a, draw, nsnf)
            genes = np.arange(b.n_vars)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = pg.Model("~ strain", likelihood="nb").fit(b[:n].copy(), seed=0, progress=False)
                ev = fit.evaluate(b[n:].copy(), n_samples=200, levels=(0.5, 0.9), seed=0)
            prm = {k: np.asarray(v) for k, v in fit.params.items()}
            trend = float(prm["disp_asymptote"]) + float(prm["disp_extra_poisson"]) / np.exp(np.asarray(fit.log_mean, float))
            loc, sd = prm["gp_loc"][:, -1], prm["gp_scale_diag"][:, -1]
            e_alpha = np.exp(loc + sd**2 / 2)  # approximately (the off-diagonal terms of the factor left out)
            pit = ev["pit"].values
            st = np.asarray(strains[n:])
            r = {"train": names, "median_trend": float(np.median(trend)), "median_true_alpha": float(np.median(alpha)),
                 "mean_true_alpha": float(np.mean(alpha)), "median_E_alpha_over_true": float(np.median(e_alpha / alpha)),
                 "coverage": ev["coverage"].values.round(4).tolist(),
                 "lpd_per_entry": float(ev.attrs["mean_log_predictive_density"]) / len(genes),
                 "coverage50_by_strain": {s: float(np.mean(np.abs(pit[st == s] - 0.5) <= 0.25)) for s in ("WT", "Snf2")}}
            out[f"draw{draw}_snf{nsnf}"] = r
            print(draw, nsnf, json.dumps(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
