"""scvi-tools side of benchmarks/vs_scvi.py. Runs inside the peer venv (benchmarks/.peer-venv, made by
benchmarks/peer_env.sh), never in probgex's: it imports only scvi-tools, torch and anndata.

  .peer-venv/bin/python benchmarks/_scvi_run.py --h5ad DATA.h5ad --heldout HELDOUT.txt \
      --likelihood nb --epochs 30 --out RESULT.json [--batch-key cluster_id] [--kl-warmup default]

Model: SCVI(n_latent=10, n_hidden=128, n_layers=1, gene_likelihood=nb|zinb, dispersion="gene"),
otherwise scvi defaults (encoder dropout 0.1, batch norm in encoder and decoder, observed library size,
standard-normal prior). Without --batch-key the model has no covariates (plain SCVI); with it, the key is
one-hot into the decoder and (encode_covariates=True) the encoder, as probgex feeds its design to both.

Training: the AnnData passed to scvi holds only the training cells (all cells not in HELDOUT), with
train_size=1.0 so scvi's data splitter keeps no internal validation set; batch_size=128, Adam lr 1e-3
(scvi's own defaults for the rest: weight_decay 1e-6, eps 0.01), exactly --epochs epochs (no early
stopping), torch threads 2, data-loader workers 0. KL warm-up: scvi's default ramps the KL weight
linearly over 400 epochs (so over 30 epochs it never exceeds 0.075 and the objective is not the ELBO);
`--kl-warmup none` (the default here) trains the plain ELBO from the first step, like probgex;
`--kl-warmup default` keeps scvi's 400-epoch ramp.

Timing: wall time of each training epoch from a Lightning callback (on_train_epoch_start/end); epoch 1
is reported apart as warm-up, steady state = mean of epochs 2..E.

Held-out metrics (per cell, on HELDOUT, model in eval mode): reconstruction NLL = scvi's
get_reconstruction_error (-log p(x | z) with ONE z drawn from q(z | x), summed over genes); ELBO =
get_elbo (higher is better); marginal log-likelihood = get_marginal_ll (importance sampling with the
encoder as proposal, --mc-samples draws).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import _peer_threads  # noqa: E402  (the script's folder is on sys.path)

THREADS = _peer_threads.limit(2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--h5ad", required=True)
    p.add_argument("--heldout", required=True, help="text file, one held-out obs name per line")
    p.add_argument("--likelihood", choices=("nb", "zinb"), required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-key", default=None)
    p.add_argument("--kl-warmup", choices=("none", "default"), default="none")
    p.add_argument("--mc-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    import anndata as ad
    import numpy as np
    import torch
    import scvi
    from lightning.pytorch.callbacks import Callback

    _peer_threads.apply(THREADS)
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = a.seed

    adata = ad.read_h5ad(a.h5ad)
    names = [s.strip() for s in Path(a.heldout).read_text().split() if s.strip()]
    mask = adata.obs_names.isin(names)
    assert mask.sum() == len(set(names)), "some held-out names are not in the data"
    train, test = adata[~mask].copy(), adata[mask].copy()
    del adata

    scvi.model.SCVI.setup_anndata(train, batch_key=a.batch_key)
    model_kwargs = {}
    if a.batch_key is not None:
        model_kwargs["encode_covariates"] = True
    model = scvi.model.SCVI(train, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood=a.likelihood,
                            dispersion="gene", **model_kwargs)
    n_params = sum(t.numel() for t in model.module.parameters())

    class EpochTimer(Callback):
        def __init__(self):
            self.times, self.cpu, self.t0, self.c0 = [], [], None, None

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    timer = EpochTimer()
    plan_kwargs = {"lr": 1e-3}
    if a.kl_warmup == "none":
        plan_kwargs["n_epochs_kl_warmup"] = None
        plan_kwargs["n_steps_kl_warmup"] = None
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(max_epochs=a.epochs, batch_size=128, train_size=1.0, early_stopping=False,
                plan_kwargs=plan_kwargs, callbacks=[timer], enable_progress_bar=False,
                check_val_every_n_epoch=None, accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_model_summary=False)
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    vi = getattr(model, "validation_indices", None)
    n_val = 0 if vi is None else int(len(vi))
    n_train_used = int(len(model.train_indices))
    history = {k: [float(v) for v in np.asarray(df).ravel()] for k, df in model.history.items()
               if k in ("elbo_train", "reconstruction_loss_train", "kl_local_train")}

    model.module.eval()
    torch.manual_seed(a.seed)
    t1 = time.perf_counter()
    recon = model.get_reconstruction_error(test, batch_size=256)
    recon = float(np.asarray(next(iter(recon.values()))))
    elbo = float(np.asarray(model.get_elbo(test, batch_size=256)))
    t_cheap = time.perf_counter() - t1
    t2 = time.perf_counter()
    mll = float(model.get_marginal_ll(test, n_mc_samples=a.mc_samples, batch_size=256,
                                      n_mc_samples_per_pass=min(a.mc_samples, 50)))
    t_mll = time.perf_counter() - t2

    times = timer.times
    import importlib.metadata as md
    out = {
        "tool": "scvi-tools",
        "versions": {"scvi-tools": md.version("scvi-tools"), "torch": torch.__version__,
                     "lightning": md.version("lightning"), "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(),
        "likelihood": a.likelihood, "batch_key": a.batch_key, "kl_warmup": a.kl_warmup,
        "epochs": a.epochs, "n_train": int(train.n_obs), "n_validation_internal": n_val, "n_train_used": n_train_used,
        "n_heldout": int(test.n_obs), "n_genes": int(train.n_vars), "n_params": int(n_params),
        "steps_per_epoch": -(-train.n_obs // 128),
        "epoch_seconds": times,
        "first_epoch_seconds": times[0] if times else None,
        "seconds_per_epoch": float(np.mean(times[1:])) if len(times) > 1 else None,
        "seconds_per_epoch_median": float(np.median(times[1:])) if len(times) > 1 else None,
        "epoch_cpu_seconds": timer.cpu,
        "cpu_seconds_per_epoch": float(np.mean(timer.cpu[1:])) if len(times) > 1 else None,
        "train_wall_seconds": t_train, "train_cpu_seconds": c_train,
        "heldout": {"recon_nll_per_cell": recon, "elbo_per_cell": elbo, "marginal_ll_per_cell": mll,
                    "mc_samples": a.mc_samples},
        "eval_seconds": {"recon_and_elbo": t_cheap, "marginal_ll": t_mll},
        "history": history,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("likelihood", "epochs", "first_epoch_seconds", "seconds_per_epoch",
                                          "heldout")}))


if __name__ == "__main__":
    main()
