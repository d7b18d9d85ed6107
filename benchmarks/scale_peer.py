"""scvi-tools' side of `scale.py peer` (issue 14: "against scvi-tools' loader on the same file"). Runs inside
the peer venv (benchmarks/.peer-venv, made by benchmarks/peer_env.sh), never in probgex's: it imports only
scvi-tools, torch and anndata, and prints one JSON row.

  .peer-venv/bin/python benchmarks/scale_peer.py --h5ad /tmp/probgex-scale/kang_100000.h5ad \
      --source memory|backed --mode loader|train --epochs 2

The file is scale.py's resampled kang_ctrl5 (.h5ad, CSR counts). "memory": `anndata.read_h5ad(path)`;
"backed": `anndata.read_h5ad(path, backed="r")`: scvi-tools' `AnnTorchDataset` reads a backed AnnData's
rows from the file batch by batch (it sorts each batch's indices for h5py). scvi-tools has no reader for a
.zarr store's counts on disk (anndata's backed mode is .h5ad only), so there is no zarr row.
Both modes register the AnnData as scale.py's fit does (`SCVI.setup_anndata(batch_key="cluster_id")`) and
hold out 10% of the cells at random (seed 0; not the same cells as probgex's split, the same number).
  - loader: `scvi.dataloaders.AnnDataLoader` over the 90% training cells, batch 128, shuffled, data-loader
    workers 0 (scvi's default): every batch built (a dict of torch tensors, counts densified) and nothing
    else, for `--epochs` epochs; seconds per epoch between the ends of the last two.
  - train: `SCVI(n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb", encode_covariates=True)`,
    the architecture of scale.py's cVAE-NB (the covariate one-hot into encoder and decoder), trained
    `--epochs` epochs at batch 128 with train_size=0.9 and a validation pass every epoch (as probgex's
    held-out pass), Adam lr 1e-3, no KL warm-up, torch threads 2; seconds per epoch between the ends of the
    last two validation passes (the training epoch and its validation pass).
CPU seconds: the process's CPU time (all threads). Peak RSS: ru_maxrss of the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import _peer_threads  # noqa: E402  (the script's folder is on sys.path)

THREADS = _peer_threads.limit(2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--h5ad", required=True)
    p.add_argument("--source", choices=("memory", "backed"), required=True)
    p.add_argument("--mode", choices=("loader", "train"), required=True)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()

    t_start = time.perf_counter()
    import anndata as ad
    import numpy as np
    import scvi
    import torch

    _peer_threads.apply(THREADS)
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = 0

    adata = ad.read_h5ad(a.h5ad, backed="r" if a.source == "backed" else None)
    scvi.model.SCVI.setup_anndata(adata, batch_key="cluster_id")
    model = scvi.model.SCVI(adata, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb",
                            dispersion="gene", encode_covariates=True)
    ends: list[tuple[float, float]] = []
    row = {"tool": "scvi-tools", "scvi_tools": scvi.__version__, "torch": torch.__version__, "cells": adata.n_obs,
           "source": f"scvi {a.source}", "mode": a.mode, "epochs": a.epochs}
    setup_s = time.perf_counter() - t_start
    if a.mode == "loader":
        from scvi.dataloaders import AnnDataLoader

        rng = np.random.default_rng(0)
        train = np.sort(rng.permutation(adata.n_obs)[: round(0.9 * adata.n_obs)])
        loader = AnnDataLoader(model.adata_manager, indices=train, batch_size=128, shuffle=True)
        batches = 0
        ends.append((time.perf_counter(), time.process_time()))
        for _ in range(a.epochs):
            for batch in loader:
                batches += 1
                assert batch["X"].shape[1] == adata.n_vars
            ends.append((time.perf_counter(), time.process_time()))
        row["batches"] = batches
    else:
        from lightning.pytorch.callbacks import Callback

        class Ends(Callback):  # the end of each epoch's validation pass (train epoch + validation)
            def on_validation_epoch_end(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    ends.append((time.perf_counter(), time.process_time()))

        model.train(max_epochs=a.epochs, batch_size=128, train_size=0.9, early_stopping=False,
                    plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None},
                    callbacks=[Ends()], enable_progress_bar=False, check_val_every_n_epoch=1,
                    num_sanity_val_steps=0, accelerator="cpu", devices=1, logger=False,
                    enable_checkpointing=False, enable_model_summary=False)
    (w1, c1), (w2, c2) = ends[-2:]
    row.update(setup_s=setup_s, s_per_epoch=w2 - w1, cpu_s_per_epoch=c2 - c1, cells_per_s=0.9 * adata.n_obs / (w2 - w1),
               total_s=time.perf_counter() - t_start, load_1min=os.getloadavg()[0],
               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
