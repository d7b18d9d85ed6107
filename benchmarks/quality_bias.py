"""Issue 13 item 2: is the fitted location m of the sample-quality prior biased by the estimator itself?

Counts are simulated from a correctly specified NB GLM in which every sample has the SAME quality (w_n = 0
exactly): two groups, gene log means drawn from the embedded yeast set's (clean replicates, expressed
genes), log fold changes N(0, 0.5^2) on 30% of genes, dispersions alpha_g = (a0 + a1 / m_g) exp(e_g),
e_g ~ N(0, S_TRUE^2) (a0, a1 the trend placed on all clean yeast replicates), library sizes exp(N(0, 0.25^2)).
Designs: 2 groups x {2, 4, 6} training samples (2, 6, 10 residual df), NEW_PER_GROUP new samples per group
from the same truth. Each design and seed is fitted with `pg.Model("~ group", likelihood="nb",
sample_quality=q)`, q in off / on; recorded: m, s, the training w_n (guide means), and the new samples'
pooled coverage at 50 / 90% (randomized PIT) and log predictive density per entry (genes with new-sample
mean >= 5).

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/quality_bias.py                  # the simulation
  PYTHONPATH=. .venv/bin/python benchmarks/quality_bias.py --tag after      # stored under another key
  PYTHONPATH=. .venv/bin/python benchmarks/quality_bias.py --yeast          # question 2 (yeast replicates)
  PYTHONPATH=. .venv/bin/python benchmarks/quality_bias.py --n-per-group 4 --batch-sd 0.4 --tag batch04   # misspecified
  PYTHONPATH=. .venv/bin/python benchmarks/quality_bias.py --n-per-group 4 --w-sd 0.5 --tag wsd05   # unequal quality
  PYTHONPATH=. .venv/bin/python benchmarks/quality_bias.py --heldout-w --tag real   # real rows: held-out samples' w
Results: benchmarks/results/quality_bias.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402
from calibration_everywhere import probgex_entries  # noqa: E402

N_GENES = 1000
S_TRUE = 0.5
NEW_PER_GROUP = 10
MIN_MEAN = 5.0
PATH = RESULTS / "quality_bias.json"


def yeast_clean():
    import probgex as pg
    a = pg.datasets.schurch_yeast()
    a = a[~a.obs["flagged_bad_rep"].astype(bool)].copy()
    a.X = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X, np.float64)
    return a


def yeast_truth() -> dict:
    """The truth's ingredients from the yeast set: expressed genes' log mean normalised counts and the trend
    placed on all clean replicates (`~ strain`)."""
    import formulaic
    from probgex.models.trend import place_trend
    a = yeast_clean()
    y = a.X
    keep = (y > 0).all(0) & (y.mean(0) >= 5)
    y = y[:, keep]
    logy = np.log(y)
    sf = np.exp(np.median(logy - logy.mean(0), axis=1))
    m = (y / sf[:, None]).mean(0)
    X = np.asarray(formulaic.model_matrix("~ strain", a.obs), np.float64)
    a0, a1, s = place_trend(y, X, sf, np.log(m))
    return {"log_mean": np.log(m), "a0": a0, "a1": a1, "s_placed": s}


class Truth:
    def __init__(self, base: dict, rng: np.random.Generator, G: int = N_GENES, batch_sd: float = 0.0,
                 disp_scale: float = 1.0):
        self.log_mean = rng.choice(base["log_mean"], G, replace=False)
        self.lfc = rng.normal(0.0, 0.5, G) * (rng.random(G) < 0.3)
        alpha = (base["a0"] + base["a1"] / np.exp(self.log_mean)) * np.exp(rng.normal(0.0, S_TRUE, G))
        self.theta = 1.0 / (disp_scale * alpha)  # disp_scale: every dispersion times it (1: yeast's trend)
        # an unmodelled batch (misspecification): batch-2 samples' log means shifted by N(0, batch_sd^2) per gene
        self.batch = rng.normal(0.0, batch_sd, G) if batch_sd > 0 else np.zeros(G)

    def samples(self, rng, n_per_group: int, prefix: str, w_sd: float = 0.0, n_batch2: int = 0):
        """Counts of n_per_group samples per group; with `w_sd` > 0 each sample's dispersion is times
        exp(w_n), w_n ~ N(0, w_sd^2) (unequal quality, the model's own story), else all w_n = 0; the last
        `n_batch2` samples of each group are from batch 2 (log means + self.batch, not in the formula)."""
        import anndata as ad
        import pandas as pd
        sizes = (n_per_group, n_per_group) if np.isscalar(n_per_group) else tuple(n_per_group)
        grp = np.repeat(["A", "B"], sizes)
        lm = self.log_mean[None] + (grp == "B")[:, None] * self.lfc[None]
        last = np.concatenate([np.arange(k) >= k - n_batch2 for k in sizes])
        lm = lm + last[:, None] * self.batch[None]
        mu = np.exp(rng.normal(0.0, 0.25, len(grp)))[:, None] * np.exp(lm)
        w = rng.normal(0.0, w_sd, len(grp)) if w_sd > 0 else np.zeros(len(grp))
        theta = self.theta[None] * np.exp(-w)[:, None]
        x = rng.poisson(rng.gamma(theta, mu / theta))
        return ad.AnnData(x.astype(np.float32), obs=pd.DataFrame({"group": grp, "true_w": w},
                          index=[f"{prefix}{i}" for i in range(len(grp))]),
                          var=pd.DataFrame(index=[f"g{j}" for j in range(len(self.theta))]))


def score(fit, test, seed: int) -> dict:
    pit, lp = probgex_entries(fit, test, np.random.default_rng(seed))
    sel = np.asarray(test.X, float).mean(0) >= MIN_MEAN
    p = pit[:, sel]
    return {"cov50": float(np.mean(np.abs(p - 0.5) <= 0.25)), "cov90": float(np.mean(np.abs(p - 0.5) <= 0.45)),
            "lpd": float(lp[:, sel].mean()), "lpd_per_sample": lp[:, sel].mean(1).round(4).tolist()}


def fit_record(train, test, formula: str, q: str, seed: int) -> dict:
    import probgex as pg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.process_time()
        fit = pg.Model(formula, likelihood="nb", sample_quality=q).fit(train, seed=seed, progress=False)
        r = {"cpu_s": round(time.process_time() - t, 1)} | score(fit, test, seed)
    p = fit.params
    if q == "on":
        r |= {"m": float(np.asarray(p["quality_mean"])), "s": float(np.asarray(p["quality_sd"])),
              "w": np.asarray(p["quality_loc"]).round(3).tolist(),
              "w_sd": np.asarray(p["quality_scale"]).round(3).tolist()}
    r["trend"] = [float(np.asarray(p[k])) for k in ("disp_asymptote", "disp_extra_poisson", "disp_trend_sd")]
    return r


def simulate(args) -> dict:
    base = yeast_truth()
    out = {"truth": {"a0": base["a0"], "a1": base["a1"], "s_true": S_TRUE, "genes": N_GENES,
                     "new_per_group": NEW_PER_GROUP}, "runs": []}
    designs = [tuple(args.sizes)] if args.sizes else args.n_per_group
    for n in designs:
        for seed in range(args.seeds):
            rng = np.random.default_rng(100 * (n if np.isscalar(n) else sum(n)) + seed)
            truth = Truth(base, rng, batch_sd=args.batch_sd, disp_scale=args.disp_scale)
            nb = 1 if args.batch_sd > 0 else 0  # one training sample per group from batch 2, half of the new ones
            train = truth.samples(rng, n, "tr", args.w_sd, nb)
            test = truth.samples(rng, NEW_PER_GROUP, "te", args.w_sd, NEW_PER_GROUP // 2 if nb else 0)
            rec = {"n_per_group": n, "df": (2 * n if np.isscalar(n) else sum(n)) - 2, "seed": seed, "w_sd": args.w_sd, "batch_sd": args.batch_sd,
                   "disp_scale": args.disp_scale,
                   "true_w_train": train.obs["true_w"].round(3).tolist(), "true_w_new": test.obs["true_w"].round(3).tolist()}
            for q in args.quality:
                rec[q] = fit_record(train, test, "~ group", q, seed)
            on, off = rec.get("on"), rec.get("off")
            print(f"n {n} seed {seed}: " + (f"off cov {off['cov50']:.3f}/{off['cov90']:.3f} lpd {off['lpd']:.4f}  " if off else "")
                  + (f"on cov {on['cov50']:.3f}/{on['cov90']:.3f} lpd {on['lpd']:.4f} m {on['m']:+.3f} s {on['s']:.3f} "
                     f"w {np.round(on['w'], 2).tolist()}" if on else ""), flush=True)
            out["runs"].append(rec)
    return out


def yeast_question(args) -> dict:
    """Question 2: the fitted w of all clean replicates (`~ strain`, sample_quality on), and the default
    model's coverage over random 2+2 / 2+2 splits beside the test's split (replicates 1-2 -> 10-12)."""
    import probgex as pg
    a = yeast_clean()
    wt = list(a.obs_names[a.obs["strain"] == "WT"])
    snf = list(a.obs_names[a.obs["strain"] == "Snf2"])
    x = a.X
    genes = np.flatnonzero((x > 0).all(0) & (x.mean(0) >= 5))
    genes = np.sort(np.random.default_rng(0).choice(genes, 600, replace=False))
    b = a[:, genes].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pg.Model("~ strain", likelihood="nb", sample_quality="on").fit(b, seed=0, progress=False)
    w = dict(zip(b.obs_names, np.asarray(fit.params["quality_loc"]).round(3).tolist()))
    res = {"all_fit": {"m": float(np.asarray(fit.params["quality_mean"])), "s": float(np.asarray(fit.params["quality_sd"])),
                       "w": w}, "test_train": wt[:2] + snf[:2], "test_heldout": wt[10:12] + snf[10:12], "splits": []}
    print(f"all clean replicates: m {res['all_fit']['m']:+.3f} s {res['all_fit']['s']:.3f}", flush=True)
    for nm in res["test_train"] + res["test_heldout"]:
        print(f"  {nm}: w {w[nm]:+.3f}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    splits = [("test", wt[:2] + snf[:2], wt[10:12] + snf[10:12])]
    for d in range(args.yeast_splits):
        rng = np.random.default_rng(d)
        ww, ss = list(rng.choice(wt, 4, replace=False)), list(rng.choice(snf, 4, replace=False))
        splits.append((f"random{d}", ww[:2] + ss[:2], ww[2:] + ss[2:]))
    for name, tr, te in splits:
        sub = a[tr + te]
        xs = np.asarray(sub.X)
        g = np.flatnonzero((xs > 0).all(0) & (xs.mean(0) >= 5))
        g = np.sort(np.random.default_rng(0).choice(g, 600, replace=False))
        sub = sub[:, g]
        rec = {"split": name, "train": tr, "test": te}
        for q in args.quality:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = pg.Model("~ strain", likelihood="nb", sample_quality=q).fit(sub[tr].copy(), seed=0, progress=False)
                ev = f.evaluate(sub[te].copy(), n_samples=200, levels=(0.5, 0.9), seed=0)
            cov = ev["coverage"].values
            rec[q] = {"cov50": float(cov[0]), "cov90": float(cov[1]),
                      "lpd": float(ev.attrs["mean_log_predictive_density"])}
        rec["mean_w_train"] = float(np.mean([w[n] for n in tr]))
        rec["mean_w_test"] = float(np.mean([w[n] for n in te]))
        print(f"{name}: " + "  ".join(f"{q} cov {rec[q]['cov50']:.3f}/{rec[q]['cov90']:.3f} lpd {rec[q]['lpd']:.3f}"
                                     for q in args.quality)
              + f"  w train {rec['mean_w_train']:+.2f} test {rec['mean_w_test']:+.2f}", flush=True)
        res["splits"].append(rec)
    return res


def heldout_w(args) -> dict:
    """The real harm / gain rows: per split of `quality_auto.py` (same samples and genes), "on" fitted on the
    training AND held-out samples together; the held-out samples' fitted w against the training samples'
    (is a held-out sample noisier, by the model's own measure, than the typical training sample?)."""
    import anndata as ad
    import probgex as pg
    from _common import load
    from calibration_everywhere import BULK
    from quality_auto import split_data
    auto = json.loads((RESULTS / "quality_auto.json").read_text())["rows"]
    out = {}
    for spec in args.rows:
        name, df = spec.split(":")
        a = load(name)
        a.X = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X)
        formula = BULK[name][0]
        recs = []
        for draw in range(args.draws):
            tr, te, train, test, _ = split_data(a, formula, int(df), draw)
            both = ad.concat([train, test])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = pg.Model(formula, likelihood="nb", sample_quality="on").fit(both, seed=draw, progress=False)
            w = np.asarray(fit.params["quality_loc"], float)
            k = len(tr)
            prev = next((r for r in auto.get(f"{name}_df{df}", []) if r["draw"] == draw), None)
            rec = {"draw": draw, "m": float(np.asarray(fit.params["quality_mean"])),
                   "s": float(np.asarray(fit.params["quality_sd"])), "w_train": w[:k].round(3).tolist(),
                   "w_test": w[k:].round(3).tolist(),
                   "on_minus_off": None if prev is None else prev["on"]["lpd"] - prev["off"]["lpd"],
                   "m_train_only": None if prev is None else prev["on"]["m"]}
            print(f"{spec} draw {draw}: m {rec['m']:+.2f} s {rec['s']:.2f} median w train {np.median(w[:k]):+.2f} "
                  f"test {np.round(w[k:], 2).tolist()}  on-off {rec['on_minus_off']}", flush=True)
            recs.append(rec)
        out[f"{name}_df{df}"] = recs
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-per-group", nargs="*", type=int, default=[2, 4, 6])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sizes", nargs=2, type=int, default=None, help="an unbalanced training design: samples of A, B")
    ap.add_argument("--quality", nargs="*", default=["off", "on"])
    ap.add_argument("--tag", default="before")
    ap.add_argument("--batch-sd", type=float, default=0.0,
                    help="an unmodelled batch: 1 training sample per group and half the new ones shifted by N(0, sd^2) per gene")
    ap.add_argument("--disp-scale", type=float, default=1.0, help="the truth's dispersions times this")
    ap.add_argument("--w-sd", type=float, default=0.0, help="true spread of the samples' log multipliers (0: equal)")
    ap.add_argument("--yeast", action="store_true", help="question 2 instead of the simulation")
    ap.add_argument("--yeast-splits", type=int, default=10)
    ap.add_argument("--heldout-w", action="store_true", help="the real rows: held-out samples' w fitted with the training ones")
    ap.add_argument("--rows", nargs="*", default=["bottomly:6", "gse60450:6", "schurch_yeast:6", "schurch_yeast:1"])
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    stored = json.loads(PATH.read_text()) if PATH.exists() else {}
    key = ("yeast_" if args.yeast else "heldout_w_" if args.heldout_w else "sim_") + args.tag
    run = yeast_question if args.yeast else heldout_w if args.heldout_w else simulate
    stored[key] = run(args) | {"machine": machine(), "args": vars(args)}
    stored = json.loads(PATH.read_text()) | {key: stored[key]} if PATH.exists() else stored
    PATH.write_text(json.dumps(stored, indent=1))


if __name__ == "__main__":
    main()
