"""A/B of the cVAE training step with and without the count split (issue 3): the NB / ZINB log-pmf's
lgamma terms r(x, theta) = lgamma(x + theta) - lgamma(theta) - x log theta summed over the entries
x >= 2 only (a padded list of static length M per minibatch, built on the device inside the epoch's
`lax.scan`) instead of densely over all B x G entries. Both variants run in one process, interleaved,
on the same device-resident kang_ctrl5 data, same permutations, same starting state.

Usage: python benchmarks/count_split.py [--likelihood nb|zinb] [--reps 7] [--out ...json]
Prints per-step medians (epoch wall time / steps) of each variant and the ratio new / old, and the
likelihood's value + gradient alone (dense vs split) on one batch.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine, median_time  # noqa: E402

import probgex as pg  # noqa: E402
from probgex.data import from_anndata  # noqa: E402
from probgex.inference.minibatch import high_bound, high_per_row, high_typical, make_batch  # noqa: E402
from probgex.inference.svi import TrainConfig, _to_device, epoch_blocks, make_epoch, make_svi  # noqa: E402
from _common import count_distribution  # noqa: E402
from probgex.models.distributions import count_term_sum  # noqa: E402
from probgex.models.story import Dims, build_story  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--likelihood", default="nb")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or RESULTS / f"count_split_{args.likelihood}.json"

    adata = load("kang_ctrl5")
    spec = pg.ModelSpec.create("~ cluster_id", args.likelihood, 10, encoder=(128,), decoder=(128,))
    data = from_anndata(adata, spec.formula, likelihood=spec.likelihood, empty="keep")
    idx = np.arange(data.n_obs)
    lib = np.log(data.library_size)
    story = build_story(spec, Dims(data.n_design, data.n_genes, 1, 0, float(lib.mean()), float(lib.std()), 0),
                        np.zeros(data.n_genes, np.float32))
    svi = make_svi(story, TrainConfig(learning_rate=1e-3))
    n_high = high_per_row(data, idx)
    size, typical = high_bound(n_high, 128), high_typical(n_high, 128)
    batch = make_batch(data, np.arange(128), 128, 1.0)
    dev_old, dev_new = _to_device(data, idx), _to_device(data, idx, high=True)
    runs = {"old": (make_epoch(svi), dev_old), "new": (make_epoch(svi, typical), dev_new),
            "new_exact_bound": (make_epoch(svi, size), dev_new)}
    init = svi.init(jax.random.PRNGKey(0), batch)
    states = {k: jax.tree.map(jnp.copy, init) for k in runs}
    rng = np.random.default_rng(0)
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}  # process CPU time (all threads): less sensitive to a shared machine
    print(f"list length: typical {typical}, exact bound {size}, dense {128 * data.n_genes}", flush=True)
    losses = {k: [] for k in runs}
    for rep in range(args.reps + 1):  # rep 0 compiles
        blocks = epoch_blocks(rng.permutation(len(idx)), 128)
        assert np.where(blocks[1], n_high[blocks[0]], 0).sum(1).max() <= typical  # else the fit uses `size`
        for k in np.roll(list(runs), rep):
            run, dev = runs[k]
            t, c = time.perf_counter(), time.process_time()
            states[k], loss = run(states[k], dev, *blocks)
            loss = jax.block_until_ready(loss)
            if rep:
                times[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
            losses[k].append(float(jnp.mean(loss)) / len(idx))
    steps = blocks[0].shape[0]

    # the likelihood alone, value + gradient w.r.t. (mu, log mu, log theta), one batch
    params = svi.get_params(states["old"])
    nets = story._nets(params)
    x = batch.x
    logits = nets["decoder"](jnp.concatenate([jnp.zeros((128, 10)), batch.design], -1))
    log_mu = batch.log_lib[:, None] + jax.nn.log_softmax(logits[0], -1)
    gate = logits[1] if args.likelihood == "zinb" else None
    log_theta = params["log_theta"]
    hb = make_batch(data, np.arange(128), 128, 1.0, high_size=typical).high

    def dense(lm, lt):
        return count_distribution(args.likelihood, jnp.exp(lm), jnp.exp(lt[0]), gate, normalized=False,
                                  log_mu=lm).log_prob(x).sum()

    def split(lm, lt):
        rest = count_distribution(args.likelihood, jnp.exp(lm), jnp.exp(lt[0]), gate, normalized=False,
                                  log_mu=lm, count_term=False).log_prob(x).sum()
        return rest + count_term_sum(hb, lt, batch.group, 128).sum()

    f_dense = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))
    f_split = jax.jit(jax.value_and_grad(split, argnums=(0, 1)))
    lik = {"old": [], "new": []}
    for rep in range(args.reps):
        for k, f in ((("old", f_dense), ("new", f_split)) if rep % 2 == 0 else (("new", f_split), ("old", f_dense))):
            lik[k].append(median_time(lambda f=f: f(log_mu, log_theta), reps=10))

    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {
        "machine": machine(), "load_average": os.getloadavg(), "likelihood": args.likelihood,
        "steps_per_epoch": steps, "high_list_size_exact_bound": size, "high_list_size_typical": typical,
        "dense_entries": 128 * data.n_genes,
        "epoch_seconds": times, "step_ms_median": {k: 1e3 * v / steps for k, v in med.items()},
        "step_ratio_new_over_old": med["new"] / med["old"],
        "epoch_cpu_seconds": cpu, "step_cpu_ms_median": {k: 1e3 * float(np.median(v)) / steps for k, v in cpu.items()},
        "cpu_ratio_new_over_old": float(np.median(cpu["new"]) / np.median(cpu["old"])),
        "step_ratio_new_exact_bound_over_old": med["new_exact_bound"] / med["old"],
        "train_loss_per_epoch": losses,
        "likelihood_value_grad_ms_median": {k: 1e3 * float(np.median(v)) for k, v in lik.items()},
        "likelihood_ratio_new_over_old": float(np.median(lik["new"]) / np.median(lik["old"])),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        if k not in ("machine", "epoch_seconds", "epoch_cpu_seconds", "train_loss_per_epoch"):
            print(f"{k:34s} {v}")
    for k, v in losses.items():
        print(f"train loss per epoch {k:16s}", np.round(v, 2))


if __name__ == "__main__":
    main()
