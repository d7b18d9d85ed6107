"""issue 13 yeast 1 df: the fitted trend vs the reference dispersions on designs 0-1 at 1 and 2 df (run from the checkout root:
PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/yeast_df1_trend_check.py); writes results/yeast_df1_trend_check.json."""
import sys, json, warnings, numpy as np
sys.path.insert(0, "benchmarks")
import probgex as pg
from yeast_df1_diagnosis import reference_dispersion
a = pg.datasets.schurch_yeast(); a = a[~a.obs["flagged_bad_rep"].astype(bool)].copy(); a.X = np.asarray(a.X)
wt = list(a.obs_names[a.obs["strain"] == "WT"]); snf = list(a.obs_names[a.obs["strain"] == "Snf2"])
out = {}
for nsnf in (1, 2):
  for draw in (0, 1):
    rng = np.random.default_rng(100 + draw)
    names = [str(n) for n in rng.choice(wt, 2, replace=False)] + [str(n) for n in rng.choice(snf, nsnf, replace=False)]
    xt = np.asarray(a[names].X)
    genes = np.flatnonzero((xt > 0).all(0) & (xt.mean(0) >= 5))
    genes = np.sort(np.random.default_rng(draw).choice(genes, 600, replace=False))
    ref = reference_dispersion(a, genes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pg.Model("~ strain", likelihood="nb").fit(a[names][:, genes].copy(), seed=0, progress=False)
    p = {k: np.asarray(v) for k, v in fit.params.items()}
    a0, a1, s = float(p["disp_asymptote"]), float(p["disp_extra_poisson"]), float(p["disp_trend_sd"])
    trend = a0 + a1 / np.exp(np.asarray(fit.log_mean, float))
    post_la = p["gp_loc"][:, -1]
    d = np.log(ref) - np.log(trend)
    r = {"a0": a0, "a1": a1, "s": s, "median_trend": float(np.median(trend)), "median_ref": float(np.median(ref)),
         "mean_log_ref_minus_log_trend": float(d.mean()), "sd_log_ref_minus_log_trend": float(d.std()),
         "mean_post_loc_minus_log_trend": float((post_la - np.log(trend)).mean()),
         "log_mean_ref_over_trend": float(np.log(np.mean(ref / trend)))}
    out[f"{nsnf}snf_draw{draw}"] = r
    print(nsnf, draw, json.dumps({k: round(v, 4) for k, v in r.items()}), flush=True)
json.dump(out, open("benchmarks/results/yeast_df1_trend_check.json", "w"), indent=1)
