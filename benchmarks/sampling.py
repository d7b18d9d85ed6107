"""Learned latent priors (issue 6) on kang_ctrl5 and kang_muscat: sampling speed and realism of
conditional samples.

One cVAE (NB, latent dim 10, encoder/decoder (128,), formula ~ cluster_id) is fitted on the training
cells (the 868 cells of splits/kang_ctrl5_heldout.txt are never seen). Its encoder means of the
training cells then train a diffusion prior and a flow prior (same VAE weights for all three priors):
  gaussian   the VAE's own conditional Gaussian prior network
  diffusion  VP-SDE score model; samplers: probability-flow ODE (Tsit5 + PID), reverse SDE Euler-Maruyama
             (500 steps) and Heun (250 steps)
  flow       flow matching (conditional OT path), ODE (Tsit5 + PID)

Speed: conditional count profiles per second (z from the prior -> decoder -> NB counts drawn with NumPy)
at batch 1 and batch 1,000, median of repeats after a compile call, with the network evaluations (NFE).
Realism: one profile per held-out cell from its metadata and observed library size, against the real
held-out cells: energy distance on the first 20 PCs of log-normalised counts (PCA fitted on 3,000
other training cells: a PCA fitted on one of the two compared sets separates in-sample from
out-of-sample cells by itself, AUC 0.96 for real vs real in a first run), a classifier two-sample test (gradient-boosted trees on those PCs, 5-fold CV AUC;
0.5 = indistinguishable), KS distances of per-gene means, per-gene zero fractions and per-cell zero
fractions, and randomized-PIT coverage of the central 90% interval (20 draws). Reference row "real":
for each held-out cell a random training cell of the same cluster (the noise floor of each metric).

    .venv/bin/python benchmarks/sampling.py --epochs 40 --prior-steps 6000 --repeats 3 \
        --models /tmp/sampling-models --out benchmarks/results/sampling.json

kang_muscat (`--dataset kang_muscat`): formula ~ cluster_id * group_id (10 conditions), the fixed split
splits/kang_muscat_heldout.txt (156 held-out cells); with so few test cells, `--draws K` repeats each
row's generated set (and the reference row's picks) K times and reports the mean and sd of each metric;
energy distances are also given per condition (cluster|group). `--no-speed` skips the timings.

    .venv/bin/python benchmarks/sampling.py --dataset kang_muscat --epochs 300 --prior-steps 6000 --draws 5 \
        --rows gaussian diffusion-ode flow-ode --no-speed --models /tmp/muscat-models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from scipy.stats import ks_2samp
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

import probgex as pg
from probgex.fit import Fit
from probgex.inference.minibatch import make_batch
from probgex.inference.predictive import Draws, pit_coverage
from probgex.inference.prior_stage import fit_prior_stage

from _common import RESULTS, fixed_split, load, machine


def with_latent(fit: Fit, latent, params: dict) -> Fit:
    spec = dataclasses.replace(fit.spec, latent=latent)
    return Fit(spec, fit.encoding, fit.var_names, fit.dims, fit.log_mean, params, fit.history, fit.group_levels,
               fit.heldout_obs)


def energy_distance(x, y):
    d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).mean()  # noqa: E731
    return float(2 * d(x, y) - d(x, x) - d(y, y))


def lognorm(x, lib):
    return np.log1p(x / lib[:, None] * 1e4)


def realism(real, fake, lib_real, lib_fake, pca, clusters, seed=0):
    """Realism metrics of `fake` against `real` (rows matched by cell); `clusters`: each cell's condition."""
    a, b = pca.transform(lognorm(real, lib_real)), pca.transform(lognorm(fake, lib_fake))
    lab = np.r_[np.zeros(len(a)), np.ones(len(b))]
    prob = cross_val_predict(HistGradientBoostingClassifier(random_state=seed), np.r_[a, b], lab, cv=5,
                             method="predict_proba")[:, 1]
    per_cluster = {str(k): energy_distance(a[clusters == k], b[clusters == k]) for k in np.unique(clusters)}
    return {"energy_pca20": energy_distance(a, b), "energy_pca20_by_cluster": per_cluster,
            "auc": float(roc_auc_score(lab, prob)),
            "ks_gene_mean": float(ks_2samp(real.mean(0), fake.mean(0)).statistic),
            "ks_gene_zero_frac": float(ks_2samp((real == 0).mean(0), (fake == 0).mean(0)).statistic),
            "ks_cell_zero_frac": float(ks_2samp((real == 0).mean(1), (fake == 0).mean(1)).statistic)}


