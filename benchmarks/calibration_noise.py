"""How much of a calibration_everywhere.py bulk row's miss is the noise of its few held-out samples?

Each bulk row pools 5 leave-2-samples-out splits: 10 held-out samples. Entries of one held-out sample
are not independent (a sample closer to or farther from its group than typical moves all its genes'
PITs together), so the binomial error of ~10,000 entries understates the row's error by far. This
script reads the scored entries the benchmark stored (`results/calibration_everywhere/<row>.npz`, no
refitting) and reports per row, for probgex and the DESeq2 plug-in:

- pooled coverage at 50 / 90% with its standard error clustered by held-out sample (the sd of the
  per-sample coverages over sqrt(number of samples), entries weighted equally), and z = (coverage -
  nominal) / SE;
- the range of the per-sample 50% coverages;
- the held-out LPD difference probgex minus plug-in per entry with its sample-clustered SE (paired:
  the same entries);
- per expression decile (deciles of the gene's training mean, as the benchmark's "worst decile") and level
  (50 / 80 / 90 / 95%): the coverage's clustered SE and z; per row the worst decile's deviation with its z,
  the largest |z| of the 40 decile x level cells and how many exceed 3 (`--deciles`).

Usage: PYTHONPATH=. .venv/bin/python benchmarks/calibration_noise.py [--variant after] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from _bulk_protocol import LEVELS
from _common import RESULTS, markdown_table

METHODS = ("probgex", "deseq2_plugin")


def sample_ids(z) -> np.ndarray:
    """The held-out sample of every entry: stored as `sample` by newer runs; in older files recovered
    from the gene index, which rises within a sample and restarts at the next one."""
    if "sample" in z.files:
        return np.asarray(z["sample"])
    genes = np.asarray(z["probgex_gene"])
    return np.concatenate([[0], np.cumsum(np.diff(genes) < 0)])


def clustered(values: np.ndarray, cluster: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(mean over entries, its SE clustered by `cluster`, the per-cluster means). The SE is that of a
    ratio estimator: sqrt(n / (n - 1) sum_c (S_c - m N_c)^2) / N, with S_c, N_c a cluster's sum and size."""
    ids, inv = np.unique(cluster, return_inverse=True)
    sums = np.bincount(inv, weights=values.astype(float))
    sizes = np.bincount(inv).astype(float)
    m, n, total = sums.sum() / sizes.sum(), len(ids), sizes.sum()
    se = np.sqrt(n / (n - 1) * np.sum((sums - m * sizes) ** 2)) / total if n > 1 else float("nan")
    return float(m), float(se), sums / sizes


def decile_z(pit: np.ndarray, key: np.ndarray, sample: np.ndarray) -> dict:
    """Per decile of `key` (the deciles `_bulk_protocol.scores` uses) and level: coverage, clustered SE, z.
    Returns the worst |coverage - nominal| cell with its z, the largest |z| and the count of |z| > 3."""
    edges = np.quantile(key, np.linspace(0, 1, 11)[1:-1])
    dec = np.searchsorted(edges, key, side="right")
    cells = []
    for k in range(10):
        sel = dec == k
        if not sel.any() or len(np.unique(sample[sel])) < 2:
            continue
        for lv in LEVELS:
            m, se, _ = clustered(np.abs(pit[sel] - 0.5) <= lv / 2, sample[sel])
            cells.append((k, lv, m - lv, (m - lv) / se if se > 0 else np.nan))
    worst = max(cells, key=lambda c: abs(c[2]))
    zs = np.array([abs(c[3]) for c in cells])
    return {"worst": {"decile": worst[0], "level": worst[1], "dev": round(float(worst[2]), 4),
                      "z": round(float(worst[3]), 2)},
            "max_abs_z": round(float(np.nanmax(zs)), 2), "cells_z_over_3": int(np.sum(zs > 3)), "cells": len(cells)}


def row(path: Path) -> dict:
    z = np.load(path)
    s = sample_ids(z)
    out = {"row": path.stem, "samples": int(len(np.unique(s)))}
    for meth in METHODS:
        pit = np.asarray(z[f"{meth}_pit"])
        res = {}
        for lv in (0.5, 0.9):
            m, se, per = clustered(np.abs(pit - 0.5) <= lv / 2, s)
            res[f"cov{int(lv * 100)}"] = {"value": round(m, 4), "se": round(se, 4), "z": round((m - lv) / se, 2),
                                          "per_sample_min": round(float(per.min()), 3),
                                          "per_sample_max": round(float(per.max()), 3)}
        res["deciles"] = decile_z(pit, np.asarray(z[f"{meth}_decile_key"]), s)
        out[meth] = res
    d, se, _ = clustered(np.asarray(z["probgex_logp"]) - np.asarray(z["deseq2_plugin_logp"]), s)
    out["lpd_diff"] = {"value": round(d, 4), "se": round(se, 4)}
    return out


def table(rows: list[dict]) -> str:
    columns = ["row", "probgex 50% (SE, z)", "probgex 90% (SE, z)", "per-sample 50% range", "plug-in 50% (SE, z)",
               "plug-in 90% (SE, z)", "LPD probgex - plug-in (SE)"]
    f = lambda c: f"{c['value']:.3f} ({c['se']:.3f}, {c['z']:+.1f})"  # noqa: E731
    return markdown_table(columns, [
        [r["row"], f(r["probgex"]["cov50"]), f(r["probgex"]["cov90"]),
         f"{r['probgex']['cov50']['per_sample_min']:.2f}-{r['probgex']['cov50']['per_sample_max']:.2f}",
         f(r["deseq2_plugin"]["cov50"]), f(r["deseq2_plugin"]["cov90"]),
         f"{r['lpd_diff']['value']:+.3f} ({r['lpd_diff']['se']:.3f})"] for r in rows])


def decile_table(rows: list[dict]) -> str:
    columns = ["row", "probgex worst decile (level, dev, z)", "max |z|", "cells |z|>3 of 40",
               "plug-in worst decile (level, dev, z)", "max |z|", "cells |z|>3 of 40"]
    f = lambda d: f"{d['worst']['decile'] + 1} ({int(d['worst']['level'] * 100)}%, {d['worst']['dev']:+.3f}, {d['worst']['z']:+.1f})"  # noqa: E731
    return markdown_table(columns, [
        [r["row"]] + [x for m in METHODS for x in (f(r[m]["deciles"]), f"{r[m]['deciles']['max_abs_z']:.1f}",
                                                   str(r[m]["deciles"]["cells_z_over_3"]))] for r in rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="after", help="the npz suffix: after, before, quality_on, ...")
    ap.add_argument("--dir", type=Path, default=RESULTS / "calibration_everywhere")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--deciles", action="store_true", help="also the per-decile clustered z table")
    args = ap.parse_args()
    pattern = re.compile(rf"_df\d+_{re.escape(args.variant)}$")
    paths = sorted(p for p in args.dir.glob("*.npz") if pattern.search(p.stem))
    rows = [row(p) for p in paths]
    print(table(rows))
    if args.deciles:
        print()
        print(decile_table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
