"""Where the prior's location by marginal likelihood loses held-out log density (issue 13, cause (ii)): on the
simulated yeast designs of yeast_df1_simulated.py (truth known), the default (prior centred on the trend) and
`PRIOR_LOCATION = "marginal"` fitted on the same counts and seeds; per quintile of the genes' TRUE dispersion,
the held-out LPD per entry and 50 / 90% coverage of each.

  PYTHONPATH=. .venv/bin/python benchmarks/prior_location_why.py --draws 0 1 --out R.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import probgex as pg
import probgex.models.trend as trend

sys.path.insert(0, str(Path(__file__).parent))
from calibration_everywhere import probgex_entries  # noqa: E402
from yeast_df1_simulated import simulated_design  # noqa: E402
from yeast_training_draws import clean_yeast  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--draws", type=int, nargs="+", default=[0], help="which draws (designs) of yeast_df1_simulated")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    a = clean_yeast(dense=True)
    out = {}
    for draw in args.draws:
        for nsnf in (1, 2):
            b, n, alpha, _, _ = simulated_design(a, draw, nsnf)
            q = np.searchsorted(np.quantile(alpha, [0.2, 0.4, 0.6, 0.8]), alpha, side="right")
            res = {"true_alpha_quintile_medians": [float(np.median(alpha[q == k])) for k in range(5)]}
            for loc in ("trend", "marginal"):
                trend.PRIOR_LOCATION = loc
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = pg.Model("~ strain", likelihood="nb").fit(b[:n].copy(), seed=0, progress=False)
                    # per (held-out sample, gene): randomized PIT and log predictive density
                    pit, lp = probgex_entries(fit, b[n:].copy(), np.random.default_rng(0))
                res[loc] = {"lpd_by_quintile": [round(float(lp[:, q == k].mean()), 4) for k in range(5)],
                            "cov50_by_quintile": [round(float(np.mean(np.abs(pit[:, q == k] - 0.5) <= 0.25)), 3)
                                                  for k in range(5)],
                            "cov90_by_quintile": [round(float(np.mean(np.abs(pit[:, q == k] - 0.5) <= 0.45)), 3)
                                                  for k in range(5)],
                            "lpd": round(float(lp.mean()), 4)}
            trend.PRIOR_LOCATION = "trend"
            res["lpd_diff_by_quintile"] = [round(x - y, 4) for x, y in zip(res["marginal"]["lpd_by_quintile"],
                                                                           res["trend"]["lpd_by_quintile"], strict=True)]
            out[f"draw{draw}_snf{nsnf}"] = res
            print(draw, nsnf, json.dumps(res), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
