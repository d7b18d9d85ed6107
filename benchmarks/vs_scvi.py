"""probgex's cVAE against scvi-tools' SCVI: same data, same split, same architecture, same CPU.

One invocation fits probgex (in this venv) and then scvi-tools (in benchmarks/.peer-venv, made by
benchmarks/peer_env.sh, through benchmarks/_scvi_run.py) on the same AnnData and the same held-out cells
(the list is written to benchmarks/results/vs_scvi_<dataset>_heldout.txt and passed to both).

  .venv/bin/python benchmarks/vs_scvi.py --dataset kang_ctrl5 --likelihood nb --epochs 30
  .venv/bin/python benchmarks/vs_scvi.py --dataset kang_harmony --n-cells 20000 --likelihood zinb --epochs 30

Datasets
  kang_ctrl5    8,684 cells x 2,511 genes, held-out = shared/data/splits/kang_ctrl5_heldout.txt (868),
                probgex formula `~ cluster_id`.
  kang_harmony  2,000 real cells x 9,015 genes, restricted to its 2,000 most variable genes (variance of
                log1p(counts / library * 1e4)) and resampled with replacement (seed 0) to --n-cells cells,
                counts kept. No leakage: 10% of the ORIGINAL cells are held out first, and the resampled
                held-out set (10% of --n-cells) is drawn only from them, the training set only from the
                others. Formula `~ condition`.

Architecture (both sides): latent dim 10, one hidden layer of 128 in encoder and decoder, NB or ZINB with
per-gene dispersion, observed library size, batch 128, Adam lr 1e-3, exactly E epochs (no early stopping,
no internal validation split: probgex holdout=0.0; scvi train_size=1.0). Known differences that remain:
probgex's prior is conditional, p(z | c) = N(m(c), s(c)) (a linear map of the design), and its encoder and
decoder see the design; plain SCVI has a N(0, I) prior and no covariates (`--scvi-batch-key` gives it the
covariate one-hot in encoder and decoder). scvi adds batch norm (encoder and decoder) and dropout 0.1
(encoder), Adam eps 0.01 and weight decay 1e-6; probgex clips the gradient norm at 10. scvi's KL warm-up
(400 epochs by default) is switched off unless --scvi-kl-warmup default.

Timing (wall clock, 2 threads each side)
  probgex: T1 = wall time of a fit with max_epochs=1 and TE = that of max_epochs=E, each in a fresh
           process (nothing compiled is shared); steady-state s/epoch = (TE - T1) / (E - 1); T1 = data
           preparation + tracing/XLA compilation + 1 epoch ("compile + first epoch").
  scvi:    per-epoch wall times from a Lightning callback; epoch 1 is the warm-up, steady state = mean of
           epochs 2..E.
  Before each timed run the script waits (up to --quiet-wait s) for other heavy processes to finish and
  records whether the machine was quiet.

Held-out metrics, per cell (nats; recon NLL lower is better, ELBO and marginal LL higher is better)
  recon NLL   scvi: get_reconstruction_error = -log p(x | z), one z ~ q(z | x) per cell.
              probgex: the same, averaged over --elbo-draws draws ("recon_nll_per_cell"), and also at the
              encoder mean z = E q(z | x) ("recon_nll_at_mean_per_cell").
  ELBO        scvi: get_elbo (analytic KL). probgex: E_q[log p(x|z) + log p(z|c) - log q(z|x)], Monte
              Carlo over --elbo-draws draws.
  marginal LL log p(x | c) by importance sampling with the encoder as proposal, --mc-samples draws
              (probgex: Fit.log_predictive_density; scvi: get_marginal_ll).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = Path(os.environ.get("PROBGEX_DATA", HERE.parents[1] / "shared" / "data"))
PEER_PY = HERE / ".peer-venv" / "bin" / "python"
THREADS = 2


# ----------------------------------------------------------------------------- data
def dataset(name: str, n_cells: int, seed: int = 0):
    """(h5ad path, held-out names file, probgex formula, scvi batch key, label) of a benchmark dataset."""
    import anndata as ad
    RESULTS.mkdir(parents=True, exist_ok=True)
    if name == "kang_ctrl5":
        names = (DATA / "splits" / "kang_ctrl5_heldout.txt").read_text().split()
        held = RESULTS / "vs_scvi_kang_ctrl5_heldout.txt"
        held.write_text("\n".join(names) + "\n")
        return DATA / "kang_ctrl5.h5ad", held, "~ cluster_id", "cluster_id", "kang_ctrl5"
    if name != "kang_harmony":
        raise SystemExit(f"unknown dataset {name!r}")
    label = f"kang_harmony{n_cells // 1000}k"
    path = Path(tempfile.gettempdir()) / f"vs_scvi_{label}_seed{seed}.h5ad"
    held = RESULTS / f"vs_scvi_{label}_heldout.txt"
    if not (path.exists() and held.exists()):
        import scipy.sparse as sp
        a = ad.read_h5ad(DATA / "kang_harmony.h5ad")
        X = sp.csr_matrix(a.X).astype(np.float64)
        lib = np.asarray(X.sum(1)).ravel()
        norm = sp.diags(1e4 / lib) @ X
        norm.data = np.log1p(norm.data)
        mean = np.asarray(norm.mean(0)).ravel()
        var = np.asarray(norm.multiply(norm).mean(0)).ravel() - mean**2
        genes = np.sort(np.argsort(-var, kind="stable")[:2000])
        a = a[:, genes].copy()
        a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
        rng = np.random.default_rng(seed)
        n0 = a.n_obs
        held0 = np.zeros(n0, bool)
        held0[rng.choice(n0, int(round(0.1 * n0)), replace=False)] = True
        n_held = int(round(0.1 * n_cells))
        pick = np.concatenate([rng.choice(np.flatnonzero(~held0), n_cells - n_held, replace=True),
                               rng.choice(np.flatnonzero(held0), n_held, replace=True)])
        pick = pick[rng.permutation(n_cells)]
        b = a[pick].copy()
        b.obs_names = [f"{o}#{i}" for i, o in enumerate(a.obs_names[pick])]
        b.X = sp.csr_matrix(b.X).astype(np.int32)
        is_held = held0[pick]
        train_tot = np.asarray(b.X[~is_held].sum(0)).ravel()
        b = b[:, train_tot > 0].copy()  # genes seen in training (both tools then get the same genes)
        b.uns = {"source": f"kang_harmony resampled: 2000 HVGs, {n_cells} cells, seed {seed}"}
        b.write_h5ad(path)
        held.write_text("\n".join(b.obs_names[is_held]) + "\n")
    return path, held, "~ condition", "condition", label


def split(path: Path, held: Path):
    import anndata as ad
    a = ad.read_h5ad(path)
    names = set(held.read_text().split())
    mask = a.obs_names.isin(list(names))
    assert mask.sum() == len(names)
    return a[~mask].copy(), a[mask].copy()


# ----------------------------------------------------------------------------- machine hygiene
def busy_processes(threshold: float = 30.0) -> list[str]:
    """Other processes using more than `threshold` % CPU (ps), excluding this process tree."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                         text=True).stdout.splitlines()[1:]
    mine = {os.getpid(), os.getppid()}
    busy = []
    for line in out[:15]:
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        pid, ppid, pcpu, args = int(parts[0]), int(parts[1]), float(parts[2]), parts[3]
        if pid in mine or ppid in mine or "ps -eo" in args:
            continue
        if pcpu > threshold:
            busy.append(f"{pid} {pcpu:.0f}% {args[:100]}")
    return busy


