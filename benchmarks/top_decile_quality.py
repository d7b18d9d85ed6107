"""Issue 13 item 3: the per-cell dispersion scale (`sample_quality="on"`) against the same row without it,
from the reports `calibration_check.py` stored (run the rows first, e.g.
`calibration_check.py --rows harmony_cvae harmony_cvae_quality` and again with `--seed 1`).

Per pair (off, on): held-out LPD per cell, pooled and top-decile coverage at 50/80/90/95%, the worst decile
deviation, genes within 3 SE at 90%, gene-program coverage at 90% (correlated; mean of the random sets),
the fitted prior scale s, and the largest change of any decile's coverage at any level (the issue's
"kang_ctrl5 deciles within 0.5 pp").

Usage: PYTHONPATH=. .venv/bin/python benchmarks/top_decile_quality.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS

OUT = RESULTS / "check"
LEVELS = ("0.5", "0.8", "0.9", "0.95")
PAIRS = [("harmony_cvae", "harmony_cvae_quality"), ("harmony_cvae_seed1", "harmony_cvae_quality_seed1"),
         ("harmony_cvae_seed2", "harmony_cvae_quality_seed2"),
         ("ctrl5_cvae", "ctrl5_cvae_quality"), ("muscat_cvae", "muscat_cvae_quality"),
         ("harmony_glm_seed1", "harmony_glm_quality_seed1"), ("ctrl5_glm_cluster", "ctrl5_glm_cluster_quality")]


def line(name: str, rows: dict) -> str | None:
    path = OUT / name / "report.json"
    if not path.exists() or name not in rows:
        return None
    s, r = json.loads(path.read_text()), rows[name]
    progs = s["gene_programs"]
    rand = np.mean([v["coverage"]["0.9"] for k, v in progs.items() if k.startswith("random")])
    f = lambda v: " / ".join(f"{x:.3f}" for x in v)
    sd = r.get("quality_sd")
    return (f"| {name} | {r['model']} `{r['formula']}` | {'-' if sd is None else f'{sd:.2f}'} "
            f"| {s['mean_log_predictive_density']:.2f} | {f(s['coverage'][a] for a in LEVELS)} "
            f"| {f(s['coverage_by_decile'][a][-1] for a in LEVELS)} | {max(s['worst_decile_deviation'].values()):.3f} "
            f"| {s['genes_within_3se']['0.9']:.3f} | {progs['correlated']['coverage']['0.9']:.3f} / {rand:.3f} |")


def decile_change(a: str, b: str) -> float | None:
    pa, pb = OUT / a / "report.json", OUT / b / "report.json"
    if not (pa.exists() and pb.exists()):
        return None
    da, db = (json.loads(p.read_text())["coverage_by_decile"] for p in (pa, pb))
    return max(float(np.max(np.abs(np.subtract(da[k], db[k])))) for k in LEVELS)


def main():
    rows = json.loads((OUT / "summary.json").read_text())["rows"]
    print("| row | model | s | LPD/cell | pooled 50/80/90/95 | top decile 50/80/90/95 | worst decile | genes in 3 SE "
          "| programs corr / rand @90 |")
    print("|" + "---|" * 9)
    for a, b in PAIRS:
        for name in (a, b):
            out = line(name, rows)
            if out:
                print(out)
    for a, b in PAIRS:
        d = decile_change(a, b)
        if d is not None:
            print(f"{a} -> {b}: largest change of any decile's coverage {100 * d:.2f} pp")


if __name__ == "__main__":
    main()
