"""issue 13 yeast 1 df: gene-wise dispersions (pydeseq2, `~ 1`) of each strain alone, all clean replicates, on design 0s 600 genes
(PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/yeast_df1_strain_dispersion.py); writes results/yeast_df1_strain_dispersion.json."""
import sys, json, warnings, numpy as np, pandas as pd
sys.path.insert(0, "benchmarks")
import probgex as pg
from pydeseq2.dds import DeseqDataSet
a = pg.datasets.schurch_yeast(); a = a[~a.obs["flagged_bad_rep"].astype(bool)].copy(); a.X = np.asarray(a.X)
rng = np.random.default_rng(100); wt = list(a.obs_names[a.obs["strain"] == "WT"]); snf = list(a.obs_names[a.obs["strain"] == "Snf2"])
names = [str(n) for n in rng.choice(wt, 2, replace=False)] + [str(n) for n in rng.choice(snf, 1, replace=False)]
xt = np.asarray(a[names].X); genes = np.flatnonzero((xt > 0).all(0) & (xt.mean(0) >= 5))
genes = np.sort(np.random.default_rng(0).choice(genes, 600, replace=False))
out = {}
for s in ("WT", "Snf2"):
    b = a[a.obs["strain"] == s][:, genes]
    c = pd.DataFrame(b.X.astype(np.int64), index=b.obs_names, columns=b.var_names)
    md = b.obs[["strain"]].copy(); md["dummy"] = "x"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=c, metadata=md, design="~ 1", refit_cooks=False, quiet=True, n_cpus=1); dds.deseq2()
    g = np.asarray(dds.var["genewise_dispersions"], float)
    out[s] = {"n": int(b.n_obs), "median": float(np.median(g)), "mean": float(np.mean(g)), "trend": [float(x) for x in np.asarray(dds.uns.get("trend_coeffs", [np.nan]))]}
    print(s, out[s], flush=True)
json.dump(out, open("benchmarks/results/yeast_df1_strain_dispersion.json", "w"))
