"""Learned-prior prediction at small batches (issue 17): 1,000 profiles of one condition
(`fit.predict(obs_of_one_row, n_samples=1000)`) with the Gaussian, diffusion and flow priors of a cVAE-NB
`~ group_id` (latent 4) on the test subset of kang_muscat (1,556 cells x 1,267 genes; 5 epochs, priors 500
steps: the speed question only). Three calls each: the first includes compilation, the others are warm.

Usage: python benchmarks/prior_small_batch.py --out benchmarks/results/prior_small_batch.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "kang_muscat.h5ad"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=RESULTS / "prior_small_batch.json")
    args = p.parse_args()
    import anndata as ad

    import probgex as pg

    warnings.simplefilter("ignore")
    a = ad.read_h5ad(DATA)
    rows = {}
    for name, latent in (("gaussian", pg.latent.Gaussian(dim=4)), ("diffusion", pg.latent.Diffusion(dim=4, training={"max_steps": 500})),
                         ("flow", pg.latent.Flow(dim=4, training={"max_steps": 500}))):
        fit = pg.Model("~ group_id", likelihood="nb", latent=latent).fit(a, seed=0, max_epochs=5, progress=False)
        times = []
        for rep in range(3):
            t = time.perf_counter()
            fit.predict(a.obs.iloc[:1], n_samples=1000, seed=rep)
            times.append(time.perf_counter() - t)
        rows[name] = {"first_s": times[0], "warm_s": min(times[1:])}
        print(name, rows[name], flush=True)
    for name in ("diffusion", "flow"):
        rows[name]["warm_ratio_to_gaussian"] = rows[name]["warm_s"] / rows["gaussian"]["warm_s"]
    write(args.out, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