def pit90(fit: Fit, test, n=20, seed=0):
    data = fit.data(test)
    rng = np.random.default_rng(seed)
    u = np.empty((data.n_obs, data.n_genes))
    for rows, d in fit.predictive_blocks(data, n, jax.random.PRNGKey(seed)):
        u[rows] = d.randomized_pit(data.rows(rows).astype(np.float64), rng)
    return float(pit_coverage(u, (0.9,))[0])


def speed(fit: Fit, test, batch: int, repeats: int):
    """(profiles/s, ms/profile, NFE) of conditional count profiles at this batch size."""
    obs = test.obs.iloc[np.arange(batch) % test.n_obs]
    data = fit.metadata(obs, np.full(batch, 2000.0))
    b = make_batch(data, np.arange(batch), batch, 1.0, with_counts=False)
    rng = np.random.default_rng(0)

    def once(i):
        mu, th, gate = fit._predictive(fit.params, jax.random.PRNGKey(i), b, n=1, from_data=False)
        return Draws(fit.spec.likelihood, np.asarray(mu), np.asarray(th), None if gate is None else np.asarray(gate)
                     ).sample(rng)

    once(0)  # compile
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        once(i + 1)
        times.append(time.perf_counter() - t)
    t = float(np.median(times))
    nfe = 0
    if fit.story.learned is not None:
        f = jax.jit(lambda p, k, c: fit.story.learned.sample(p, k, c, return_nfe=True)[1])
        nfe = int(f(fit.params["learned_prior"], jax.random.PRNGKey(0), np.asarray(b.design)))
    return {"profiles_per_s": batch / t, "ms_per_profile": 1e3 * t / batch, "nfe": nfe, "seconds": t}


# dataset -> (split file, formula, the obs columns whose levels define a condition, default out file)
DATASETS = {
    "kang_ctrl5": ("kang_ctrl5_heldout.txt", "~ cluster_id", ("cluster_id",), "sampling.json"),
    "kang_muscat": ("kang_muscat_heldout.txt", "~ cluster_id * group_id", ("cluster_id", "group_id"),
                    "sampling_kang_muscat.json"),
}
ROWS = ("gaussian", "diffusion-ode", "diffusion-sde-euler500", "diffusion-sde-heun250", "flow-ode")


def dense(a) -> np.ndarray:
    return np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X, np.float64)


def conditions(adata, columns) -> np.ndarray:
    """One label per cell: its levels of `columns` joined ("B cells" or "B cells|stim")."""
    return np.asarray(adata.obs[list(columns)].astype(str).agg("|".join, axis=1))


def fit_models(train, formula: str, diff, flow, args):
    """(the VAE + diffusion prior fit, the same VAE + flow prior fit, seconds of each), cached in args.models."""
    cache = None if args.models is None else Path(args.models)
    if cache is not None and (cache / "diffusion.npz").is_file() and (cache / "flow.npz").is_file():
        return pg.load(cache / "diffusion.npz"), pg.load(cache / "flow.npz"), None, None
    t0 = time.perf_counter()
    model = pg.Model(formula, likelihood="nb", latent=diff, encoder=(128,), decoder=(128,))
    fit_d = model.fit(train, seed=0, max_epochs=args.epochs, patience=args.epochs)
    t_fit = time.perf_counter() - t0
    vae = {k: v for k, v in fit_d.params.items() if k != "learned_prior"}
    fit_f = with_latent(fit_d, flow, vae)
    data = fit_f.data(train)
    held = np.isin(np.asarray(data.obs.index), fit_d.heldout_obs)
    t0 = time.perf_counter()
    params, _ = fit_prior_stage(fit_f.story, vae, data, np.flatnonzero(~held), np.flatnonzero(held), 0, True)
    fit_f = with_latent(fit_d, flow, params)
    t_flow = time.perf_counter() - t0
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        fit_d.save(cache / "diffusion.npz")
        fit_f.save(cache / "flow.npz")
    return fit_d, fit_f, t_fit, t_flow


