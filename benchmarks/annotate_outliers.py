"""Does `annotate`'s outlier score find the replicates the authors flagged as bad?

Schurch et al. 2016 yeast (96 bulk samples, 48 WT + 48 Snf2; 10 flagged bad replicates, embedded in
probgex): fit the NB GLM `~ strain` on all 96 (bad ones included, as a user annotating their data would),
annotate, and rank the samples by `obs["probgex_outlier"]` and by -`obs["probgex_lpd"]`. Reports the
ROC AUC of each for the flags, how many flagged samples are among the 10 top-ranked, and the mean score
of the unflagged samples (1 in expectation for samples the model describes).

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/annotate_outliers.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import mannwhitneyu

import probgex as pg
from _common import RESULTS, machine, write


def auc(score: np.ndarray, flag: np.ndarray) -> float:
    return float(mannwhitneyu(score[flag], score[~flag]).statistic / (flag.sum() * (~flag).sum()))


def main(seed: int = 0, n_samples: int = 100) -> dict:
    adata = pg.datasets.schurch_yeast()
    flag = adata.obs["flagged_bad_rep"].astype(bool).to_numpy()
    t = time.perf_counter()
    fit = pg.Model("~ strain", likelihood="nb").fit(adata, seed=seed, progress=False)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    fit.annotate(adata, n_samples=n_samples, seed=seed)
    t_annotate = time.perf_counter() - t
    rows = {}
    for name, score in (("outlier score", adata.obs["probgex_outlier"].to_numpy()),
                        ("-lpd", -adata.obs["probgex_lpd"].to_numpy())):
        top = np.argsort(-score)[: flag.sum()]
        rows[name] = {"auc": auc(score, flag), "flagged_in_top10": int(flag[top].sum()),
                      "mean_unflagged": float(score[~flag].mean()), "mean_flagged": float(score[flag].mean())}
    out = {"data": "schurch_yeast (96 x 7126)", "model": repr(fit), "library": fit.spec.library, "seed": seed,
           "n_samples": n_samples, "fit_s": t_fit, "annotate_s": t_annotate, "n_flagged": int(flag.sum()),
           "rows": rows, "machine": machine()}
    print(f"| ranking by | ROC AUC for the 10 flags | flagged among top 10 | mean unflagged | mean flagged |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['auc']:.3f} | {r['flagged_in_top10']} | {r['mean_unflagged']:.3f} | "
              f"{r['mean_flagged']:.3f} |")
    print(f"fit {t_fit:.0f} s, annotate {t_annotate:.0f} s")
    write(RESULTS / "annotate_outliers.json", out)
    return out


if __name__ == "__main__":
    main()
