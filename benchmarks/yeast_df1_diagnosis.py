"""Why 1 residual df over-covers at 50% on yeast (issue 13): the designs of yeast_training_draws.py, decomposed.

For each training design (seed 100 + i, `--wt` WT + `--snf` Snf2 clean replicates, `~ strain`, the default GLM-NB,
the same 600 genes and the same 82-83 held-out replicates as yeast_training_draws.py) it scores randomized-PIT
coverage at 50 / 90% of:
  full        the probgex predictive (200 posterior draws of coefficients and dispersion, integrated);
  beta_fixed  coefficients at their posterior mean (log mu averaged over the draws), dispersion integrated;
  disp_fixed  coefficients integrated, log dispersion at its posterior mean;
  both_fixed  both at their posterior means (a plug-in built from probgex's posterior);
  ref_disp    coefficients integrated, dispersion replaced by the reference one (below);
  plugin      the DESeq2 plug-in NB (pydeseq2, benchmarks/_bulk_protocol.deseq_plugin) on the same design;
each pooled, by the held-out sample's strain and by decile of the gene's training mean. The reference dispersion
is pydeseq2's gene-wise estimate from ALL clean replicates (`~ strain`, ~84 residual df) on the same genes: not
the truth, but 40x the data. Also the ratio of each fit's dispersion (probgex E[alpha], its posterior mean of log
alpha, the plug-in's MAP) to the reference, per decile.

  PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/yeast_df1_diagnosis.py --wt 2 --snf 1 --draws 4 --out R.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import probgex as pg
from probgex.inference.predict import predictive_blocks
from probgex.inference.predictive import Draws

sys.path.insert(0, str(Path(__file__).parent))
import _bulk_protocol as bp  # noqa: E402
from yeast_training_draws import clean_yeast, random_designs  # noqa: E402

LEVELS = (0.5, 0.9)


def cov(pit):
    return [float(np.mean(np.abs(pit - 0.5) <= lv / 2)) for lv in LEVELS]


def reference_dispersion(a, genes) -> np.ndarray:
    from pydeseq2.dds import DeseqDataSet
    b = a[:, genes]
    counts = pd.DataFrame(np.asarray(b.X).astype(np.int64), index=b.obs_names, columns=b.var_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=b.obs[["strain"]].copy(), design="~ strain", refit_cooks=False,
                           quiet=True, n_cpus=1)
        dds.deseq2()
    return np.asarray(dds.var["genewise_dispersions"], float)


def plugin(train, test, rng):
    """deseq_plugin's PIT and the MAP dispersions it used (captured from its nb_pit_logp call)."""
    seen = {}
    orig = bp.nb_pit_logp

    def capture(y, mu, theta, r):
        seen["alpha"] = 1.0 / np.asarray(theta)[0]
        return orig(y, mu, theta, r)
    bp.nb_pit_logp = capture
    try:
        pit, _, _ = bp.deseq_plugin(train, test, "~ strain", rng)
    finally:
        bp.nb_pit_logp = orig
    return pit, seen["alpha"]


