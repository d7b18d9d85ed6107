"""Does the flow prior's ODE tolerance change what the model samples? (issue 13 item 3, 2026-12-04)

The flow's log density at rtol = atol = 1e-3 (the default 1e-4) halves `check`'s cost at <= 0.03 nats of
held-out LPD (benchmarks/README.md, "What the flow's held-out log density costs"); the same `ODE` options
drive sampling, so the looser tolerance may become the default only if samples are unchanged. For a saved
flow fit and held-out metadata, with the default tolerance (a) and the looser one (b):

- latents: `prior_samples` of every held-out cell's condition, `--draws` each. Paired (same seed, so the
  same N(0, I) starting points): the RMS of z_b - z_a per dimension over the sd of z_a. Two-sample: the
  energy distance between z_a (seed 0) and z_b (seed 1) on `--subsample` latents each, with a permutation
  p-value, beside the same statistic between z_a (seed 0) and z_a (seed 1) (the null, same tolerance); and
  each dimension's KS test (b seed 1 against a seed 0; a seed 1 against a seed 0).
- `--seed-pair k` replaces seeds 0 / 1 by 2k / 2k + 1 (more pairs, the same tests).
- counts: `sample` of `--profiles` profiles per held-out cell at its observed library size: each gene's
  mean and variance of a and b with the same seed (so only the latents differ), against a with seed 1
  (Monte Carlo noise): |log ratio| per gene (genes with mean >= 0.05), median and max.

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/ode_tolerance.py --model /tmp/fits/kang_ctrl5_cvae_draw0.pgx \
      --data kang_ctrl5 --split kang_ctrl5_heldout.txt --label ctrl5
Results: benchmarks/results/ode_tolerance.json (one row per --label).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import ks_2samp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fixed_split, load  # noqa: E402

OUT = RESULTS / "ode_tolerance.json"
MIN_MEAN = 0.05


def energy_test(x: np.ndarray, y: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, float]:
    """(energy distance, permutation p-value) between samples x and y (rows)."""
    z = np.concatenate([x, y])
    d = cdist(z, z)
    n = len(x)

    def stat(idx):
        a, b = idx[:n], idx[n:]
        return 2 * d[np.ix_(a, b)].mean() - d[np.ix_(a, a)].mean() - d[np.ix_(b, b)].mean()

    e = stat(np.arange(len(z)))
    null = np.array([stat(rng.permutation(len(z))) for _ in range(n_perm)])
    return float(e), float((1 + np.sum(null >= e)) / (1 + n_perm))


def log_ratio(a: np.ndarray, b: np.ndarray) -> dict:
    r = np.abs(np.log(b / a))
    return {"median": round(float(np.median(r)), 5), "p99": round(float(np.quantile(r, 0.99)), 5),
            "max": round(float(r.max()), 5)}


def dense(x) -> np.ndarray:
    return np.asarray(x.todense() if hasattr(x, "todense") else x, np.float64)


def run(args) -> dict:
    import probgex as pg
    from probgex.latent import ODE
    fit_a = pg.load(args.model)
    lat = fit_a.spec.latent
    if getattr(lat, "kind", None) != "flow":
        raise SystemExit(f"{args.model} has a {getattr(lat, 'kind', None)!r} prior; this compares flow tolerances")
    fit_b = replace(fit_a, spec=replace(fit_a.spec, latent=replace(lat, ode=ODE(rtol=args.tol, atol=args.tol))))
    _, test = fixed_split(load(args.data), args.split)
    test = test[:, np.asarray(fit_a.var_names, dtype=str)].copy()
    obs = test.obs
    row = {"label": args.label, "model": str(args.model), "data": args.data, "n_obs": int(test.n_obs),
           "tol_a": [lat.ode.rtol, lat.ode.atol], "tol_b": args.tol, "draws": args.draws, "load": os.getloadavg()[0]}
    s0, s1 = 2 * args.seed_pair, 2 * args.seed_pair + 1  # "seed 0" and "seed 1" below
    row["seeds"] = [s0, s1]
    za0 = np.asarray(fit_a.prior_samples(obs, n_samples=args.draws, seed=s0)).reshape(-1, lat.dim)
    za1 = np.asarray(fit_a.prior_samples(obs, n_samples=args.draws, seed=s1)).reshape(-1, lat.dim)
    zb0 = np.asarray(fit_b.prior_samples(obs, n_samples=args.draws, seed=s0)).reshape(-1, lat.dim)
    zb1 = np.asarray(fit_b.prior_samples(obs, n_samples=args.draws, seed=s1)).reshape(-1, lat.dim)
    sd = za0.std(0)
    row["paired_rms_over_sd"] = (np.sqrt(((zb0 - za0) ** 2).mean(0)) / sd).round(5).tolist()
    row["paired_mean_over_sd"] = ((zb0 - za0).mean(0) / sd).round(5).tolist()  # a systematic shift
    row["paired_max_abs_over_sd"] = float((np.abs(zb0 - za0) / sd).max())
    rng = np.random.default_rng(s0)
    pick = lambda z: z[rng.choice(len(z), min(args.subsample, len(z)), replace=False)]  # noqa: E731
    x0, xa1, xb1 = pick(za0), pick(za1), pick(zb1)
    row["energy_b1_vs_a0"], row["energy_p_b1_vs_a0"] = energy_test(x0, xb1, args.perms, rng)
    row["energy_a1_vs_a0"], row["energy_p_a1_vs_a0"] = energy_test(x0, xa1, args.perms, rng)
    row["ks_p_b1_vs_a0"] = [round(float(ks_2samp(za0[:, k], zb1[:, k]).pvalue), 4) for k in range(lat.dim)]
    row["ks_p_a1_vs_a0"] = [round(float(ks_2samp(za0[:, k], za1[:, k]).pvalue), 4) for k in range(lat.dim)]
    lib = dense(test.X).sum(1)
    stats = {}
    for name, fit, seed in (("a0", fit_a, s0), ("b0", fit_b, s0), ("a1", fit_a, s1)):
        x = dense(fit.sample(obs, args.profiles, seed=seed, library_size=lib, sparse=False).X)
        stats[name] = (x.mean(0), x.var(0))
    keep = stats["a0"][0] >= MIN_MEAN
    row["genes_scored"] = int(keep.sum())
    for what, i in (("mean", 0), ("var", 1)):
        row[f"gene_{what}_b0_vs_a0"] = log_ratio(stats["a0"][i][keep], stats["b0"][i][keep])
        row[f"gene_{what}_a1_vs_a0"] = log_ratio(stats["a0"][i][keep], stats["a1"][i][keep])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True, help="file under ../shared/data/splits: the held-out cells")
    ap.add_argument("--label", required=True)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--seed-pair", type=int, default=0, help="k: seeds 2k ('seed 0') and 2k + 1 ('seed 1')")
    ap.add_argument("--draws", type=int, default=20, help="latents per held-out cell")
    ap.add_argument("--subsample", type=int, default=2000, help="latents per side of the energy test")
    ap.add_argument("--perms", type=int, default=200)
    ap.add_argument("--profiles", type=int, default=20, help="count profiles per held-out cell")
    row = run(ap.parse_args())
    print(json.dumps(row, indent=1))
    rows = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    OUT.write_text(json.dumps({"rows": [r for r in rows if r["label"] != row["label"]] + [row]}, indent=1))


if __name__ == "__main__":
    main()