def wait_quiet(max_wait: float, poll: float = 30.0) -> dict:
    """Wait until no other heavy process runs (at most `max_wait` s). ps's %CPU is a lifetime average,
    so a process counts as busy only if its CPU time grows during a 2 s probe."""
    t0 = time.time()
    while True:
        busy = _busy_now()
        if not busy or time.time() - t0 >= max_wait:
            return {"quiet": not busy, "waited_s": round(time.time() - t0, 1), "busy": busy}
        print(f"[vs_scvi] machine busy ({len(busy)}: {busy[0]}); waiting", file=sys.stderr, flush=True)
        time.sleep(poll)


def _cpu_times() -> dict[int, tuple[float, str]]:
    res = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            st = (d / "stat").read_text()
            fields = st[st.rindex(")") + 2:].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            res[int(d.name)] = ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), cmd)
        except (OSError, ValueError, IndexError):
            continue
    return res


def _busy_now(probe: float = 2.0, frac: float = 0.3) -> list[str]:
    mine = {os.getpid(), os.getppid()}
    a = _cpu_times()
    time.sleep(probe)
    b = _cpu_times()
    return [f"{pid} {100 * (b[pid][0] - a[pid][0]) / probe:.0f}% {b[pid][1]}" for pid in b
            if pid in a and pid not in mine and (b[pid][0] - a[pid][0]) / probe > frac]


