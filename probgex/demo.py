"""`probgex demo`: the main job on the embedded yeast dataset, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probgex.datasets import schurch_yeast
from probgex.diagnostics import check
from probgex.fit import Model


def heldout_replicates(adata) -> list[str]:
    """Every 6th clean replicate of each strain: 8 samples the fit never sees."""
    clean = adata.obs[~adata.obs["flagged_bad_rep"].astype(bool)]
    return [name for _, g in clean.groupby("strain", observed=True) for name in g.index[::6]]


def run_demo(out: Path, *, max_epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Fit an NB GLM `~ strain` on the clean yeast replicates, predict the held-out replicates from
    their metadata and library sizes, and write the model, predictions and the calibration report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adata = schurch_yeast()
    adata = adata[~adata.obs["flagged_bad_rep"].astype(bool)].copy()
    held = heldout_replicates(adata)
    train, test = adata[~adata.obs_names.isin(held)].copy(), adata[held].copy()
    fit = Model("~ strain", likelihood="nb").fit(train, seed=seed, max_epochs=max_epochs, empty="keep",
                                                 progress=progress)
    fit.save(out / "model.npz")
    lib = np.asarray(test.X.sum(1)).ravel()
    fit.predict(test.obs, n_samples=200, library_size=lib, seed=seed).to_netcdf(out / "predictions.nc",
                                                                             engine="h5netcdf")
    report = check(fit, test, n_samples=200, seed=seed, progress=progress, reference=train)
    report.save(out)
    return report.summary()
