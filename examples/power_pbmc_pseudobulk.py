"""How many donors? Single-cell power at the subject level from the Kang et al. PBMC pilot (issue 7).

Cells of one donor share that donor's deviation from its group, so they are not independent
replicates: the test is run on pseudobulk (each sample's summed counts in one cell type), and power is
counted in subjects per group. The pilot is muscat's subset of Kang et al. 2018 (IFN-beta stimulated
PBMCs; data/kang_muscat.h5ad): samples ctrl101, ctrl107, stim101, stim107, i.e. 2 samples per
condition, 44 to 100 cells each in B cells. `pg.power.pseudobulk_curve` sums each sample's cells of the
chosen type, fits the NB GLM `~ group_id` on the 4 pseudobulks, and simulates experiments of n subjects
per group whose libraries are `cells` cells x the pilot's UMIs per cell, testing each with the
DESeq2-style Wald test. Output per number of cells per subject: power.json / power.nc / power.png in
<out>/cells_<c>/, and a table.

Be honest about the pilot: 2 subjects per group is a very thin basis. The between-subject dispersion
rests on 2 degrees of freedom per gene (the GLM's prior and the posterior draws carry that
uncertainty into the interval, but not the risk that these 2 donors are atypical); the 2 donors are
the same people in both conditions (a paired design), which this unpaired `~ group_id` ignores, so the
dispersion also absorbs the donor effect and the curve is that of an unpaired study with new donors
per group. Use it for the shape of the trade-off (donors against cells), not for a final sample size.

    python examples/power_pbmc_pseudobulk.py --out power-pbmc
    python examples/power_pbmc_pseudobulk.py --cell-type "CD14+ Monocytes" --n 3,5,10,20 --cells 50,200

Printed by `python examples/power_pbmc_pseudobulk.py --data /work/shared/data/kang_muscat.h5ad --out
/tmp/power-pbmc` (defaults: B cells, n = 3, 5, 10 subjects per group, 100 and 400 cells per subject,
|log2FC| = 1 on 10% of the genes, FDR 0.05, 20 posterior draws x 2 experiments; 32 s on 2 cores;
rerun after the DE test's gene-wise dispersion rule changed, stop 11):

    pilot: B cells, ctrl101 (100 cells), ctrl107 (44 cells), stim101 (100 cells), stim107 (54 cells)

    100 cells per subject (library 96,605 = 100 x 966 UMIs per cell), 1229 genes, |log2FC| = 1 on 10%
    subjects/group   power     90% interval  realized FDR
                 3   0.272  [0.211, 0.317]  0.038
                 5   0.541  [0.482, 0.592]  0.044
                10   0.759  [0.702, 0.797]  0.048

    400 cells per subject (library 386,420 = 400 x 966 UMIs per cell), 1229 genes, |log2FC| = 1 on 10%
    subjects/group   power     90% interval  realized FDR
                 3   0.541  [0.500, 0.590]  0.078
                 5   0.742  [0.695, 0.781]  0.077
                10   0.865  [0.845, 0.911]  0.065

Four times the cells buys about as much as going from 3 to 5 donors at 100 cells (0.541 against
0.541). It only deepens the libraries: of the ~123 DE genes per experiment, those under 10 expected
counts per subject fall from 33 to 14 and those at 100-1000 rise from 13 to 48 (power.nc,
n_de_stratum), while the power within a count stratum barely changes (the between-donor dispersion
sets it); so at 10 donors the extra cells add only 0.11, and 10 donors per group at 100 cells fall
short of 0.8. The intervals carry the fit's posterior only: they are narrow because they cannot see
that 2 donors per group may be unrepresentative (`curve(..., pilot=)`'s dispersion-level jackknife
needs 3 subjects in a group). The figure's x axis says "subjects per group".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import jax

import probgex as pg
from probgex.power.report import write

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "kang_muscat.h5ad"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="AnnData of raw counts (Kang et al., muscat subset)")
    p.add_argument("--cell-type", default="B cells", help="level of obs['cluster_id'] to test")
    p.add_argument("--n", default="3,5,10", help="subjects per group to predict")
    p.add_argument("--cells", default="100,400", help="cells per subject")
    p.add_argument("--lfc", type=float, default=1.0, help="log2 fold change of the DE genes")
    p.add_argument("--de-fraction", type=float, default=0.1)
    p.add_argument("--draws", type=int, default=20, help="posterior draws")
    p.add_argument("--rep", type=int, default=2, help="experiments per draw")
    p.add_argument("--max-epochs", type=int, default=1500)
    p.add_argument("--min-cells", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("power-pbmc"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ns = [int(t) for t in a.n.split(",")]
    cells = [int(t) for t in a.cells.split(",")]

    adata = ad.read_h5ad(a.data)
    pilot = pg.power.pseudobulk(adata, "sample_id", cell_type=("cluster_id", a.cell_type), min_cells=a.min_cells)
    print(f"pilot: {a.cell_type}, " + ", ".join(f"{s} ({k} cells)" for s, k in zip(pilot.obs_names, pilot.obs["n_cells"])))
    out = {"pilot": {s: int(k) for s, k in zip(pilot.obs_names, pilot.obs["n_cells"])}, "per_cells": {}}
    for c in cells:
        # one key per setting, the same for every c: the curves differ by the cells, not by the draws
        ds = pg.power.pseudobulk_curve(adata, "~ group_id", ("group_id", "stim", "ctrl"), subject="sample_id",
                                       cell_type=("cluster_id", a.cell_type), cells_per_subject=c,
                                       n_per_group=ns, key=jax.random.PRNGKey(a.seed), min_cells=a.min_cells,
                                       fit_seed=a.seed, max_epochs=a.max_epochs, lfc=a.lfc,
                                       de_fraction=a.de_fraction, n_draws=a.draws, n_rep=a.rep)
        summary = write(ds, a.out / f"cells_{c}")
        summary["settings"] |= {k: ds.attrs[k] for k in ("unit", "cell_type", "cells_per_subject", "umi_per_cell",
                                                          "depth_from", "n_genes_pilot")}
        (a.out / f"cells_{c}" / "power.json").write_text(json.dumps(summary, indent=1))
        out["per_cells"][str(c)] = summary
        print(f"\n{c} cells per subject (library {ds.attrs['depth']:,.0f} = {c} x {ds.attrs['umi_per_cell']:.0f} "
              f"UMIs per cell), {ds.attrs['n_genes_pilot']} genes, |log2FC| = {a.lfc:g} on {a.de_fraction:.0%}")
        print(f"{'subjects/group':>14}  {'power':>6}  {'90% interval':>15}  realized FDR")
        for r in summary["per_n"]:
            print(f"{r['n_per_group']:>14}  {r['power']:6.3f}  [{r['power_lower']:.3f}, {r['power_upper']:.3f}]  "
                  f"{r['realized_fdr']:.3f}")
    (a.out / "power.json").write_text(json.dumps(out, indent=1))
    print(f"\nwrote {a.out}/power.json and cells_<c>/power.json, power.nc, power.png")
    return out


if __name__ == "__main__":
    main()