# ----------------------------------------------------------------------------- probgex side
def probgex_model(formula: str, likelihood: str):
    import probgex as pg
    return pg.Model(formula, likelihood=likelihood, latent=pg.latent.Gaussian(dim=10), encoder=(128,),
                    decoder=(128,))


def heldout_scores(fit, test, *, draws: int, mc_samples: int, seed: int) -> dict:
    """Held-out recon NLL (one z per draw, and at the encoder mean), ELBO and marginal LL per cell."""
    import jax
    import jax.numpy as jnp
    from probgex.fit import BLOCK
    from probgex.inference.minibatch import make_batch
    from _common import count_distribution

    story = fit.story
    kind = fit.spec.likelihood

    def block(params, key, batch):
        nets = story._nets(params)
        q_z, _ = story._encode(nets["encoder"], batch)
        base = q_z.base_dist
        log_theta = None if kind == "poisson" else params["log_theta"]

        def loglik(z):
            mu, theta, gate, log_mu = story._likelihood(nets["decoder"], z, batch.log_lib, batch.design,
                                                        batch.group, log_theta)
            return count_distribution(kind, mu, theta, gate, log_mu=log_mu).log_prob(batch.x).sum(-1)

        prior = story._prior_dist(nets["prior"], batch.design)
        eps = jax.random.normal(key, (draws, *base.loc.shape), base.loc.dtype)
        z = base.loc[None] + base.scale[None] * eps  # (draws, B, D)
        ll = jax.vmap(loglik)(z)  # (draws, B)
        elbo = ll + prior.log_prob(z) - q_z.log_prob(z)
        return -ll.mean(0), -loglik(base.loc), elbo.mean(0)

    if story.latent_library:
        raise NotImplementedError("these scores assume the observed library size")
    f = jax.jit(block)
    data = fit.data(test)
    key = jax.random.PRNGKey(seed + 7)
    n = data.n_obs
    nll, nll_mean, elbo = np.empty(n), np.empty(n), np.empty(n)
    for i, start in enumerate(range(0, n, BLOCK)):
        rows = np.arange(start, min(start + BLOCK, n))
        b = make_batch(data, rows, BLOCK, 1.0)
        out = f(fit.params, jax.random.fold_in(key, i), b)
        m = len(rows)
        nll[rows], nll_mean[rows], elbo[rows] = (np.asarray(o)[:m] for o in out)
    t0 = time.perf_counter()
    mll = fit.log_predictive_density(data, n_samples=mc_samples, seed=seed)
    t_mll = time.perf_counter() - t0
    del jnp
    return {"recon_nll_per_cell": float(nll.mean()), "recon_nll_at_mean_per_cell": float(nll_mean.mean()),
            "elbo_per_cell": float(elbo.mean()), "marginal_ll_per_cell": float(mll.mean()),
            "elbo_draws": draws, "mc_samples": mc_samples, "marginal_ll_seconds": t_mll}