def one_design(a, train_names, gene_seed, ref_all):
    test_names = [n for n in a.obs_names if n not in train_names]
    xt = np.asarray(a[train_names].X)
    genes = np.flatnonzero((xt > 0).all(0) & (xt.mean(0) >= 5))
    genes = np.sort(np.random.default_rng(gene_seed).choice(genes, 600, replace=False))
    b = a[train_names + test_names][:, genes].copy()
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pg.Model("~ strain", likelihood="nb").fit(b[train_names].copy(), seed=0, progress=False)
        test = b[test_names].copy()
        data = fit.data(test)
    mus, thetas = [], []
    for rows, d in predictive_blocks(fit, data, 200, jax.random.PRNGKey(0)):
        mus.append(d.params["mu"])
        thetas.append(d.params["theta"])
    mu = np.concatenate(mus, 1).astype(np.float64)  # (S, n, G)
    theta = np.concatenate(thetas, 1).astype(np.float64)
    y = np.asarray(test.X, np.float64)
    S = mu.shape[0]
    mu_bar = np.broadcast_to(np.exp(np.log(mu).mean(0, keepdims=True)), mu.shape)
    th_bar = np.broadcast_to(np.exp(np.log(theta).mean(0, keepdims=True)), theta.shape)
    ref = ref_all[genes]
    th_ref = np.broadcast_to(1.0 / ref[None, None, :], theta.shape)
    variants = {"full": (mu, theta), "beta_fixed": (mu_bar, theta), "disp_fixed": (mu, th_bar),
                "both_fixed": (mu_bar, th_bar), "ref_disp": (mu, th_ref)}
    pits = {}
    for k, (m, th) in variants.items():
        rng = np.random.default_rng(0)
        pits[k] = Draws.of("nb", {"mu": np.ascontiguousarray(m), "theta": np.ascontiguousarray(th)}).randomized_pit(y, rng)
    pits["plugin"], plugin_alpha = plugin(b[train_names].copy(), test, np.random.default_rng(0))
    strain = np.asarray(test.obs["strain"].astype(str))
    dec = bp_deciles(xt[:, genes].mean(0))
    alpha_draws = 1.0 / theta[:, 0, :]
    post_mean_alpha = alpha_draws.mean(0)
    post_logalpha_sd = np.log(alpha_draws).std(0)
    log_mu = np.log(mu)
    eta_sd = {s: float(np.median(log_mu[:, strain == s, :].std(0).mean(0))) for s in ("WT", "Snf2")}
    out = {"train": list(train_names), "n_test": len(test_names), "S": S, "cpu_s": round(time.process_time() - t0, 1),
           "coverage": {k: cov(p) for k, p in pits.items()},
           "by_strain": {k: {s: cov(p[strain == s]) for s in ("WT", "Snf2")} for k, p in pits.items()},
           "by_decile50": {k: [cov(p[:, dec == j])[0] for j in range(10)] for k, p in pits.items()},
           "by_decile90": {k: [cov(p[:, dec == j])[1] for j in range(10)] for k, p in pits.items()},
           "median_posterior_sd_log_mu": eta_sd,
           "median_posterior_sd_log_alpha": float(np.median(post_logalpha_sd)),
           "median_ratio_to_ref": {"probgex_E_alpha": float(np.median(post_mean_alpha / ref)),
                                   "probgex_exp_E_log_alpha": float(np.median(np.exp(np.log(alpha_draws).mean(0)) / ref)),
                                   "plugin_MAP": float(np.median(plugin_alpha / ref))},
           "median_ratio_to_ref_by_decile": {
               "probgex_E_alpha": [float(np.median((post_mean_alpha / ref)[dec == j])) for j in range(10)],
               "plugin_MAP": [float(np.median((plugin_alpha / ref)[dec == j])) for j in range(10)]},
           "median_ref_alpha": float(np.median(ref))}
    return out


def bp_deciles(v):
    ranks = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return (ranks * 10 // len(v)).astype(int)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wt", type=int, default=2)
    p.add_argument("--snf", type=int, default=1)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    a = clean_yeast(dense=True)
    ref_all = np.full(a.n_vars, np.nan)
    ok = np.flatnonzero(np.asarray(a.X).sum(0) > 0)
    ref_all[ok] = reference_dispersion(a, ok)
    rows = []
    for draw, names in enumerate(random_designs(a, args.wt, args.snf, args.draws)):
        r = one_design(a, names, draw, ref_all)
        rows.append(r)
        print(draw, names, json.dumps({k: [round(x, 3) for x in v] for k, v in r["coverage"].items()}),
              r["median_ratio_to_ref"], flush=True)
    keys = rows[0]["coverage"]
    pooled = {k: np.mean([r["coverage"][k] for r in rows], 0).round(4).tolist() for k in keys}
    by_strain = {k: {s: np.mean([r["by_strain"][k][s] for r in rows], 0).round(4).tolist() for s in ("WT", "Snf2")}
                 for k in keys}
    by_dec50 = {k: np.mean([r["by_decile50"][k] for r in rows], 0).round(3).tolist() for k in keys}
    ratio = {k: float(np.median([r["median_ratio_to_ref"][k] for r in rows])) for k in rows[0]["median_ratio_to_ref"]}
    summary = {"pooled": pooled, "by_strain": by_strain, "by_decile50": by_dec50, "median_dispersion_ratio": ratio}
    print(json.dumps(summary))
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        old[f"{args.wt}wt_{args.snf}snf"] = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, **summary}
        args.out.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
