"""Power predicted from small pilots against the recall realized on real data (issue 7, validation).

    PYTHONPATH=. .venv/bin/python benchmarks/power_validation.py [--dataset yeast] [--pilots 10]
        [--draws 16] [--fixed-draws 8] [--subsamples 20] [--methods shrunk,posterior,fixed]

Truth: the genes called DE (padj < 0.05, `pg.power.de_test`, `~ <factor>`) on every clean sample of the
data set, with their all-sample log2 fold changes. Realized: the recall of that truth set (all of it,
and its genes with |log2FC| > 1) by the same test on random n-vs-n subsamples of the real samples, at
FDR 0.05, averaged over `--subsamples` subsamples per n. Predicted: from each of `--pilots` random
pilots (`--pilot-n` per group, seeded), power at each n from simulated experiments, each method
scoring each simulated experiment against a truth set called the way the real one was: on a
reference experiment of `--reference-n` per group simulated from the same draw (`power_grid`'s
`reference_n`), with the reference's own estimated log2 fold changes for the |log2FC| > 1 subset.
With `--nested`, each simulated experiment is a subsample of its reference experiment, as each real
subsample is of the samples that called the truth (they share samples, and so noise, when n is a large
part of the data); without it, a fresh experiment (what a user planning a new study wants).

Methods (all with the pilot's library sizes): `shrunk` a probgex GLM (`~ <factor>`, NB) fitted on the
pilot, every simulated experiment from its own posterior draw of base rates, dispersions and log2 fold
changes, the latter shrunk by an empirical-Bayes normal-mixture prior across genes (ashr-style,
`probgex.power.effects`); `shrunk_nonull` the same without ashr's null-biased penalty; `posterior` the same without shrinkage; `fixed` the pilot's DESeq2-style point
estimates (means, dispersions, MLE log2 fold changes) taken as the truth, powsimR-style (`Truth.fixed`:
the interval is Monte Carlo error only); `oracle` (run once, not per pilot) the same plug-in from every
clean sample, i.e. the simulation model's error when its parameters are as good as the data allow.
A method with the suffix `+level` (e.g. `posterior+level`, `fixed+level`) is the same with the pilot's
replicate-level uncertainty added (`probgex.power.replicates`: every draw's dispersions moved together
by the jackknife uncertainty of the pilot's dispersion level; `curve(..., pilot=)` does this);
`+level_undamped` the same with the plain stratified jackknife (no correction for the damping).
Per n and method: the mean prediction over pilots, the mean interval, |mean prediction - realized|,
the mean per-pilot absolute error and the share of pilots whose interval covers the realized recall. Results: benchmarks/results/power_validation_<dataset>.json,
rewritten after every pilot; `power_validation.py --table <json>` prints the README's table from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine  # noqa: E402

import probgex as pg  # noqa: E402
from probgex.power.curve import _test_chunk, power_grid  # noqa: E402
from probgex.power.replicates import dispersion_level, with_level_uncertainty  # noqa: E402
from probgex.power.simulate import Truth, truth_from_fit  # noqa: E402
from probgex.rng import key_words  # noqa: E402


def _host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a key's bits (the helper `power.simulate` had before the named streams;
    kept here so the stored runs' level draws reproduce)."""
    return np.random.default_rng(key_words(key))

FDR, MIN_LFC, CHUNK = 0.05, 1.0, 8
LFC1 = "\\|log2FC\\| > 1"  # a table cell (pipes escaped)
DATASETS = {  # loader, factor, (level, reference), defaults: pilot n, grid, reference n
    "yeast": (lambda: _clean_yeast(), "strain", ("Snf2", "WT"), 3, (3, 6, 12, 20), 43),
    "bottomly": (lambda: load("bottomly"), "strain", ("DBA/2J", "C57BL/6J"), 3, (3, 5, 8), 10),
    "gtex_brain": (lambda: load("gtex_brain"), "class", ("FC", "ACC"), 3, (3, 6, 12), 20),
}