def probgex_child(a) -> dict:
    """One fit in this (fresh) process; with --score, held-out scores afterwards (outside the timing)."""
    train, test = split(Path(a.h5ad), Path(a.heldout))
    m = probgex_model(a.formula, a.likelihood)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = m.fit(train, seed=a.seed, max_epochs=a.epochs, patience=a.epochs, batch_size=128, learning_rate=1e-3,
                holdout=0.0, progress=False)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    out = {"fit_seconds": t, "fit_cpu_seconds": c, "epochs_run": len(fit.history.train),
           "train_loss_per_obs": [float(v) for v in fit.history.train], "n_train": int(train.n_obs),
           "n_heldout": int(test.n_obs), "n_genes": int(train.n_vars)}
    if a.score:
        out["n_params"] = int(sum(np.asarray(v).size for v in _leaves(fit.params)))
        out["heldout"] = heldout_scores(fit, test, draws=a.elbo_draws, mc_samples=a.mc_samples, seed=a.seed)
    return out


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def run_probgex(path, held, formula, likelihood, epochs, seed, draws, mc, quiet_wait, label) -> dict:
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""), OMP_NUM_THREADS=str(THREADS))
    base = [sys.executable, __file__, "--_child", "--h5ad", str(path), "--heldout", str(held), "--formula",
            formula, "--likelihood", likelihood, "--seed", str(seed), "--elbo-draws", str(draws),
            "--mc-samples", str(mc)]
    res = {}
    for e, score in ((1, False), (epochs, True)):
        q = wait_quiet(quiet_wait)
        print(f"[vs_scvi] {label} probgex {likelihood} max_epochs={e} (quiet={q['quiet']})", file=sys.stderr,
              flush=True)
        cmd = base + ["--epochs", str(e)] + (["--score"] if score else [])
        r = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        res[e] = json.loads(r.stdout.strip().splitlines()[-1])
        res[e]["machine_state"] = q
    t1, te = res[1]["fit_seconds"], res[epochs]["fit_seconds"]
    c1, ce = res[1]["fit_cpu_seconds"], res[epochs]["fit_cpu_seconds"]
    per = (te - t1) / (epochs - 1)
    return {"tool": "probgex", "fit_1_epoch_seconds": t1, "fit_E_epochs_seconds": te,
            "seconds_per_epoch": per, "cpu_seconds_per_epoch": (ce - c1) / (epochs - 1),
            "compile_and_first_epoch_seconds": t1, "compile_and_setup_seconds": t1 - per,
            "machine_state": [res[1]["machine_state"], res[epochs]["machine_state"]],
            **{k: v for k, v in res[epochs].items() if k not in ("fit_seconds", "fit_cpu_seconds", "machine_state")},
            "versions": _versions()}


def _versions() -> dict:
    import importlib.metadata as md
    return {p: md.version(p) for p in ("probgex", "jax", "jaxlib", "numpyro", "flax")} | {
        "python": platform.python_version()}


