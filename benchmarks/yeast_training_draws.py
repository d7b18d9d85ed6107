"""Held-out coverage of small yeast designs, over training draws (issue 13, the small-split guard).

One random training design of `--wt` WT and `--snf` Snf2 clean replicates (the embedded Schurch set,
flagged bad replicates removed), `~ strain`, the default GLM-NB; it predicts EVERY other clean replicate
(82-83 samples) from its strain, so the held-out samples' own spread averages out and what is left is the
training draw's. 600 random genes expressed in all training samples (training mean >= 5), randomized PIT,
200 draws; repeated over `--draws` training draws (generator seeds 100 + i). Prints one line per draw and
the pooled coverage; `--out` writes them as JSON. Run it from a checkout of the code to measure (PYTHONPATH).

  PYTHONPATH=. .venv/bin/python benchmarks/yeast_training_draws.py --wt 2 --snf 2 --out R.json
  PYTHONPATH=. .venv/bin/python benchmarks/yeast_training_draws.py --wt 2 --snf 2 --sample-quality on
  PYTHONPATH=. .venv/bin/python benchmarks/yeast_training_draws.py --wt 2 --snf 1
  PYTHONPATH=. .venv/bin/python benchmarks/yeast_training_draws.py --names WT_rep01_MID75 ...  (one fixed design)
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import probgex as pg

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_design(a, train_names: list[str], gene_seed: int, **model) -> dict:
    test_names = [n for n in a.obs_names if n not in train_names]
    xt = np.asarray(a[train_names].X)
    genes = np.flatnonzero((xt > 0).all(0) & (xt.mean(0) >= 5))
    genes = np.sort(np.random.default_rng(gene_seed).choice(genes, 600, replace=False))
    b = a[train_names + test_names][:, genes].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pg.Model("~ strain", likelihood="nb", **model).fit(b[train_names].copy(), seed=0, progress=False)
    ev = fit.evaluate(b[test_names].copy(), n_samples=200, levels=(0.5, 0.9), seed=0)
    pit = ev["pit"].values
    # the per-entry log predictive density (each gene's exact mixture over the 200 draws, as calibration_everywhere.py),
    # beside `lpd_per_entry`: that one is the sample's joint log density over its genes from the same draws (log mean
    # over draws of a product over 600 genes: a 200-draw estimate near E_posterior[log p], which charges posterior spread)
    from calibration_everywhere import probgex_entries
    lpd_entry = float(probgex_entries(fit, b[test_names].copy(), np.random.default_rng(0))[1].mean())
    per_sample50 = np.mean(np.abs(pit - 0.5) <= 0.25, axis=1)
    return {"train": list(train_names), "n_test": len(test_names), "coverage50": float(ev["coverage"].values[0]),
            "coverage90": float(ev["coverage"].values[1]),
            "lpd_per_entry": float(ev.attrs["mean_log_predictive_density"]) / len(genes), "lpd_entry": lpd_entry,
            "per_sample50_q10_50_90": np.quantile(per_sample50, [0.1, 0.5, 0.9]).round(3).tolist()}


def clean_yeast(dense: bool = False):
    """The embedded Schurch yeast set without its flagged bad replicates (a copy; `dense`: X as an ndarray)."""
    a = pg.datasets.schurch_yeast()
    a = a[~a.obs["flagged_bad_rep"].astype(bool)].copy()
    if dense:
        a.X = np.asarray(a.X)
    return a


def random_designs(a, n_wt: int, n_snf: int, draws: int) -> list[list[str]]:
    """`draws` random training designs of n_wt WT and n_snf Snf2 replicates of `a` (generator seeds 100 + i)."""
    wt = list(a.obs_names[a.obs["strain"] == "WT"])
    snf = list(a.obs_names[a.obs["strain"] == "Snf2"])
    designs = []
    for draw in range(draws):
        rng = np.random.default_rng(100 + draw)
        designs.append([str(n) for n in rng.choice(wt, n_wt, replace=False)]
                       + [str(n) for n in rng.choice(snf, n_snf, replace=False)])
    return designs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wt", type=int, default=2)
    p.add_argument("--snf", type=int, default=2)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--skip", type=int, default=0, help="leave out the first SKIP draws (resume a run)")
    p.add_argument("--names", nargs="+", help="one fixed training design instead of random draws")
    p.add_argument("--sample-quality", default="off")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    a = clean_yeast()
    designs = [args.names] if args.names else random_designs(a, args.wt, args.snf, args.draws)
    rows = []
    for i, names in enumerate(designs):
        if i < args.skip:
            continue
        rows.append(one_design(a, names, gene_seed=i, sample_quality=args.sample_quality))
        r = rows[-1]
        print(i, r["train"], round(r["coverage50"], 3), round(r["coverage90"], 3), round(r["lpd_per_entry"], 4),
              round(r["lpd_entry"], 4), flush=True)
    c = np.array([[r["coverage50"], r["coverage90"]] for r in rows])
    summary = {"pooled50": float(c[:, 0].mean()), "pooled90": float(c[:, 1].mean()),
               "range50": [float(c[:, 0].min()), float(c[:, 0].max())]}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(args).items()}, "rows": rows, **summary}, indent=1))


if __name__ == "__main__":
    main()
