"""`probgex demo`: the main job on the embedded yeast dataset, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from probgex.datasets import schurch_yeast  # noqa: E402
from probgex.fit import LEVELS, Model  # noqa: E402


def heldout_replicates(adata) -> list[str]:
    """Every 6th clean replicate of each strain: 8 samples the fit never sees."""
    clean = adata.obs[~adata.obs["flagged_bad_rep"].astype(bool)]
    return [name for _, g in clean.groupby("strain", observed=True) for name in g.index[::6]]


def run_demo(out: Path, *, max_epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Fit an NB GLM `~ strain` on the clean yeast replicates, predict the held-out replicates from
    their metadata and library sizes, and write the model, predictions, calibration and a figure."""
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
    pred = fit.predict(test.obs, n_samples=200, library_size=lib, seed=seed)
    pred.to_netcdf(out / "predictions.nc", engine="h5netcdf")
    ev = fit.evaluate(test, n_samples=100, seed=seed)
    y = np.asarray(test.X, dtype=np.float64)
    inside = (pred["lower"].values <= y[None]) & (y[None] <= pred["upper"].values)
    summary = {
        "dataset": "schurch_yeast (clean replicates)", "model": "GLM NB ~ strain",
        "n_heldout": len(held), "n_genes": int(len(fit.var_names)), "heldout": held,
        "coverage": {str(a): float(c) for a, c in zip(LEVELS, ev["coverage"].values)},
        "interval_coverage": {str(a): float(c) for a, c in zip(LEVELS, inside.mean(axis=(1, 2)))},
        "coverage_by_decile": {str(a): [float(v) for v in ev["coverage_by_decile"].values[:, i]]
                               for i, a in enumerate(LEVELS)},
        "mean_log_predictive_density": ev.attrs["mean_log_predictive_density"],
        "epochs": len(fit.history.train), "best_epoch": fit.history.best_epoch,
    }
    (out / "calibration.json").write_text(json.dumps(summary, indent=2))
    _coverage_figure(ev, out / "coverage.png")
    return summary


def _coverage_figure(ev, path: Path) -> None:
    levels = ev["level"].values
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.plot([0, 1], [0, 1], color="grey", lw=1)
    a.plot(levels, ev["coverage"].values, "o-", label="pooled")
    a.set(xlabel="nominal level", ylabel="randomized-PIT coverage", title="held-out coverage", xlim=(0.4, 1),
          ylim=(0.4, 1))
    for i, lv in enumerate(levels):
        b.plot(ev["decile"].values, ev["coverage_by_decile"].values[:, i], "o-", label=f"{lv:.0%}")
        b.axhline(lv, color="grey", lw=0.5)
    b.set(xlabel="decile of predicted mean expression", ylabel="coverage", title="by expression decile")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
