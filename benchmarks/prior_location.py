"""The prior's location by marginal likelihood (issue 13, cause (ii)): run a benchmark script with the GLM's prior
of log dispersion centred where the marginal likelihood places it (`models.trend.PRIOR_LOCATION = "marginal"`) or
at the trend (today's default), and record every trend placement under both (a0, a1, s of each, the offset c, the
median over genes of each prior median; calls files written before 2026-12-04 04:05 also hold "marginal_t", a
Student-t prior with its df nu, an option tried in commit d745c88 and removed) so where c lands is read off the same designs.

  PYTHONPATH=. .venv/bin/python benchmarks/prior_location.py --location marginal --calls C.json \\
      benchmarks/yeast_df1_simulated.py --draws 2 --out R.json
  PYTHONPATH=. .venv/bin/python benchmarks/prior_location.py --location marginal --calls C.json \\
      benchmarks/calibration_everywhere.py --rows bottomly --df 1 --out R.json
(calibration_everywhere.py is run through its `bulk_row` with the variant label `loc_<location>`, so the stored
`*_after.npz` entries are not overwritten.)
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path

import numpy as np

import probgex.models.trend as trend

CALLS: list[dict] = []


def recording(original):
    def place(y, X, library_size, log_mean, offset=None):
        out = {}
        for loc in ("trend", "marginal"):
            trend.PRIOR_LOCATION = loc
            out[loc] = original(y, X, library_size, log_mean, offset)
        trend.PRIOR_LOCATION = ARGS.location
        m = np.exp(np.asarray(log_mean, np.float64))
        rec = {"shape": list(np.shape(y)), "df": int(np.shape(y)[0] - np.linalg.matrix_rank(np.asarray(X)))}
        for loc, (a0, a1, s, *nu) in out.items():
            rec[loc] = {"a0": a0, "a1": a1, "s": s, "median_prior_median": float(np.median(a0 + a1 / m)),
                        "c": float(np.log(a0 / out["trend"][0])), **({"nu": nu[0]} if nu else {})}
        CALLS.append(rec)
        print("placed", json.dumps(rec), flush=True)
        return out[ARGS.location]
    return place


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--location", choices=("trend", "marginal"), required=True)
    p.add_argument("--calls", type=Path, required=True, help="JSON of every trend placement (both locations)")
    p.add_argument("script", type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER)
    ARGS = p.parse_args()
    trend.PRIOR_LOCATION = ARGS.location
    trend.place_trend = recording(trend.place_trend)
    t0 = time.process_time()
    sys.argv = [str(ARGS.script), *ARGS.args]
    sys.path.insert(0, str(ARGS.script.resolve().parent))
    try:
        if ARGS.script.name == "calibration_everywhere.py":
            run_calibration(ARGS.args)
        else:
            runpy.run_path(str(ARGS.script), run_name="__main__")
    finally:
        ARGS.calls.write_text(json.dumps({"location": ARGS.location, "cpu_s": round(time.process_time() - t0, 1),
                                          "calls": CALLS}, indent=1))


def run_calibration(argv: list[str]) -> None:
    import calibration_everywhere as ce
    from _common import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--df", nargs="+", type=int, required=True)
    ap.add_argument("--draws", type=int, default=ce.DRAWS)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    (ce.RESULTS / "calibration_everywhere").mkdir(exist_ok=True)
    stored = json.loads(a.out.read_text()) if a.out.exists() else {"rows": []}
    rows = {(r["dataset"], r["df"]): r for r in stored["rows"]}
    for df in a.df:
        for name in a.rows:
            t = time.perf_counter()
            row = ce.bulk_row(name, ce.BULK[name][0], df, f"loc_{ARGS.location}", a.draws)
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows[(name, df)] = row
            print(ce.table([row]).splitlines()[-1], flush=True)
            a.out.write_text(json.dumps({"machine": machine(), "rows": list(rows.values())}, indent=1))


if __name__ == "__main__":
    main()
