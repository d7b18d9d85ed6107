"""Why does the top expression decile over-cover at the 50% level (issue 4)? A look at the check_speed
setup (kang_ctrl5, the 2,000 genes with the most counts, GLM NB `~ cluster_id`, 1,000 held-out cells,
200 draws).

1. Library self-inclusion: the offset is the cell's total over the modelled genes, which contains the
   gene's own count. The PIT is recomputed with each gene's own count taken out of its offset (mu scaled
   by (lib - y) / lib / (1 - share_g)); if coverage moved to nominal, self-inclusion would be the cause.
2. Shape: standardized residuals z = (y - E[y]) / sd[y] under the predictive, per decile: E[z^2]
   (variance calibration), E[z^3] observed vs predictive (skewness), how much of the top decile's
   sum(z+^3) the most extreme 1% / 5% of cells carry, and E[z^2] with z clipped at 5 (the bulk).

Usage:
  .venv/bin/python benchmarks/top_decile_shape.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, check_speed_split, write  # noqa: E402

LEVELS = (0.5, 0.8, 0.9, 0.95)


def main():
    import jax

    from probgex.fit import Model
    from probgex.inference.predictive import Draws, deciles, inside

    train, test = check_speed_split()
    fit = Model("~ cluster_id", likelihood="nb").fit(train, seed=0, progress=False)
    data = fit.data(test)
    Y = data.rows(np.arange(data.n_obs)).astype(np.float64)
    lib = data.library_size
    share = Y.sum(0) / lib.sum()
    n, G = Y.shape
    u_obs, u_out, m, s, skew = (np.empty((n, G)) for _ in range(5))
    rng = np.random.default_rng(0)
    for rows, d in fit.predictive_blocks(data, 200, jax.random.PRNGKey(0)):
        y = Y[rows]
        u_obs[rows] = d.randomized_pit(y, rng)
        f = (lib[rows, None] - y) / lib[rows, None] / (1 - share[None])
        u_out[rows] = Draws(d.kind, d.mu * f[None], d.theta, d.gate).randomized_pit(y, rng)
        m[rows], s[rows] = d.moments()
        x = d.sample(rng).astype(np.float64)
        skew[rows] = (((x - m[rows]) / s[rows]) ** 3).mean(0)
    dec = deciles(m.mean(0))
    out = {"top_decile_mean_library_share": float(share[dec == 9].mean()), "largest_share": float(share.max())}
    for name, u in (("observed_library", u_obs), ("own_gene_out_of_library", u_out)):
        out[name] = {str(lv): {f"decile_{k + 1}": float(inside(u[:, dec == k], lv).mean()) for k in (0, 8, 9)}
                     for lv in LEVELS}
    z = (Y - m) / s
    out["residuals"] = {f"decile_{k + 1}": {"E_z2": float(np.mean(z[:, dec == k] ** 2)),
                                            "E_z3_observed": float(np.mean(z[:, dec == k] ** 3)),
                                            "E_z3_predictive": float(skew[:, dec == k].mean())} for k in (0, 4, 8, 9)}
    zt = z[:, dec == 9]
    pos3 = np.clip(zt, 0, None) ** 3
    cell = np.sort(pos3.sum(1))[::-1] / pos3.sum()
    out["top_decile"] = {"share_of_sum_zplus3_top1pct_cells": float(cell[: max(1, n // 100)].sum()),
                         "share_of_sum_zplus3_top5pct_cells": float(cell[: max(1, n // 20)].sum()),
                         "fraction_entries_z_above_5": float((zt > 5).mean()),
                         "E_z2_z_clipped_at_5": float(np.mean(np.clip(zt, None, 5) ** 2)),
                         "pit_histogram_10_bins": (np.histogram(u_obs[:, dec == 9], bins=10, range=(0, 1))[0]
                                                   / zt.size).tolist()}
    import json
    print(json.dumps(out, indent=1))
    write(RESULTS / "check" / "top_decile_shape.json", out)


if __name__ == "__main__":
    main()
