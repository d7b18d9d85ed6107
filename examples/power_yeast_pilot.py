"""How many replicates? A power curve from a 3-vs-3 pilot, with its uncertainty (issue 7).

A pilot of 3 wild-type and 3 Snf2 yeast samples (drawn at random from the embedded data's clean
replicates) is fitted with a Bayesian NB GLM (`~ strain`). Every simulated experiment then takes its own
posterior draw of each gene's base rate, dispersion and Snf2-vs-WT log2 fold change, the fold changes
shrunk across genes by empirical Bayes (`effects="shrunk"`: a 3-vs-3 pilot's raw fold changes are noisy
and inflated). A gene counts as truly DE in a draw when it is called on a large reference experiment
simulated from that draw (`reference_n` per group), the way a real study's "truth" would be called.
`pilot=pilot` adds what the posterior cannot know: which replicates the pilot happened to draw (all
dispersions of a draw move together by the jackknife uncertainty of the pilot's dispersion level).
Output: a table of predicted power per n (all DE genes, and those with |log2FC| > 1) with its interval,
and the figure power.png. benchmarks/power_validation.py measures how well this predicts real recall.

    python examples/power_yeast_pilot.py --out power-example
    python examples/power_yeast_pilot.py --n 3,6,12,20 --draws 30 --genes 0     # all genes, slower
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

import probgex as pg
from probgex.power.report import write


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="3,6,12,20", help="replicates per group to predict")
    p.add_argument("--pilot-n", type=int, default=3)
    p.add_argument("--genes", type=int, default=2000, help="most expressed genes kept (0: all)")
    p.add_argument("--draws", type=int, default=20, help="posterior draws (one simulated experiment each)")
    p.add_argument("--reference-n", type=int, default=43, help="replicates per group that define 'truly DE'")
    p.add_argument("--max-epochs", type=int, default=1500)
    p.add_argument("--out", type=Path, default=Path("power-example"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ns = [int(t) for t in a.n.split(",")]

    adata = pg.datasets.schurch_yeast()
    adata = adata[~adata.obs["flagged_bad_rep"].astype(bool)]
    if a.genes:
        total = np.asarray(adata.X.sum(0)).ravel()
        adata = adata[:, np.sort(np.argsort(total)[::-1][: a.genes])]
    rng = np.random.default_rng(a.seed)
    strain = adata.obs["strain"].astype(str).to_numpy()
    pick = np.concatenate([rng.choice(np.flatnonzero(strain == s), a.pilot_n, replace=False) for s in ("WT", "Snf2")])
    pilot = adata[pick].copy()

    # holdout=0: with 6 samples every one is needed for the fit (no early stopping; a fixed epoch budget)
    fit = pg.Model("~ strain", likelihood="nb").fit(pilot, seed=a.seed, holdout=0.0, max_epochs=a.max_epochs)
    ds = pg.power.curve(fit, ("strain", "Snf2", "WT"), ns, key=jax.random.PRNGKey(a.seed), n_draws=a.draws,
                        n_rep=1, effects="shrunk", reference_n=a.reference_n, min_abs_lfc=(1.0,), pilot=pilot)
    a.out.mkdir(parents=True, exist_ok=True)
    summary = write(ds, a.out)
    (a.out / "power.json").write_text(json.dumps(summary | {"pilot": pilot.obs_names.tolist()}, indent=1))

    print(f"pilot: {', '.join(pilot.obs_names)}  ({pilot.n_vars} genes)")
    print(f"{'n/group':>7}  {'power':>6}  {'90% interval':>15}  {'|lfc|>1':>7}  {'interval':>15}  FDR")
    for r in summary["per_n"]:
        big = r["power_by_min_abs_lfc"]["1"]
        print(f"{r['n_per_group']:>7}  {r['power']:6.3f}  [{r['power_lower']:.3f}, {r['power_upper']:.3f}]  "
              f"{big['mean']:7.3f}  [{big['lower']:.3f}, {big['upper']:.3f}]  {r['realized_fdr']:.3f}")
    print(f"truly DE per draw (called at {a.reference_n} per group): {float(ds['n_de_reference'].mean()):.0f}; "
          f"wrote {a.out}/power.png, power.json, power.nc")
    return summary


if __name__ == "__main__":
    main()