def run_scvi(path, held, likelihood, epochs, seed, mc, batch_key, kl_warmup, quiet_wait, label, out) -> dict:
    if not PEER_PY.exists():
        raise SystemExit(f"{PEER_PY} is missing: run bash benchmarks/peer_env.sh first")
    q = wait_quiet(quiet_wait)
    print(f"[vs_scvi] {label} scvi {likelihood} batch_key={batch_key} (quiet={q['quiet']})", file=sys.stderr,
          flush=True)
    cmd = [str(PEER_PY), str(HERE / "_scvi_run.py"), "--h5ad", str(path), "--heldout", str(held), "--likelihood",
           likelihood, "--epochs", str(epochs), "--seed", str(seed), "--mc-samples", str(mc), "--kl-warmup",
           kl_warmup, "--out", str(out)]
    if batch_key:
        cmd += ["--batch-key", batch_key]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    r = json.loads(Path(out).read_text())
    r["machine_state"] = q
    return r


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("kang_ctrl5", "kang_harmony"), default="kang_ctrl5")
    p.add_argument("--n-cells", type=int, default=20000, help="kang_harmony: resampled size")
    p.add_argument("--likelihood", choices=("nb", "zinb"), default="nb")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mc-samples", type=int, default=200)
    p.add_argument("--elbo-draws", type=int, default=10)
    p.add_argument("--scvi-batch-key", action="store_true", help="also give scvi the covariate as batch_key")
    p.add_argument("--scvi-kl-warmup", choices=("none", "default"), default="none")
    p.add_argument("--skip", choices=("none", "probgex", "scvi"), default="none")
    p.add_argument("--quiet-wait", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=None)
    # child-process arguments
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--h5ad", help=argparse.SUPPRESS)
    p.add_argument("--heldout", help=argparse.SUPPRESS)
    p.add_argument("--formula", help=argparse.SUPPRESS)
    p.add_argument("--score", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--table", action="store_true", help="print the table of all saved results and exit")
    a = p.parse_args(argv)
    if a.table:
        table_main()
        return
    if a._child:
        print(json.dumps(probgex_child(a)))
        return
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (probgex's s/epoch is a difference with a 1-epoch fit)")
    path, held, formula, key, label = dataset(a.dataset, a.n_cells, a.seed)
    tag = f"{label}_{a.likelihood}_e{a.epochs}" + ("_bk" if a.scvi_batch_key else "") + (
        "_klwarmup" if a.scvi_kl_warmup == "default" else "")
    out = a.out or RESULTS / f"vs_scvi_{tag}.json"
    row = {"dataset": label, "likelihood": a.likelihood, "epochs": a.epochs, "probgex_formula": formula,
           "scvi_batch_key": key if a.scvi_batch_key else None, "scvi_kl_warmup": a.scvi_kl_warmup,
           "heldout_file": str(held.relative_to(HERE.parent)), "threads": THREADS,
           "cpu_count": os.cpu_count(), "platform": platform.platform(), "seed": a.seed}
    if out.exists():  # keep the side not rerun
        old = json.loads(out.read_text())
        row.update({k: old[k] for k in ("probgex", "scvi") if k in old})
    if a.skip != "probgex":
        row["probgex"] = run_probgex(path, held, formula, a.likelihood, a.epochs, a.seed, a.elbo_draws,
                                     a.mc_samples, a.quiet_wait, label)
        out.write_text(json.dumps(row, indent=1))
    if a.skip != "scvi":
        row["scvi"] = run_scvi(path, held, a.likelihood, a.epochs, a.seed, a.mc_samples,
                               key if a.scvi_batch_key else None, a.scvi_kl_warmup, a.quiet_wait, label,
                               out.with_name(out.stem + "_scvi_raw.json"))
    out.write_text(json.dumps(row, indent=1))
    print_table([row])


def print_table(rows):
    print("| dataset | lik | epochs | probgex s/ep | scvi s/ep | scvi/probgex | probgex CPU s/ep | scvi CPU s/ep "
          "| probgex compile+1st ep s | scvi 1st ep s | recon NLL pg / scvi | ELBO pg / scvi | marginal LL pg / scvi "
          "| quiet pg / scvi |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pg, sc = r.get("probgex"), r.get("scvi")
        f = lambda d, k, fmt="{:.2f}": fmt.format(d[k]) if d and d.get(k) is not None else "-"  # noqa: E731
        h = lambda d, k: f"{d['heldout'][k]:.1f}" if d else "-"  # noqa: E731
        ratio = f"{sc['seconds_per_epoch'] / pg['seconds_per_epoch']:.2f}" if pg and sc else "-"
        q_pg = all(m["quiet"] for m in pg["machine_state"]) if pg else "-"
        q_sc = sc["machine_state"]["quiet"] if sc else "-"
        bk = f" (scvi batch_key={r['scvi_batch_key']})" if r.get("scvi_batch_key") else ""
        print(f"| {r['dataset']}{bk} | {r['likelihood']} | {r['epochs']} | {f(pg, 'seconds_per_epoch')} "
              f"| {f(sc, 'seconds_per_epoch')} | {ratio} | {f(pg, 'cpu_seconds_per_epoch')} "
              f"| {f(sc, 'cpu_seconds_per_epoch')} | {f(pg, 'compile_and_first_epoch_seconds', '{:.1f}')} "
              f"| {f(sc, 'first_epoch_seconds', '{:.1f}')} | {h(pg, 'recon_nll_per_cell')} / {h(sc, 'recon_nll_per_cell')} "
              f"| {h(pg, 'elbo_per_cell')} / {h(sc, 'elbo_per_cell')} "
              f"| {h(pg, 'marginal_ll_per_cell')} / {h(sc, 'marginal_ll_per_cell')} | {q_pg} / {q_sc} |")


def table_main():
    """`python benchmarks/vs_scvi.py --table`: the table of every results/vs_scvi_*.json."""
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("vs_scvi_*.json"))
            if not p.stem.endswith("_scvi_raw")]
    print_table(rows)


if __name__ == "__main__":
    main()
