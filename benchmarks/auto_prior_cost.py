"""What the cVAE's default prior (`latent=10` = `latent.Auto(dim=10)`) costs at fit time: the VAE stage,
the decision (the training cells' encoder means) and, where the flow is chosen, the prior stage.

One default-size fit (default epochs, batch, networks; `Model(formula, likelihood="nb", latent=10)`) on a
single-cell set, timed per stage (wall and process CPU seconds) by wrapping `auto_prior.decide` and
`fit_prior_stage` as `probgex.fit` calls them. `--tiny`: the test suite's 150-cell fixture (`~ group`,
(16,) networks, 6 epochs), explicit Gaussian then auto, each in a fresh process: the decision's overhead
where it keeps the Gaussian.

Usage:
  nice -n 10 env PYTHONPATH=. .venv/bin/python benchmarks/auto_prior_cost.py --data kang_muscat
  nice -n 10 env PYTHONPATH=. .venv/bin/python benchmarks/auto_prior_cost.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = Path(__file__).resolve().parent / "results" / "auto_prior_cost.json"
SETS = {"kang_muscat": ("~ cluster_id + group_id", "kang_muscat_heldout.txt"),
        "kang_ctrl5": ("~ cluster_id + sample_id", "kang_ctrl5_heldout.txt")}


class Clock:
    """Wall and CPU seconds spent inside the wrapped functions, by name."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def wrap(self, name, fn):
        def timed(*a, **kw):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
                self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        return timed


def fit_timed(model, adata, **options) -> tuple[object, dict]:
    import probgex.fit as pf

    clock = Clock()
    decide, stage = pf.auto_prior.decide, pf.fit_prior_stage
    pf.auto_prior.decide = clock.wrap("decision", decide)
    pf.fit_prior_stage = clock.wrap("prior_stage", stage)
    try:
        w, c = time.perf_counter(), time.process_time()
        fit = model.fit(adata, **options)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    finally:
        pf.auto_prior.decide, pf.fit_prior_stage = decide, stage
    out = {"fit_wall_s": wall, "fit_cpu_s": cpu}
    for name in ("decision", "prior_stage"):
        out[f"{name}_wall_s"], out[f"{name}_cpu_s"] = clock.wall.get(name, 0.0), clock.cpu.get(name, 0.0)
    out["vae_stage_wall_s"] = wall - out["decision_wall_s"] - out["prior_stage_wall_s"]
    out["vae_stage_cpu_s"] = cpu - out["decision_cpu_s"] - out["prior_stage_cpu_s"]
    return fit, out


def real(name: str, seed: int) -> dict:
    from _common import fixed_split, load

    from probgex.fit import Model

    formula, split = SETS[name]
    train, _ = fixed_split(load(name), split)
    fit, row = fit_timed(Model(formula, likelihood="nb", latent=10), train, seed=seed, progress=False)
    return {"data": name, "formula": formula, "seed": seed, "n_cells": int(train.n_obs), "n_genes": int(train.n_vars),
            "spec_latent": fit.spec.latent.to_dict(), "latent_choice": fit.fit_info["latent_choice"],
            "epochs": len(fit.history.train), "best_epoch": fit.history.best_epoch,
            "prior_blocks": None if fit.prior_history is None else len(fit.prior_history.train),
            "prior_best_step": None if fit.prior_history is None else fit.prior_history.best_step,
            **row}


def tiny(variant: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import _small_adata

    from probgex.fit import Model
    from probgex.latent import Gaussian

    latent = Gaussian(dim=2) if variant == "gaussian" else 2
    model = Model("~ group", likelihood="nb", latent=latent, encoder=(16,), decoder=(16,),
                  dispersion="gene-group", dispersion_key="batch")
    fit, row = fit_timed(model, _small_adata(), seed=0, max_epochs=6, progress=False)
    return {"variant": variant, "spec_latent": fit.spec.latent.to_dict(),
            "latent_choice": (fit.fit_info or {}).get("latent_choice"), **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(SETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(tiny(args.one)))
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    load = os.getloadavg()
    if args.tiny:
        rows = []
        for variant in ("gaussian", "auto"):
            res = subprocess.run([sys.executable, __file__, "--one", variant], capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
        results["tiny"] = {"rows": rows, "loadavg": load}
    else:
        row = real(args.data, args.seed)
        row["loadavg_start"], row["loadavg_end"] = load, os.getloadavg()
        print(json.dumps(row, indent=1), flush=True)
        results[f"{args.data}_seed{args.seed}"] = row
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
