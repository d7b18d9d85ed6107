"""Roofline of one SVI step of the cVAE on kang_ctrl5 (n_latent 10, one hidden layer of 128, batch 128):
floating-point operations per step (XLA's cost analysis of the compiled step), the machine's measured
float32 matmul rate in JAX on the same cores, the share of it a step reaches, and where the time goes.

Usage: python benchmarks/roofline.py [--likelihood nb|zinb] [--out benchmarks/results/roofline_nb.json]
Run on a quiet machine (nothing else using the cores): every number is a wall-clock median.

The step, the scan epoch and the likelihood piece are measured twice, interleaved in one process:
"dense" (the NB / ZINB lgamma terms on all B x G entries, the objective before the count split) and
"split" (those terms only over the entries >= 2, the fit's default since the count split).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine, median_time  # noqa: E402

import probgex as pg  # noqa: E402
from probgex.data import from_anndata  # noqa: E402
from probgex.inference.minibatch import Minibatches, high_typical, make_batch  # noqa: E402
from probgex.inference.svi import (TrainConfig, _to_device, device_high, epoch_blocks, make_epoch,  # noqa: E402
                                   make_svi)
from _common import count_distribution  # noqa: E402
from probgex.models.distributions import count_term_sum  # noqa: E402
from probgex.models.story import Dims, build_story  # noqa: E402


def _interleaved(fns: dict, reps: int = 20, rounds: int = 3) -> dict:
    """Medians of each variant's timings, the variants alternating in `rounds` rounds (shared machine)."""
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            jax.block_until_ready(fns[k]())
            for _ in range(max(1, reps // rounds)):
                t = time.perf_counter()
                jax.block_until_ready(fns[k]())
                times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


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
    batches = Minibatches(data, idx, 128, shuffle=True, rng=np.random.default_rng(0), high=True)
    typical = high_typical(batches.n_high, 128)
    batches.high_size = typical  # the length the fit uses for (nearly) every batch
    batch = next(iter(batches))
    dense_batch = batch._replace(high=None)
    state = svi.init(jax.random.PRNGKey(0), batch)
    update = jax.jit(svi.update)
    variants = {"dense": dense_batch, "split": batch}
    step_flops = {k: flops_of(update, state, b) for k, b in variants.items()}
    t_step_same = _interleaved({k: (lambda b=b: update(state, b)) for k, b in variants.items()})

    # host path: a fresh batch densified from CSR (and its list of entries >= 2) copied each step
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
    t_batch_list = median_time(lambda: make_batch(data, np.arange(128), 128, 1.0, high_size=typical).high)

    # scan path: one jitted call per epoch over device-resident data
    devs = {"dense": _to_device(data, idx), "split": _to_device(data, idx, high=True)}
    run_epoch = {"dense": make_epoch(svi), "split": make_epoch(svi, typical)}
    blocks = epoch_blocks(np.random.default_rng(0).permutation(len(idx)), 128)
    steps = blocks[0].shape[0]
    st = {k: jax.tree.map(jnp.copy, svi.init(jax.random.PRNGKey(0), batch)) for k in variants}  # donated

    def epoch(k):
        st[k], losses = run_epoch[k](st[k], devs[k], *blocks)
        return losses

    t_epoch_scan = _interleaved({k: (lambda k=k: epoch(k)) for k in variants}, reps=5)
    build_list = jax.jit(lambda i, m: device_high(devs["split"], i, m, typical))
    i0, m0 = jnp.asarray(blocks[0][0]), jnp.asarray(blocks[1][0])
    t_list = median_time(lambda: build_list(i0, m0))

    # 3. pieces: likelihood value+grad, networks forward+backward, optimizer
    params = svi.get_params(state)
    nets = story._nets(params)
    x = batch.x
    outs = nets["decoder"](jnp.concatenate([jnp.zeros((128, 10)), batch.design], -1))
    log_mu = batch.log_lib[:, None] + jax.nn.log_softmax(outs[0], -1)
    log_theta = params.get("log_theta", jnp.zeros((1, data.n_genes)))
    gate = outs[1] if args.likelihood == "zinb" else None

    def lik_dense(lm, lt):
        return count_distribution(args.likelihood, jnp.exp(lm), jnp.exp(lt[0]), gate, normalized=False,
                                  log_mu=lm).log_prob(x).sum()

    def lik_split(lm, lt):
        rest = count_distribution(args.likelihood, jnp.exp(lm), jnp.exp(lt[0]), gate, normalized=False,
                                  log_mu=lm, count_term=False).log_prob(x).sum()
        return rest + count_term_sum(batch.high, lt, batch.group, 128).sum()

    liks = {"dense": jax.jit(jax.value_and_grad(lik_dense, argnums=(0, 1))),
            "split": jax.jit(jax.value_and_grad(lik_split, argnums=(0, 1)))}
    t_lik = _interleaved({k: (lambda f=f: f(log_mu, log_theta)) for k, f in liks.items()})

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
        "machine": machine(), "load_average": os.getloadavg(), "likelihood": args.likelihood,
        "matmul_4096_f32_seconds": t_mm, "matmul_gflops": peak / 1e9,
        "high_list_size": typical, "dense_entries": int(x.size),
        "steps_per_epoch": steps, "step_seconds_host_batches_split": t_step_host,
        "batch_densify_copy_seconds": t_batch, "batch_densify_copy_and_list_seconds": t_batch_list,
        "device_list_build_seconds": t_list,
        "networks_fwd_bwd_seconds": t_nets, "optimizer_update_seconds": t_opt,
    }
    for k in variants:
        res |= {f"step_gflop_{k}": step_flops[k] / 1e9, f"step_seconds_same_batch_{k}": t_step_same[k],
                f"epoch_seconds_scan_{k}": t_epoch_scan[k], f"step_seconds_scan_{k}": t_epoch_scan[k] / steps,
                f"share_of_matmul_rate_scan_path_{k}": step_flops[k] / (t_epoch_scan[k] / steps) / peak,
                f"likelihood_value_grad_seconds_{k}": t_lik[k]}
    res["share_of_matmul_rate_host_path_split"] = step_flops["split"] / t_step_host / peak
    res["scan_step_ratio_split_over_dense"] = t_epoch_scan["split"] / t_epoch_scan["dense"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        if k != "machine":
            print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")


if __name__ == "__main__":
    main()
