"""Prototype for issue 13 (not a default): centre the GLM's log-normal dispersion prior at log trend - s^2 / 2, so
that its MEAN (not its median) is the fitted trend, which is a mean-type dispersion (the Cox-Reid profile
likelihood's trended common dispersion, `models.trend`). Applied by wrapping GLM._prior; the same designs, genes
and held-out samples as yeast_training_draws.py. `--variant default` runs the unchanged model for a same-load pair.

  PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/yeast_df1_prototype.py --snf 1 --variant shifted
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpyro.distributions as dist

from probgex.models.glm import GLM

sys.path.insert(0, str(Path(__file__).parent))
from yeast_training_draws import clean_yeast, one_design, random_designs  # noqa: E402

_orig_prior = GLM._prior


def shifted_prior(self, gene_sd=None, level=None):
    d = _orig_prior(self, gene_sd, level)
    base = d.base_dist
    loc, scale = base.loc, base.scale
    disp = np.zeros(self.D, bool)
    i = self.P
    for q, w in zip(self.extras, self.widths, strict=True):
        if q.role == "dispersion":
            disp[i:i + w] = True
        i += w
    loc = loc - np.where(disp, 1.0, 0.0) * scale**2 / 2  # E[alpha] = trend under the log-normal prior
    return dist.Normal(loc, scale).to_event(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--wt", type=int, default=2)
    p.add_argument("--snf", type=int, default=1)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--variant", choices=("default", "shifted"), default="shifted")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.variant == "shifted":
        GLM._prior = shifted_prior
    a = clean_yeast()
    rows = []
    for draw, names in enumerate(random_designs(a, args.wt, args.snf, args.draws)):
        rows.append(one_design(a, names, gene_seed=draw))
        r = rows[-1]
        print(draw, round(r["coverage50"], 3), round(r["coverage90"], 3), round(r["lpd_per_entry"], 4), flush=True)
    s = {"pooled50": float(np.mean([r["coverage50"] for r in rows])),
         "pooled90": float(np.mean([r["coverage90"] for r in rows])),
         "lpd": float(np.mean([r["lpd_per_entry"] for r in rows]))}
    print(json.dumps(s))
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        old[f"{args.wt}wt_{args.snf}snf_{args.variant}"] = {"rows": rows, **s}
        args.out.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
