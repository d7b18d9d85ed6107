"""Wrap a point predictor with calibrated variability (the residual story, issue 5).

A point predictor of expression from metadata (here a Flax MLP trained by squared error on
log1p(counts per 10k), the way expression foundation models are trained) is fitted on part of a real
dataset; probgex keeps it frozen as stage 1 and learns the variability around it (stage 2), then
predicts the other part from metadata alone: intervals, a calibration report, and a figure of observed
counts against the point prediction and the 80% / 95% predictive intervals.

    python examples/residual_around_predictor.py --out residual-example            # embedded yeast data
    python examples/residual_around_predictor.py --data kang.h5ad --formula "~ cluster_id + group_id"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import probgex as pg  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help=".h5ad of raw counts (default: the embedded yeast set)")
    p.add_argument("--formula", default="~ strain")
    p.add_argument("--genes", type=int, default=500, help="most expressed genes kept")
    p.add_argument("--test-every", type=int, default=3, help="every k-th observation is predicted")
    p.add_argument("--max-epochs", type=int, default=None, help="stage-2 epochs (default: probgex's)")
    p.add_argument("--mlp-epochs", type=int, default=300)
    p.add_argument("--n-samples", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("residual-example"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import anndata as ad

    if a.data is None:
        adata = pg.datasets.schurch_yeast()
        adata = adata[~adata.obs["flagged_bad_rep"].astype(bool)]
    else:
        adata = ad.read_h5ad(a.data)
    total = np.asarray(adata.X.sum(0)).ravel()
    adata = adata[:, np.sort(np.argsort(total)[::-1][: a.genes])].copy()
    test = np.zeros(adata.n_obs, bool)
    test[a.test_every - 1 :: a.test_every] = True
    train, held = adata[~test].copy(), adata[test].copy()

    # stage 1: a point predictor trained on the training part only
    mlp = pg.mean.MLPMean.train(pg.from_anndata(train, a.formula), seed=a.seed, max_epochs=a.mlp_epochs)
    # stage 2: the variability around it (stage 1 frozen)
    model = pg.Model(a.formula, likelihood="nb", latent=pg.latent.Gaussian(dim=4), encoder=(64,), decoder=(64,),
                     mean=mlp)
    fit = model.fit(train, seed=a.seed, max_epochs=a.max_epochs)

    report = pg.diagnostics.check(fit, held, n_samples=a.n_samples, seed=a.seed)
    report.save(a.out / "report")
    data = fit.data(held)
    lib = data.library_size
    pred = fit.predict(held.obs, n_samples=a.n_samples, library_size=lib, seed=a.seed)
    point = np.exp(mlp.log_fraction(held.obs, fit.var_names)) * lib[:, None]
    x = data.rows(np.arange(data.n_obs))

    genes = np.argsort(x.var(0) / (x.mean(0) + 1))[::-1][:6]  # the most variable genes
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, g in zip(axes.ravel(), genes, strict=False):
        order = np.argsort(point[:, g])
        k = np.arange(len(order))
        for level, alpha in ((0.95, 0.2), (0.8, 0.35)):
            ax.fill_between(k, pred["lower"].sel(level=level).values[order, g],
                            pred["upper"].sel(level=level).values[order, g], color="C0", alpha=alpha,
                            label=f"{int(level * 100)}% interval", step="mid")
        ax.plot(k, point[order, g], "k--", lw=1, label="stage-1 point prediction")
        ax.plot(k, x[order, g], "o", color="C3", ms=3, label="observed")
        ax.set_title(str(fit.var_names[g]), fontsize=9)
        ax.set_xlabel("held-out observations (by point prediction)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Residual model around an MLP point predictor: held-out counts from metadata only")
    fig.tight_layout()
    a.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out / "intervals.png", dpi=110)
    plt.close(fig)
    summary = report.summary()
    print("coverage", summary["coverage"], "log predictive density", summary["mean_log_predictive_density"])
    return summary


if __name__ == "__main__":
    main()
