"""Agreement of probgex.power.de_test with pydeseq2 on real data (schurch_yeast subsets, bottomly).

    PYTHONPATH=. .venv/bin/python benchmarks/de_vs_pydeseq2.py            # all cases
    PYTHONPATH=. .venv/bin/python benchmarks/de_vs_pydeseq2.py yeast_3v3  # some cases

pydeseq2 (the `bench` extra: pip install -e ".[bench]") runs with the settings that match what
de_test computes: no Cook's-distance refit or filtering, no independent filtering, Wald test. Reported
per case: Spearman correlation of the p-values and of the log2 fold changes over the genes both test,
of the final dispersions, the calls at padj < 0.05 of each and their overlap, and both wall times.
Results go to benchmarks/results/de_vs_pydeseq2.json; a markdown table is printed.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import RESULTS, load, machine  # noqa: E402

import probgex as pg  # noqa: E402


def yeast(n: int | None):
    a = pg.datasets.schurch_yeast()
    a = a[~a.obs["flagged_bad_rep"].astype(bool)]
    wt, ko = np.flatnonzero(a.obs["strain"] == "WT"), np.flatnonzero(a.obs["strain"] == "Snf2")
    if n is not None:
        wt, ko = wt[:n], ko[:n]
    return a[np.r_[wt, ko]].copy(), "~ strain", ("strain", "Snf2", "WT")


def bottomly(batch: bool):
    a = load("bottomly")
    a.obs["strain"] = a.obs["strain"].astype(str).str.replace("/", "_")
    a.obs["batch"] = "e" + a.obs["experiment.number"].astype(str)
    a = a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()  # drop genes without counts (both leave them NaN)
    return a, ("~ batch + strain" if batch else "~ strain"), ("strain", "DBA_2J", "C57BL_6J")


CASES = {
    "yeast_3v3": lambda: yeast(3),
    "yeast_6v6": lambda: yeast(6),
    "yeast_clean_all": lambda: yeast(None),
    "bottomly": lambda: bottomly(False),
    "bottomly_batch": lambda: bottomly(True),
}


def run_pydeseq2(a, formula, contrast):
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    counts = pd.DataFrame(np.asarray(a.X), index=a.obs_names, columns=a.var_names)
    cols = [c.strip() for c in formula.replace("~", "").split("+")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=a.obs[cols], design=formula.replace(" ", ""),
                           refit_cooks=False, quiet=True, inference=DefaultInference(n_cpus=1))
        dds.deseq2()
        st = DeseqStats(dds, contrast=list(contrast), cooks_filter=False, independent_filter=False,
                        quiet=True, inference=DefaultInference(n_cpus=1))
        st.summary()
    out = st.results_df.copy()
    out["dispersion"] = dds.var["dispersions"]
    return out


def compare(name: str) -> dict:
    a, formula, contrast = CASES[name]()
    t = time.perf_counter()
    ours = pg.power.de_test(a, formula, contrast)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = run_pydeseq2(a, formula, contrast)
    t_ref = time.perf_counter() - t
    ok = ours["pvalue"].notna() & ref["pvalue"].notna()
    A, B = ours["padj"] < 0.05, ref["padj"] < 0.05
    return {"case": name, "samples": int(a.n_obs), "genes": int(a.n_vars), "tested": int(ok.sum()),
            "formula": formula,
            "spearman_pvalue": float(spearmanr(ours["pvalue"][ok], ref["pvalue"][ok])[0]),
            "spearman_lfc": float(spearmanr(ours["log2FoldChange"][ok], ref["log2FoldChange"][ok])[0]),
            "spearman_dispersion": float(spearmanr(ours["dispersion"][ok], ref["dispersion"][ok])[0]),
            "median_abs_log2fc_diff": float(np.median(np.abs(ours["log2FoldChange"] - ref["log2FoldChange"])[ok])),
            "calls_probgex": int(A.sum()), "calls_pydeseq2": int(B.sum()), "calls_both": int((A & B).sum()),
            "jaccard": float((A & B).sum() / max(1, (A | B).sum())),
            "seconds_probgex": t_ours, "seconds_pydeseq2": t_ref}


def main(names: list[str]) -> None:
    import pydeseq2

    rows = []
    for name in names or list(CASES):
        rows.append(compare(name))
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "de_vs_pydeseq2.json"  # rows of cases not rerun are kept
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in old if r["case"] not in {x["case"] for x in rows}] + rows
    rows.sort(key=lambda r: list(CASES).index(r["case"]))
    path.write_text(json.dumps({"machine": machine(), "pydeseq2": pydeseq2.__version__, "rows": rows}, indent=1))
    print("| case | samples | genes tested | Spearman p | Spearman LFC | Spearman disp | calls probgex / "
          "pydeseq2 / both | Jaccard | s probgex | s pydeseq2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} (`{r['formula']}`) | {r['samples']} | {r['tested']} | {r['spearman_pvalue']:.4f} | "
              f"{r['spearman_lfc']:.4f} | {r['spearman_dispersion']:.3f} | {r['calls_probgex']} / "
              f"{r['calls_pydeseq2']} / {r['calls_both']} | {r['jaccard']:.3f} | {r['seconds_probgex']:.1f} | "
              f"{r['seconds_pydeseq2']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
