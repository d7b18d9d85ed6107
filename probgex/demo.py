"""`probgex demo`: the main job on the embedded yeast dataset, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probgex._outputs import DEMO_FILES, atomic_file  # noqa: F401  (what the demo writes)
from probgex.datasets import schurch_yeast
from probgex.diagnostics import check
from probgex.fit import Model



def heldout_replicates(adata) -> list[str]:
    """Every 6th clean replicate of each strain: 8 samples the fit never sees."""
    clean = adata.obs[~adata.obs["flagged_bad_rep"].astype(bool)]
    return [name for _, g in clean.groupby("strain", observed=True) for name in g.index[::6]]


def run_demo(out: Path, *, max_epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Fit an NB GLM `~ strain` on the clean yeast replicates, predict the held-out replicates from
    their metadata and library sizes, and write the model, predictions and the calibration report;
    then a power curve from a 3-vs-3 pilot of the training replicates (`power/`)."""
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
    with atomic_file(out / "predictions.nc") as tmp:
        fit.predict(test.obs, n_samples=200, library_size=lib, seed=seed).to_netcdf(tmp, engine="h5netcdf")
    report = check(fit, test, n_samples=200, seed=seed, progress=progress, reference=train)
    report.save(out)
    summary = report.summary()
    summary["power"] = power_from_pilot(train, out / "power", seed=seed, progress=progress)
    return summary


def power_from_pilot(train, out: Path, *, seed: int = 0, progress: bool = True, n_per_group=(3, 6, 12),
                     genes: int = 2000, draws: int = 10, reference_n: int = 20) -> dict:
    """How many replicates? A power curve (Snf2 vs WT, FDR 0.05) from a 3-vs-3 pilot drawn from the
    training replicates, on the `genes` most expressed genes: the pilot's NB GLM gives every simulated
    experiment its own posterior draw of base rates, dispersions and (shrunk) fold changes; a gene is
    truly DE in a draw when called on a simulated `reference_n`-per-group experiment; the interval also
    carries the uncertainty of the pilot's dispersion level (which replicates it drew). Writes power.json,
    power.nc and power.png to `out` (examples/power_yeast_pilot.py is the longer version)."""
    from probgex import rng as streams
    from probgex.power import curve
    from probgex.power.report import write

    total = np.asarray(train.X.sum(0)).ravel()
    top = train[:, np.sort(np.argsort(total)[::-1][:genes])]
    rng = streams.host_rng(seed, "pilot")
    strain = top.obs["strain"].astype(str).to_numpy()
    pick = np.concatenate([rng.choice(np.flatnonzero(strain == s), 3, replace=False) for s in ("WT", "Snf2")])
    pilot = top[pick].copy()
    # holdout=0: a 6-sample pilot needs every sample in the fit (a fixed epoch budget instead)
    fit = Model("~ strain", likelihood="nb").fit(pilot, seed=seed, holdout=0.0, max_epochs=1500, empty="keep",
                                                 progress=progress)
    ds = curve(fit, ("strain", "Snf2", "WT"), n_per_group, key=seed, n_draws=draws, n_rep=1,
               effects="shrunk", reference_n=reference_n, min_abs_lfc=(1.0,), progress=progress, pilot=pilot)
    return write(ds, out)