def _clean_yeast():
    a = pg.datasets.schurch_yeast()
    return a[~a.obs["flagged_bad_rep"].astype(bool)].copy()


def groups(adata, factor, level, ref):
    lab = adata.obs[factor].astype(str).to_numpy()
    return np.flatnonzero(lab == ref), np.flatnonzero(lab == level)


def realized(Y, ref_idx, lev_idx, truth, big, ns, n_sub, rng) -> dict:
    """Recall of the truth set (and of its |log2FC| > 1 part) on real n-vs-n subsamples."""
    out = {}
    for n in ns:
        exps = [np.concatenate([rng.choice(ref_idx, n, replace=False), rng.choice(lev_idx, n, replace=False)])
                for _ in range(n_sub)]
        rec, rec_big, n_called = [], [], []
        for start in range(0, n_sub, CHUNK):
            padj, _ = _test_chunk([Y[e] for e in exps[start:start + CHUNK]], n, CHUNK, "wald")
            call = np.nan_to_num(padj, nan=1.0) < FDR
            rec += call[:, truth].mean(1).tolist()
            rec_big += call[:, truth & big].mean(1).tolist()
            n_called += call.sum(1).tolist()
        out[n] = {"recall": float(np.mean(rec)), "recall_sd": float(np.std(rec)),
                  "recall_lfc1": float(np.mean(rec_big)), "recall_lfc1_sd": float(np.std(rec_big)),
                  "n_called": float(np.mean(n_called)), "per_subsample": rec, "per_subsample_lfc1": rec_big}
        print(f"realized n={n}: recall {out[n]['recall']:.3f} (|lfc|>1: {out[n]['recall_lfc1']:.3f})", flush=True)
    return out


def fixed_truth(pilot, factor, level, ref, n_draws) -> Truth:
    """The pilot's DESeq2-style estimates as the truth (`probgex.power.truth_from_pilot`)."""
    return pg.power.truth_from_pilot(pilot, (factor, level, ref), n_draws)


def predict(truth, ns, key, depth, depth_sd, reference_n, nested=False) -> dict:
    ds = power_grid(truth, ns, key=key, fdr=FDR, depth=depth, depth_sd=depth_sd, n_rep=1, level=0.9,
                    reference_n=reference_n, min_abs_lfc=(MIN_LFC,), chunk=CHUNK, progress=True, nested=nested)
    out = {}
    for n in ns:
        d = ds.sel(n=n)
        dl = d.sel(min_abs_lfc=MIN_LFC)
        out[n] = {k: float(d[f"power_{k}"]) for k in ("mean", "lower", "upper")} | {
            f"lfc1_{k}": float(dl[f"power_lfc_{k}"]) for k in ("mean", "lower", "upper")} | {
            "fdp": float(d["fdp_mean"])}
    out["n_de_reference"] = float(ds["n_de_reference"].mean())
    return out


def summarize(pilots, real, ns, methods) -> list[dict]:
    rows = []
    for m in methods:
        for n in ns:
            for tag, pre, rk in (("all", "", "recall"), ("lfc1", "lfc1_", "recall_lfc1")):
                ps = [p[m][str(n)] for p in pilots if m in p]
                if not ps:
                    continue
                r = real[str(n)][rk]
                mean = np.array([p[f"{pre}mean"] for p in ps])
                lo, hi = np.array([p[f"{pre}lower"] for p in ps]), np.array([p[f"{pre}upper"] for p in ps])
                rows.append({"method": m, "n": n, "truth": tag, "pilots": len(ps), "predicted": float(mean.mean()),
                             "predicted_sd_over_pilots": float(mean.std()), "lower": float(lo.mean()),
                             "upper": float(hi.mean()), "realized": r, "abs_error": float(abs(mean.mean() - r)),
                             "mean_abs_error_per_pilot": float(np.abs(mean - r).mean()),
                             "coverage": float(((lo <= r) & (r <= hi)).mean())})
    return rows


