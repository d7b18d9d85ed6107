"""Learned latent priors (issue 6) on kang_ctrl5: sampling speed and realism of conditional samples.

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
    data = fit._metadata(obs, np.full(batch, 2000.0))
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--prior-steps", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "sampling.json"))
    ap.add_argument("--models", default=None, help="folder to save the fitted models to / reuse them from")
    args = ap.parse_args()
    adata = load("kang_ctrl5")
    train, test = fixed_split(adata, "kang_ctrl5_heldout.txt")
    diff = pg.latent.Diffusion(dim=10, net=(256, 256, 256), max_steps=args.prior_steps)
    flow = pg.latent.Flow(dim=10, net=(256, 256, 256), max_steps=args.prior_steps)
    cache = None if args.models is None else Path(args.models)
    t_fit = t_flow = None
    if cache is not None and (cache / "diffusion.npz").is_file() and (cache / "flow.npz").is_file():
        fit_d, fit_f = pg.load(cache / "diffusion.npz"), pg.load(cache / "flow.npz")
    else:
        t0 = time.perf_counter()
        model = pg.Model("~ cluster_id", likelihood="nb", latent=diff, encoder=(128,), decoder=(128,))
        fit_d = model.fit(train, seed=0, max_epochs=args.epochs, patience=args.epochs)
        t_fit = time.perf_counter() - t0
        vae = {k: v for k, v in fit_d.params.items() if k != "learned_prior"}
        fit_f = with_latent(fit_d, flow, vae)
        data = fit_f.data(train)
        held = np.isin(np.asarray(data.obs.index), fit_d.heldout_obs)
        t0 = time.perf_counter()
        fit_f = with_latent(fit_d, flow, fit_prior_stage(fit_f.story, vae, data, np.flatnonzero(~held),
                                                         np.flatnonzero(held), 0, True))
        t_flow = time.perf_counter() - t0
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            fit_d.save(cache / "diffusion.npz")
            fit_f.save(cache / "flow.npz")
    vae = {k: v for k, v in fit_d.params.items() if k != "learned_prior"}
    variants = {
        "gaussian": with_latent(fit_d, pg.latent.Gaussian(dim=10), vae),
        "diffusion-ode": fit_d,
        "diffusion-sde-euler500": with_latent(fit_d, dataclasses.replace(diff, sampler="sde", sde_steps=500),
                                              fit_d.params),
        "diffusion-sde-heun250": with_latent(fit_d, dataclasses.replace(diff, sampler="sde", sde_solver="heun",
                                                                        sde_steps=250), fit_d.params),
        "flow-ode": fit_f,
    }
    lib_test = np.asarray(test.X.sum(1)).ravel().astype(float)
    real = np.asarray(test.X.todense() if hasattr(test.X, "todense") else test.X, np.float64)
    clusters = np.asarray(test.obs["cluster_id"].astype(str))
    rows = {}
    rng = np.random.default_rng(0)
    tr_clusters = np.asarray(train.obs["cluster_id"].astype(str))
    pick = np.array([rng.choice(np.flatnonzero(tr_clusters == k)) for k in clusters])
    others = rng.choice(np.setdiff1d(np.arange(train.n_obs), pick), 3000, replace=False)
    px = np.asarray(train[others].X.todense() if hasattr(train.X, "todense") else train[others].X, np.float64)
    pca = PCA(20, random_state=0).fit(lognorm(px, px.sum(1)))
    ref = train[pick]
    ref_x = np.asarray(ref.X.todense() if hasattr(ref.X, "todense") else ref.X, np.float64)
    rows["real"] = {"realism": realism(real, ref_x, lib_test, ref_x.sum(1), pca, clusters)}
    for name, f in variants.items():
        row = {}
        for batch in (1, 1000):
            row[f"speed_b{batch}"] = speed(f, test, batch, args.repeats if batch > 1 else 3 * args.repeats)
        pred = f.predict(test.obs, n_samples=1, library_size=lib_test, seed=1)
        fake = pred["counts"].values[0].astype(np.float64)
        row["realism"] = realism(real, fake, lib_test, lib_test, pca, clusters)
        row["pit_cov90"] = pit90(f, test)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        result = {"machine": machine(), "args": vars(args), "fit_vae_and_diffusion_s": t_fit, "fit_flow_s": t_flow,
                  "best_epoch": fit_d.history.best_epoch, "rows": rows}
        with open(args.out, "w") as fh:  # after every row, so a partial run keeps what it measured
            json.dump(result, fh, indent=1)
    print("\n| prior / sampler | profiles/s b=1 | ms/profile b=1000 | NFE | energy PCA20 | AUC | KS gene mean | "
          "KS gene zero frac | KS cell zero frac | PIT cov 90% |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        m = r["realism"]
        sp = (f"{r['speed_b1']['profiles_per_s']:.1f} | {r['speed_b1000']['ms_per_profile']:.3f} | "
              f"{r['speed_b1000']['nfe']}") if "speed_b1" in r else "- | - | -"
        print(f"| {name} | {sp} | {m['energy_pca20']:.3f} | {m['auc']:.3f} | {m['ks_gene_mean']:.3f} | "
              f"{m['ks_gene_zero_frac']:.3f} | {m['ks_cell_zero_frac']:.3f} | {r.get('pit_cov90', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
