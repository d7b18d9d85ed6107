"""Roofline of one SVI step of the cVAE on kang_ctrl5 (n_latent 10, one hidden layer of 128, batch 128):
floating-point operations per step (XLA's cost analysis of the compiled step), the machine's measured
float32 matmul rate in JAX on the same cores, the share of it a step reaches, and where the time goes.

Usage: python benchmarks/roofline.py [--likelihood nb|zinb] [--out benchmarks/results/roofline_nb.json]
Run on a quiet machine (nothing else using the cores): every number is a wall-clock median.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine  # noqa: E402

import probgex as pg  # noqa: E402
from probgex.data import from_anndata  # noqa: E402
from probgex.inference.minibatch import Minibatches, make_batch  # noqa: E402
from probgex.inference.svi import TrainConfig, _to_device, epoch_blocks, make_epoch, make_svi  # noqa: E402
from probgex.models.distributions import count_distribution  # noqa: E402
from probgex.models.story import Dims, build_story  # noqa: E402


def median_time(fn, reps: int = 20) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--likelihood", default="nb")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or RESULTS / f"roofline_{args.likelihood}.json"

    # 1. machine: float32 matmul rate (4096 x 4096, 2 n^3 flops)
    n = 4096
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    t_mm = median_time(lambda: mm(a), reps=5)
    peak = 2 * n**3 / t_mm

    # 2. the step
    adata = load("kang_ctrl5")
    spec = pg.ModelSpec.create("~ cluster_id", args.likelihood, 10, encoder=(128,), decoder=(128,))
    data = from_anndata(adata, spec.formula, likelihood=spec.likelihood, empty="keep")
    idx = np.arange(data.n_obs)
    lib = np.log(data.library_size)
    dims = Dims(data.n_design, data.n_genes, 1, 0, float(lib.mean()), float(lib.std()), 0)
    story = build_story(spec, dims, np.zeros(data.n_genes, np.float32))
    svi = make_svi(story, TrainConfig(learning_rate=1e-3))
    batches = Minibatches(data, idx, 128, shuffle=True, rng=np.random.default_rng(0))
    batch = next(iter(batches))
    state = svi.init(jax.random.PRNGKey(0), batch)
    update = jax.jit(svi.update)
    step_flops = flops_of(update, state, batch)
    t_step_device_batch = median_time(lambda: update(state, batch))

    # host path: a fresh batch densified from CSR and copied each step
    it = iter(batches)

    def host_step():
        nonlocal it
        try:
            b = next(it)
        except StopIteration:
            it = iter(batches)
            b = next(it)
        return update(state, b)

    t_step_host = median_time(host_step)
    t_batch = median_time(lambda: make_batch(data, np.arange(128), 128, 1.0).x)

    # scan path: one jitted call per epoch over device-resident data
    dev = _to_device(data, idx)
    run_epoch = make_epoch(svi)
    blocks = epoch_blocks(np.random.default_rng(0).permutation(len(idx)), 128)
    steps = blocks[0].shape[0]
    st = [jax.tree.map(jnp.copy, svi.init(jax.random.PRNGKey(0), batch))]  # donated: own buffers

    def epoch():
        st[0], losses = run_epoch(st[0], dev, *blocks)
        return losses

    t_epoch_scan = median_time(epoch, reps=5)

    # 3. pieces: likelihood value+grad, networks forward+backward, optimizer
    params = svi.get_params(state)
    nets = story._nets(params)
    x = batch.x
    mu = jnp.exp(batch.log_lib[:, None]) * jax.nn.softmax(nets["decoder"](jnp.concatenate(
        [jnp.zeros((128, 10)), batch.design], -1))[0], -1)
    theta = jnp.exp(params.get("log_theta", jnp.zeros((1, data.n_genes))))[0]
    gate = jnp.zeros_like(mu) if args.likelihood == "zinb" else None
    lik = jax.jit(jax.value_and_grad(lambda m, t: count_distribution(args.likelihood, m, t, gate).log_prob(x).sum(),
                                     argnums=(0, 1)))
    t_lik = median_time(lambda: lik(mu, theta))

    def net_loss(p):
        enc = story._nets(p)["encoder"]
        dec = story._nets(p)["decoder"]
        h = enc(jnp.concatenate([jnp.log1p(x), batch.design], -1))
        return dec(jnp.concatenate([h[0], batch.design], -1))[0].sum()

    nets_grad = jax.jit(jax.grad(net_loss))
    t_nets = median_time(lambda: nets_grad(params))
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    ostate = opt.init(params)
    upd = jax.jit(lambda g, s, p: optax.apply_updates(p, opt.update(g, s, p)[0]))
    t_opt = median_time(lambda: upd(params, ostate, params))

    res = {
        "machine": machine(), "likelihood": args.likelihood,
        "matmul_4096_f32_seconds": t_mm, "matmul_gflops": peak / 1e9,
        "step_gflop": step_flops / 1e9,
        "step_seconds_same_batch": t_step_device_batch,
        "step_seconds_host_batches": t_step_host,
        "batch_densify_copy_seconds": t_batch,
        "epoch_seconds_scan": t_epoch_scan, "steps_per_epoch": steps,
        "step_seconds_scan": t_epoch_scan / steps,
        "share_of_matmul_rate_host_path": step_flops / t_step_host / peak,
        "share_of_matmul_rate_scan_path": step_flops / (t_epoch_scan / steps) / peak,
        "likelihood_value_grad_seconds": t_lik, "networks_fwd_bwd_seconds": t_nets,
        "optimizer_update_seconds": t_opt,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        if k != "machine":
            print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")


if __name__ == "__main__":
    main()