def summarize(draws: list[dict]) -> dict:
    """Mean and sd over repeated draws of each scalar metric (and of each per-condition energy)."""
    out = {}
    for k, v in draws[0].items():
        if isinstance(v, dict):
            out[k] = {c: float(np.mean([d[k][c] for d in draws])) for c in v}
        else:
            vals = [d[k] for d in draws]
            out[k], out[k + "_sd"] = float(np.mean(vals)), float(np.std(vals))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="kang_ctrl5")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--prior-steps", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--draws", type=int, default=1,
                    help="generated sets (and reference picks) per row; realism is their mean (and sd)")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--no-speed", action="store_true", help="realism only (speed needs a quiet machine)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/<the dataset's file>")
    ap.add_argument("--models", default=None, help="folder to save the fitted models to / reuse them from")
    args = ap.parse_args()
    split_file, formula, columns, out_name = DATASETS[args.dataset]
    out = Path(args.out) if args.out else RESULTS / out_name
    adata = load(args.dataset)
    train, test = fixed_split(adata, split_file)
    diff = pg.latent.Diffusion(dim=10, net={"hidden": (256, 256, 256)}, training={"max_steps": args.prior_steps})
    flow = pg.latent.Flow(dim=10, net={"hidden": (256, 256, 256)}, training={"max_steps": args.prior_steps})
    fit_d, fit_f, t_fit, t_flow = fit_models(train, formula, diff, flow, args)
    vae = {k: v for k, v in fit_d.params.items() if k != "learned_prior"}
    variants = {
        "gaussian": lambda: with_latent(fit_d, pg.latent.Gaussian(dim=10), vae),
        "diffusion-ode": lambda: fit_d,
        "diffusion-sde-euler500": lambda: with_latent(fit_d, dataclasses.replace(fit_d.spec.latent, sampler="sde",
                                                                                 sde_steps=500), fit_d.params),
        "diffusion-sde-heun250": lambda: with_latent(fit_d, dataclasses.replace(fit_d.spec.latent, sampler="sde",
                                                                                sde_solver="heun", sde_steps=250),
                                                     fit_d.params),
        "flow-ode": lambda: fit_f,
    }
    lib_test = np.asarray(test.X.sum(1)).ravel().astype(float)
    real = dense(test)
    cond, tr_cond = conditions(test, columns), conditions(train, columns)
    rng = np.random.default_rng(0)
    picks = [np.array([rng.choice(np.flatnonzero(tr_cond == k)) for k in cond]) for _ in range(args.draws)]
    # PCA on training cells never used as a reference pick (a PCA fitted on one compared set separates it)
    spare = np.setdiff1d(np.arange(train.n_obs), np.concatenate(picks))
    others = rng.choice(spare, min(3000, len(spare)), replace=False)
    px = dense(train[others])
    pca = PCA(20, random_state=0).fit(lognorm(px, px.sum(1)))
    rows = {}
    ref = [dense(train[p]) for p in picks]
    rows["real"] = {"realism": summarize([realism(real, r, lib_test, r.sum(1), pca, cond) for r in ref])}
    for name in args.rows:
        f = variants[name]()
        row = {}
        if not args.no_speed:
            for batch in (1, 1000):
                row[f"speed_b{batch}"] = speed(f, test, batch, args.repeats if batch > 1 else 3 * args.repeats)
        draws = []
        for d in range(args.draws):
            pred = f.predict(test.obs, n_samples=1, library_size=lib_test, seed=1 + d)
            draws.append(realism(real, pred["counts"].values[0].astype(np.float64), lib_test, lib_test, pca, cond))
        row["realism"] = summarize(draws)
        row["pit_cov90"] = pit90(f, test)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        result = {"machine": machine(), "args": vars(args), "dataset": args.dataset, "formula": formula,
                  "n_train": train.n_obs, "n_test": test.n_obs, "fit_vae_and_diffusion_s": t_fit,
                  "fit_flow_s": t_flow, "best_epoch": fit_d.history.best_epoch, "rows": rows}
        with open(out, "w") as fh:  # after every row, so a partial run keeps what it measured
            json.dump(result, fh, indent=1)
    print_table(rows, args.draws > 1)


def print_table(rows: dict, with_sd: bool) -> None:
    def v(m, k):
        return f"{m[k]:.3f}" + (f" ± {m[k + '_sd']:.3f}" if with_sd else "")

    print("\n| prior / sampler | profiles/s b=1 | ms/profile b=1000 | NFE | energy PCA20 | AUC | KS gene mean | "
          "KS gene zero frac | KS cell zero frac | PIT cov 90% |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        m = r["realism"]
        sp = (f"{r['speed_b1']['profiles_per_s']:.1f} | {r['speed_b1000']['ms_per_profile']:.3f} | "
              f"{r['speed_b1000']['nfe']}") if "speed_b1" in r else "- | - | -"
        print(f"| {name} | {sp} | {v(m, 'energy_pca20')} | {v(m, 'auc')} | {v(m, 'ks_gene_mean')} | "
              f"{v(m, 'ks_gene_zero_frac')} | {v(m, 'ks_cell_zero_frac')} | {r.get('pit_cov90', float('nan')):.3f} |")
        print("    energy by condition: " + ", ".join(f"{k} {e:.2f}" for k, e in m["energy_pca20_by_cluster"].items()))


if __name__ == "__main__":
    main()
