"""Fit speed and held-out reconstruction NLL on kang_ctrl5 (8,684 cells x 2,511 genes).

Models: the cVAE (Gaussian latent dim 10, encoder (128,), decoder (128,)) with NB or ZINB, `~ cluster_id`,
batch 128, Adam 1e-3; and the per-gene NB GLM `~ cluster_id` (its default learning rate 0.02).
The 868 cells of splits/kang_ctrl5_heldout.txt are never seen by the fit; the fit itself holds out a
random 10% of the remaining cells (holdout=0.1, the default) for its per-epoch held-out loss.

Timing (honest, no hooks into the library): two fits with identical seeds and settings, run in
separate fresh Python processes so nothing compiled is shared,
  T1 = wall time of fit(max_epochs=1)   (data preparation + tracing/compilation + 1 epoch)
  Tk = wall time of fit(max_epochs=k)   (patience = k, so exactly k epochs run)
seconds/epoch (steady state) = (Tk - T1) / (k - 1), and "compile + setup" = T1 - seconds/epoch.
The same difference of process CPU time (all threads) is reported as CPU s/epoch: on a shared machine
wall time includes waiting for cores, CPU time does not (XLA CPU uses both cores, so CPU s > wall s
when the machine is otherwise idle).
An epoch here is one pass over the ~7,000 training cells (55 steps of 128) plus the held-out loss on
the ~780 internal held-out cells, i.e. what Model.fit does per epoch.

Held-out NLL per cell: -mean log p(x_n | c_n) over the 868 split cells (Fit.log_predictive_density:
importance sampling with the encoder as proposal for the cVAE, n_samples=100; posterior-averaged for
the GLM). Also reported: the last and best internal held-out negative ELBO per cell from Fit.history.

Usage:
  python benchmarks/fit_speed.py --model cvae --likelihood nb --epochs 30 --out benchmarks/results/fit_speed_cvae_nb.json
  python benchmarks/fit_speed.py --model cvae --likelihood zinb --epochs 30 --out benchmarks/results/fit_speed_cvae_zinb.json
  python benchmarks/fit_speed.py --model glm --likelihood nb --epochs 30 --out benchmarks/results/fit_speed_glm_nb.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fixed_split, load, machine, write  # noqa: E402

FORMULA = "~ cluster_id"


def make_model(model: str, likelihood: str):
    from probgex.fit import Model
    from probgex.latent import Gaussian
    if model == "glm":
        return Model(FORMULA, likelihood=likelihood)
    return Model(FORMULA, likelihood=likelihood, latent=Gaussian(dim=10), encoder=(128,), decoder=(128,))


def one_fit(model: str, likelihood: str, epochs: int, seed: int, score: bool) -> dict:
    """Fit once in this process and return wall times (and, with `score`, the held-out NLL)."""
    train, test = fixed_split(load("kang_ctrl5"), "kang_ctrl5_heldout.txt")
    m = make_model(model, likelihood)
    lr = 1e-3 if model == "cvae" else None  # GLM: its default (0.02)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = m.fit(train, seed=seed, max_epochs=epochs, batch_size=128, learning_rate=lr, patience=epochs + 1,
                progress=False)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    out = {"fit_seconds": t_fit, "fit_cpu_seconds": c_fit, "epochs_run": len(fit.history.train), "best_epoch": fit.history.best_epoch,
           "n_train": int(train.n_obs), "n_test": int(test.n_obs)}
    if score:
        h = fit.history
        out["train_neg_elbo_last"] = h.train[-1]
        out["heldout_neg_elbo_last"] = h.heldout[-1]
        out["heldout_neg_elbo_best"] = min(h.heldout)
        t0 = time.perf_counter()
        lpd = fit.log_predictive_density(test, n_samples=100, seed=seed)
        out["lpd_seconds"] = time.perf_counter() - t0
        out["test_nll_per_cell"] = -float(lpd.mean())
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("cvae", "glm"), default="cvae")
    p.add_argument("--likelihood", choices=("nb", "zinb", "poisson"), default="nb")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:  # one timed fit of max_epochs=1 in a fresh process
        print(json.dumps(one_fit(args.model, args.likelihood, 1, args.seed, score=False)))
        return
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the per-epoch time is a difference with a 1-epoch fit)")
    child = subprocess.run([sys.executable, __file__, "--_child", "--model", args.model, "--likelihood",
                            args.likelihood, "--seed", str(args.seed)], check=True, capture_output=True,
                           text=True)
    first = json.loads(child.stdout.strip().splitlines()[-1])
    t1, c1 = first["fit_seconds"], first["fit_cpu_seconds"]
    res = one_fit(args.model, args.likelihood, args.epochs, args.seed, score=True)
    per_epoch = (res["fit_seconds"] - t1) / (res["epochs_run"] - 1)
    cpu_per_epoch = (res["fit_cpu_seconds"] - c1) / (res["epochs_run"] - 1)
    row = {"dataset": "kang_ctrl5", "model": args.model, "likelihood": args.likelihood, "formula": FORMULA,
           "latent_dim": 10 if args.model == "cvae" else None, "hidden": [128] if args.model == "cvae" else None,
           "batch_size": 128, "learning_rate": 1e-3 if args.model == "cvae" else 0.02,
           "epochs": args.epochs, "seed": args.seed, "fit_1_epoch_seconds": t1, "fit_1_epoch_cpu_seconds": c1, **res,
           "cpu_seconds_per_epoch": cpu_per_epoch,
           "seconds_per_epoch": per_epoch, "compile_and_setup_seconds": t1 - per_epoch,
           "machine": machine()}
    out = args.out or RESULTS / f"fit_speed_{args.model}_{args.likelihood}.json"
    write(out, row)
    print("| model | lik | epochs | s/epoch (wall) | CPU s/epoch | compile+setup s | 1-epoch fit s | fit s | held-out NLL/cell "
          "| held-out -ELBO/cell (last, best) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.likelihood} | {res['epochs_run']} | {per_epoch:.2f} | {cpu_per_epoch:.2f} | {t1 - per_epoch:.1f} "
          f"| {t1:.1f} | {res['fit_seconds']:.1f} | {res['test_nll_per_cell']:.1f} "
          f"| {res['heldout_neg_elbo_last']:.1f}, {res['heldout_neg_elbo_best']:.1f} |")


if __name__ == "__main__":
    main()
