"""The flow prior's held-out log predictive density: what it costs against the Gaussian prior's (issue 13).

Setup (last session's measurement): kang_muscat `~ group_id`, 250 training cells (numpy default_rng(0)) x
500 genes (the 500 with the largest total count in those cells), cVAE-NB with `latent.Flow(dim=10)`, 50
epochs; held out: the first 50 cells of the fixed split (splits/kang_muscat_heldout.txt). One fit, saved as
a model file; the Gaussian twin is the same fit's VAE stage (its Gaussian prior network, the fit without
params["learned_prior"]).

`--fit` fits and saves the model (once); `--time` loads it and times, warm (after one untimed call), in
CPU seconds of this process (and wall): the flow's `prior_sample` and `prior_log_prob` of 100 x 50 latents,
and `log_predictive_density` (100 importance draws) of Gaussian vs flow on the 50 cells, with the LPD
values; `--label` names the row in the results JSON (e.g. "before" / "after").

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/flow_lpd_cost.py --fit
  PYTHONPATH=. .venv/bin/python benchmarks/flow_lpd_cost.py --time --label after
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "flow_lpd_cost.json"
MODEL = Path(os.environ.get("FLOW_LPD_MODEL", "/tmp/flow_lpd_cost_model.pgx"))
N_TRAIN, N_GENES, N_TEST, EPOCHS, DRAWS = 250, 500, 50, 50, 100


def data():
    from _common import fixed_split, load
    train, test = fixed_split(load("kang_muscat"), "kang_muscat_heldout.txt")
    train = train[np.sort(np.random.default_rng(0).choice(train.n_obs, N_TRAIN, replace=False))]
    genes = np.sort(np.argsort(-np.asarray(train.X.sum(0)).ravel(), kind="stable")[:N_GENES])
    return train[:, genes].copy(), test[:N_TEST, genes].copy()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(f, *a, **kw):
    f(*a, **kw)  # warm: compile
    c, w = cpu(), time.perf_counter()
    out = f(*a, **kw)
    return out, cpu() - c, time.perf_counter() - w


def fit_model():
    from probgex.fit import Model
    from probgex.latent import Flow
    train, _ = data()
    fit = Model("~ group_id", likelihood="nb", latent=Flow(dim=10)).fit(train, seed=0, max_epochs=EPOCHS,
                                                                         progress=False)
    fit.save(MODEL)
    print(f"saved {MODEL}")


def time_model(label: str):
    import probgex as pg
    _, test = data()
    flow = pg.load(MODEL)
    gauss = replace(flow, params={k: v for k, v in flow.params.items() if k != "learned_prior"},
                    prior_history=None)
    z = flow.prior_samples(test.obs, n_samples=DRAWS, seed=0)
    _, t_draw_cpu, t_draw = timed(flow.prior_samples, test.obs, n_samples=DRAWS, seed=0)
    lp, t_lp_cpu, t_lp = timed(flow.prior_log_prob, test.obs, z, seed=0)
    row = {"label": label, "load": os.getloadavg()[0], "draw_cpu_s": t_draw_cpu, "draw_wall_s": t_draw,
           "prior_log_prob_cpu_s": t_lp_cpu, "prior_log_prob_wall_s": t_lp,
           "prior_log_prob_mean": float(np.mean(lp)), "prior_log_prob_first": np.asarray(lp)[0, :5].tolist()}
    for name, fit in (("gaussian", gauss), ("flow", flow)):
        lpd, c, w = timed(fit.log_predictive_density, test, n_samples=DRAWS, seed=0)
        row[f"lpd_{name}_cpu_s"], row[f"lpd_{name}_wall_s"] = c, w
        row[f"lpd_{name}_mean"] = float(lpd.mean())
        row[f"lpd_{name}"] = np.asarray(lpd).round(4).tolist()
    row["lpd_cpu_ratio"] = row["lpd_flow_cpu_s"] / row["lpd_gaussian_cpu_s"]
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}, indent=1))
    rows = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    OUT.write_text(json.dumps({"rows": [r for r in rows if r["label"] != label] + [row]}, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit", action="store_true")
    p.add_argument("--time", action="store_true")
    p.add_argument("--label", default="run")
    a = p.parse_args()
    if a.fit:
        fit_model()
    if a.time:
        time_model(a.label)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(HERE))
    main()
