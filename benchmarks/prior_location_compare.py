"""Split-by-split comparison of calibration_everywhere rows run through prior_location.py (`*_loc_<location>.npz`)
against the stored default rows (`*_after.npz`, the stop-22 "after"): pooled coverage 50 / 90, the worst decile,
held-out LPD per entry, and the LPD difference per split (split = held-out sample // 2).

  PYTHONPATH=. .venv/bin/python benchmarks/prior_location_compare.py --variant loc_marginal --rows bottomly --df 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bulk_protocol import scores  # noqa: E402
from _common import RESULTS  # noqa: E402


def row(name: str, df: int, variant: str) -> dict | None:
    f = RESULTS / "calibration_everywhere" / f"{name}_df{df}_{variant}.npz"
    if not f.exists():
        return None
    z = np.load(f)
    sc = scores(z["probgex_pit"], z["probgex_logp"], z["probgex_decile_key"], z["probgex_gene"])
    split = z["sample"] // 2
    sc["lpd_per_split"] = [round(float(z["probgex_logp"][split == k].mean()), 4) for k in np.unique(split)]
    return sc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True)
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--df", nargs="+", type=int, required=True)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    out = []
    print("| dataset | df | cov 50 / 90 before | after | worst decile before -> after | LPD before -> after | "
          "LPD diff per split |")
    print("|---|---|---|---|---|---|---|")
    for df in a.df:
        for name in a.rows:
            b, n = row(name, df, "after"), row(name, df, a.variant)
            if b is None or n is None:
                continue
            diff = [round(x - y, 3) for x, y in zip(n["lpd_per_split"], b["lpd_per_split"], strict=True)]
            out.append({"dataset": name, "df": df, "before": b, "after": n, "lpd_diff_per_split": diff})
            print(f"| {name} | {df} | {b['coverage'][0]:.3f} / {b['coverage'][2]:.3f} | {n['coverage'][0]:.3f} / "
                  f"{n['coverage'][2]:.3f} | {b['worst_decile_dev']:.3f} -> {n['worst_decile_dev']:.3f} | "
                  f"{b['lpd_per_entry']:.3f} -> {n['lpd_per_entry']:.3f} | {' '.join(f'{d:+.3f}' for d in diff)} |")
    if a.out:
        a.out.write_text(json.dumps({"variant": a.variant, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