def table(path: Path) -> str:
    """The README's markdown table from a results JSON (no recomputation)."""
    d = json.loads(path.read_text())
    real = d["realized"]
    lines = ["| method | n | truth set | pilots | predicted (mean over pilots) | sd over pilots | mean 90% interval | "
             "realized | abs. error | mean abs. error per pilot | coverage |", "|" + "---|" * 11]
    for r in d["rows"]:
        lines.append(f"| {r['method']} | {r['n']} | {'all' if r['truth'] == 'all' else LFC1} | {r['pilots']} | "
                     f"{r['predicted']:.3f} | {r['predicted_sd_over_pilots']:.3f} | [{r['lower']:.3f}, {r['upper']:.3f}] | "
                     f"{r['realized']:.3f} | {r['abs_error']:.3f} | {r['mean_abs_error_per_pilot']:.3f} | "
                     f"{r['coverage']:.2f} |")
    if d.get("oracle"):
        for n in d["ns"]:
            o = d["oracle"][str(n)]
            for tag, pre, rk in (("all", "", "recall"), (LFC1, "lfc1_", "recall_lfc1")):
                rv = real[str(n)][rk]
                lines.append(f"| oracle | {n} | {tag} | - | {o[pre + 'mean']:.3f} | - | [{o[pre + 'lower']:.3f}, "
                             f"{o[pre + 'upper']:.3f}] | {rv:.3f} | {abs(o[pre + 'mean'] - rv):.3f} | - | - |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="yeast", choices=list(DATASETS))
    ap.add_argument("--pilots", type=int, default=10)
    ap.add_argument("--pilot-n", type=int, default=None)
    ap.add_argument("--ns", default=None)
    ap.add_argument("--reference-n", type=int, default=None)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--fixed-draws", type=int, default=8)
    ap.add_argument("--subsamples", type=int, default=20)
    ap.add_argument("--max-epochs", type=int, default=1500)
    ap.add_argument("--methods", default="shrunk,posterior,fixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nested", action="store_true",
                    help="simulated experiments are subsamples of the reference experiment, as the real ones are")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    loader, factor, (level_name, ref), pilot_n, ns, ref_n = DATASETS[args.dataset]
    pilot_n = args.pilot_n or pilot_n
    ns = [int(t) for t in args.ns.split(",")] if args.ns else list(ns)
    ref_n = args.reference_n or ref_n
    methods = args.methods.split(",")
    out_path = Path(args.out) if args.out else RESULTS / f"power_validation_{args.dataset}.json"

    adata = loader()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    t0 = time.time()
    res = pg.power.de_test(adata, f"~ {factor}", (factor, level_name, ref))
    truth = (res["padj"] < FDR).to_numpy()
    big = (res["log2FoldChange"].abs() > MIN_LFC).to_numpy()
    ref_idx, lev_idx = groups(adata, factor, level_name, ref)
    print(f"{args.dataset}: {adata.n_obs} samples ({len(ref_idx)} {ref}, {len(lev_idx)} {level_name}), {adata.n_vars} genes; "
          f"truth {truth.sum()} DE, {(truth & big).sum()} with |log2FC| > {MIN_LFC}", flush=True)
    Y = np.asarray(adata.X, np.float32)
    real = realized(Y, ref_idx, lev_idx, truth, big, ns, args.subsamples, np.random.default_rng(args.seed))
    real = {str(n): v for n, v in real.items()}
    rng = np.random.default_rng(args.seed + 1)
    pilots, oracle = [], None

    def save(rows):
        out_path.write_text(json.dumps({
            "dataset": args.dataset, "command": " ".join(sys.argv), "args": vars(args), "fdr": FDR,
            "min_abs_lfc": MIN_LFC, "reference_n": ref_n, "pilot_n": pilot_n, "ns": ns,
            "truth": {"n_de": int(truth.sum()), "n_de_lfc1": int((truth & big).sum()), "genes": int(adata.n_vars),
                      "n_ref": int(len(ref_idx)), "n_level": int(len(lev_idx))},
            "realized": real, "oracle": oracle, "pilots": pilots, "rows": rows, "seconds": time.time() - t0,
            "machine": machine()}, indent=1, default=float))

    if "oracle" in methods:
        log_lib = np.log(np.asarray(adata.X.sum(1), np.float64).ravel())
        oracle = predict(fixed_truth(adata, factor, level_name, ref, args.fixed_draws), ns, jax.random.PRNGKey(999),
                         float(np.exp(log_lib.mean())), float(log_lib.std()), ref_n, args.nested)
        oracle = {str(k): v for k, v in oracle.items()}
        print("oracle: " + " ".join(f"{oracle[str(n)]['mean']:.3f} ({oracle[str(n)]['lfc1_mean']:.3f})" for n in ns))
        save([])
        methods = [m for m in methods if m != "oracle"]
    for p in range(args.pilots):
        idx = np.concatenate([rng.choice(ref_idx, pilot_n, replace=False), rng.choice(lev_idx, pilot_n, replace=False)])
        pilot = adata[idx].copy()
        pilot = pilot[:, np.asarray(pilot.X.sum(0)).ravel() > 0].copy()
        log_lib = np.log(np.asarray(pilot.X.sum(1), np.float64).ravel())
        depth, depth_sd = float(np.exp(log_lib.mean())), float(log_lib.std())
        rec = {"pilot": p, "samples": adata.obs_names[idx].tolist(), "genes": int(pilot.n_vars)}
        key = jax.random.PRNGKey(1000 + p)
        k_fit, k_sim = jax.random.split(key)
        tp = time.time()
        level = None
        if any("+level" in m for m in methods):
            level = dispersion_level(pilot, f"~ {factor}", (factor, level_name, ref))
            rec["dispersion_level"] = {"log_level": level.log_level, "se": level.se, "df": level.df,
                                       "se_undamped": level.se_undamped}
        base = {m.split("+")[0] for m in methods}
        truths = {}
        if {"shrunk", "posterior", "shrunk_nonull"} & base:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = pg.Model(f"~ {factor}", likelihood="nb").fit(pilot, seed=p, holdout=0.0,
                                                                   max_epochs=args.max_epochs)
            for m in ("shrunk", "posterior", "shrunk_nonull"):
                if m in base:
                    truths[m] = truth_from_fit(fit, (factor, level_name, ref), args.draws, k_fit,
                                               effects="shrunk" if m == "shrunk_nonull" else m,
                                               null_weight=1.0 if m == "shrunk_nonull" else 10.0)
        if "fixed" in base:
            truths["fixed"] = fixed_truth(pilot, factor, level_name, ref, args.fixed_draws)
        for m in methods:
            tr = truths[m.split("+")[0]]
            if m.endswith("+level"):
                tr = with_level_uncertainty(tr, level, _host_rng(jax.random.fold_in(key, 7)))
            elif m.endswith("+level_undamped"):
                tr = with_level_uncertainty(tr, replace(level, se=level.se_undamped),
                                            _host_rng(jax.random.fold_in(key, 7)))
            rec[m] = predict(tr, ns, k_sim, depth, depth_sd, ref_n, args.nested)
        rec["seconds"] = time.time() - tp
        pilots.append(rec)
        line = "  ".join(f"{m}: " + " ".join(f"{rec[m][n]['mean']:.2f}" for n in ns) for m in methods if m in rec)
        print(f"pilot {p} ({rec['seconds']:.0f} s)  {line}   realized: "
              + " ".join(f"{real[str(n)]['recall']:.2f}" for n in ns), flush=True)
        rows = summarize([{m: {str(k): v for k, v in r[m].items()} for m in methods if m in r} for r in pilots],
                         real, ns, methods)
        save(rows)
    for r in rows if args.pilots else []:
        print(f"{r['method']:9s} n={r['n']:2d} {r['truth']:4s} predicted {r['predicted']:.3f} "
              f"[{r['lower']:.3f}, {r['upper']:.3f}] realized {r['realized']:.3f} error {r['abs_error']:.3f} "
              f"coverage {r['coverage']:.2f}")


if __name__ == "__main__":
    main()
