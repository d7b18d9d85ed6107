"""Issue 13 item 2: is bottomly's "sample quality harms" a left-out batch?

`quality_auto.py` found that on bottomly `~ strain` (df 6) per-sample dispersion scales
(`sample_quality="on"`) fit the training samples better yet predict held-out samples worse, and that the
held-out losses follow the three sequencing batches (`experiment.number`), which `~ strain` leaves out.
If so, naming the batch in the formula should (a) raise the held-out LPD of the default ("off") fit and
(b) remove most of the harm of "on".

Protocol: the splits of `calibration_everywhere.py` (`bulk_split`, seeds 1000 df + draw, a fixed random
1,000 expressed genes, scored on genes with test mean >= 5) drawn for the formula with the batch, so
both formulas are fitted to the same training samples and scored on the same held-out samples: 4 fits
per split (formula x sample_quality), the default GLM otherwise, plus the DESeq2 plug-in of each
formula. Per row: held-out LPD per entry and pooled coverage at 50/90%.

  PYTHONPATH=. .venv/bin/python benchmarks/quality_batch.py [--df 6] [--draws 5]
Results: benchmarks/results/quality_batch.json, the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bulk_protocol import MIN_TEST_MEAN, bulk_split, deseq_plugin, expressed  # noqa: E402
from _common import RESULTS, load, machine  # noqa: E402
from calibration_everywhere import N_GENES, probgex_entries  # noqa: E402

FORMULAS = {"strain": "~ strain", "strain+batch": "~ strain + batch"}


def coverage(pit: np.ndarray, level: float) -> float:
    lo = (1 - level) / 2
    return float(((pit > lo) & (pit < 1 - lo)).mean())


def one_split(a, df: int, draw: int) -> dict:
    import probgex as pg
    tr, te = bulk_split(a, FORMULAS["strain+batch"], df, seed=1000 * df + draw)
    genes = np.flatnonzero(expressed(a, tr))
    genes = np.sort(np.random.default_rng(draw).choice(genes, min(N_GENES, len(genes)), replace=False))
    b = a[:, genes]
    train, test = b[tr].copy(), b[te].copy()
    sel = np.asarray(test.X, float).mean(0) >= MIN_TEST_MEAN
    rec = {"draw": draw, "train": list(a.obs_names[tr]), "test": list(a.obs_names[te]),
           "test_batches": list(a.obs["batch"].iloc[te])}
    for name, formula in FORMULAS.items():
        for q in ("off", "on"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = pg.Model(formula, likelihood="nb", sample_quality=q).fit(train, seed=draw, progress=False)
                pit, lp = probgex_entries(fit, test, np.random.default_rng(draw))
            rec[f"{name}/{q}"] = {"lpd": float(lp[:, sel].mean()), "lpd_per_sample": lp[:, sel].mean(1).tolist(),
                                  "cov50": coverage(pit[:, sel], 0.5), "cov90": coverage(pit[:, sel], 0.9)}
        pit, lp, _ = deseq_plugin(train, test, formula, np.random.default_rng(draw))
        rec[f"{name}/plugin"] = {"lpd": float(lp[:, sel].mean()), "lpd_per_sample": lp[:, sel].mean(1).tolist(),
                                 "cov50": coverage(pit[:, sel], 0.5), "cov90": coverage(pit[:, sel], 0.9)}
        print(json.dumps({k: (v["lpd"] if isinstance(v, dict) else v) for k, v in rec.items()
                          if k not in ("train",)}), flush=True)
    return rec


def table(recs: list[dict]) -> str:
    keys = [f"{n}/{q}" for n in FORMULAS for q in ("off", "on", "plugin")]
    out = ["| formula / model | LPD per entry (mean over splits) | per split | cov 50 | cov 90 |", "|---|---|---|---|---|"]
    for k in keys:
        lpd = [r[k]["lpd"] for r in recs]
        out.append(f"| {k} | {np.mean(lpd):.3f} | {' / '.join(f'{v:.3f}' for v in lpd)} | "
                   f"{np.mean([r[k]['cov50'] for r in recs]):.3f} | {np.mean([r[k]['cov90'] for r in recs]):.3f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--df", type=int, default=6)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_batch.json")
    args = ap.parse_args()
    a = load("bottomly")
    a.obs["batch"] = "e" + a.obs["experiment.number"].astype(str)
    recs = [one_split(a, args.df, d) for d in range(args.draws)]
    args.out.write_text(json.dumps({"machine": machine(), "df": args.df, "splits": recs}, indent=1))
    print(table(recs))


if __name__ == "__main__":
    main()
