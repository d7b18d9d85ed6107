"""scGen side of benchmarks/unseen_combinations.py. Runs inside the scGen peer venv
(benchmarks/.scgen-venv, made by `bash benchmarks/peer_env.sh scgen`), never in probgex's: it imports only
scgen, scvi-tools, scanpy, torch and anndata. Data go in and out by files.

  .scgen-venv/bin/python benchmarks/_scgen_run.py --h5ad kang_muscat.h5ad --out-dir DIR \
      [--epochs 100] [--seed 0] [--cell-types "B cells" ...]

For each cell type in turn (the protocol of Lotfollahi et al. 2019, as the scgen tutorial runs it): the
counts are normalized to 10,000 per cell and log1p-transformed (scanpy), the stimulated cells of that type
are removed, SCGEN is set up with batch_key=group_id, labels_key=cluster_id and fitted on the rest
(scgen's defaults: n_hidden 800, n_latent 100, 2 layers, dropout 0.2, kl_weight 5e-5, batch size 32, Adam
lr 1e-3, at most --epochs epochs with early stopping on a 10% validation split, patience 25), and
`predict(ctrl_key="ctrl", stim_key="stim", celltype_to_predict=TYPE)` shifts the type's control cells by
the latent stimulation vector (mean stim - mean ctrl latent over the other types, balanced). The
predicted log1p CP10k matrix (one row per control cell of the type) is written to
DIR/<type>.npy; DIR/scgen.json has the versions, epochs run and times. scGen predicts expression values,
not a distribution over counts: there is no coverage or predictive density to report for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# One torch thread by default: on the shared 2-core machine two threads spin against each other and the
# other jobs (measured: 44 steps of the scGen VAE took 1.7 s CPU with 1 thread, 17-27 s with 2 under load).
import _peer_threads  # noqa: E402  (the script's folder is on sys.path)

THREADS = _peer_threads.limit(int(os.environ.get("SCGEN_THREADS", "1")))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--h5ad", required=True)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell-types", nargs="*", default=None)
    a = p.parse_args()

    import importlib.metadata as md

    import anndata as ad
    import numpy as np
    import scanpy as sc
    import scgen
    import scvi
    import torch

    _peer_threads.apply(THREADS)
    scvi.settings.dl_num_workers = 0

    adata = ad.read_h5ad(a.h5ad)
    adata.X = adata.X.astype(np.float32)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.obs["cluster_id"] = adata.obs["cluster_id"].astype(str)
    adata.obs["group_id"] = adata.obs["group_id"].astype(str)
    types = a.cell_types or sorted(adata.obs["cluster_id"].unique())
    a.out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for cell_type in types:
        scvi.settings.seed = a.seed  # seeds torch, numpy and random (predict's balancing draws use numpy)
        np.random.seed(a.seed)
        held = ((adata.obs["cluster_id"] == cell_type) & (adata.obs["group_id"] == "stim")).to_numpy()
        train = adata[~held].copy()
        scgen.SCGEN.setup_anndata(train, batch_key="group_id", labels_key="cluster_id")
        model = scgen.SCGEN(train)
        t0 = time.perf_counter()
        model.train(max_epochs=a.epochs, batch_size=32, early_stopping=True, early_stopping_patience=25,
                    use_gpu=False)
        t_train = time.perf_counter() - t0
        pred, _delta = model.predict(ctrl_key="ctrl", stim_key="stim", celltype_to_predict=cell_type)
        x = pred.X.toarray() if hasattr(pred.X, "toarray") else np.asarray(pred.X)
        np.save(a.out_dir / f"{slug(cell_type)}.npy", x.astype(np.float32))
        history = {k: [float(v) for v in np.asarray(df).ravel()] for k, df in model.history.items()
                   if k in ("elbo_train", "elbo_validation", "reconstruction_loss_train")}
        runs.append({"cell_type": cell_type, "n_train": int(train.n_obs), "n_pred": int(x.shape[0]),
                     "epochs_run": len(history.get("elbo_train", [])), "train_seconds": t_train,
                     "file": f"{slug(cell_type)}.npy", "history": history})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "history"}), flush=True)
    versions = {}
    for pkg in ("scgen", "scvi-tools", "torch", "scanpy", "anndata", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    versions["python"] = platform.python_version()
    (a.out_dir / "scgen.json").write_text(json.dumps(
        {"tool": "scgen", "versions": versions, "max_epochs": a.epochs, "seed": a.seed,
         "torch_threads": torch.get_num_threads(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
