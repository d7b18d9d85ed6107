"""The flow prior's held-out log predictive density: what it costs against the Gaussian prior's (issue 13).

Setup (last session's measurement): kang_muscat `~ group_id`, 250 training cells (numpy default_rng(0)) x
500 genes (the 500 with the largest total count in those cells), cVAE-NB with `latent.Flow(dim=10)`, 50
epochs; held out: the first 50 cells of the fixed split (splits/kang_muscat_heldout.txt). One fit, saved as
a model file; the Gaussian twin is the same fit's VAE stage (its Gaussian prior network, the fit without
params["learned_prior"]).

`--fit` fits and saves the model (once); `--time` loads it and times, warm (after one untimed call), in
CPU seconds of this process (and wall): the flow's `prior_sample` and `prior_log_prob` of 100 x 50 latents,
and `log_predictive_density` (100 importance draws) of Gaussian vs flow on the 50 cells, with the LPD
values, and the flow again with ODE tolerances rtol = atol = 1e-3 (the default 1e-4); with `--check`
also `check` (200 draws, one worker thread, the training cells as reference) of each; `--label` names the row in the results JSON (e.g. "before" / "after").

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/flow_lpd_cost.py --fit
  PYTHONPATH=. .venv/bin/python benchmarks/flow_lpd_cost.py --time --check --label after
  PYTHONPATH=. .venv/bin/python benchmarks/flow_lpd_cost.py --ctrl5 /tmp/fits/kang_ctrl5_cvae_draw0.pgx --profile
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


def time_model(label: str, with_check: bool):
    import probgex as pg
    train, test = data()
    flow = pg.load(MODEL)
    gauss = replace(flow, params={k: v for k, v in flow.params.items() if k != "learned_prior"},
                    prior_history=None)
    z = flow.prior_samples(test.obs, n_samples=DRAWS, seed=0)
    _, t_draw_cpu, t_draw = timed(flow.prior_samples, test.obs, n_samples=DRAWS, seed=0)
    lp, t_lp_cpu, t_lp = timed(flow.prior_log_prob, test.obs, z, seed=0)
    row = {"label": label, "load": os.getloadavg()[0], "draw_cpu_s": t_draw_cpu, "draw_wall_s": t_draw,
           "prior_log_prob_cpu_s": t_lp_cpu, "prior_log_prob_wall_s": t_lp,
           "prior_log_prob_mean": float(np.mean(lp)), "prior_log_prob_first": np.asarray(lp)[0, :5].tolist()}
    from probgex.diagnostics.check import check
    from probgex.latent import ODE
    loose = replace(flow, spec=replace(flow.spec, latent=replace(flow.spec.latent, ode=ODE(rtol=1e-3, atol=1e-3))))
    for name, fit in (("gaussian", gauss), ("flow", flow), ("flow_tol1e-3", loose)):
        lpd, c, w = timed(fit.log_predictive_density, test, n_samples=DRAWS, seed=0)
        row[f"lpd_{name}_cpu_s"], row[f"lpd_{name}_wall_s"] = c, w
        row[f"lpd_{name}_mean"] = float(lpd.mean())
        row[f"lpd_{name}"] = np.asarray(lpd).round(4).tolist()
        if with_check:
            _, c, w = timed(check, fit, test, reference=train, progress=False, workers=1)
            row[f"check_{name}_cpu_s"], row[f"check_{name}_wall_s"] = c, w
    for name in ("flow", "flow_tol1e-3"):
        row[f"lpd_cpu_ratio_{name}"] = row[f"lpd_{name}_cpu_s"] / row["lpd_gaussian_cpu_s"]
        if with_check:
            row[f"check_cpu_ratio_{name}"] = row[f"check_{name}_cpu_s"] / row["check_gaussian_cpu_s"]
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}, indent=1))
    rows = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    OUT.write_text(json.dumps({"rows": [r for r in rows if r["label"] != label] + [row]}, indent=1))


MUSCAT_MODEL = Path(os.environ.get("FLOW_LPD_MUSCAT_MODEL", "/tmp/flow_lpd_cost_muscat.pgx"))


def muscat_data():
    """joint_structure.py's muscat_group split: kang_muscat `~ group_id`, the fixed 156 held-out cells x
    all 1,267 genes, 200 training cells drawn as its `--train-cells 200 --seed 0`."""
    from _common import fixed_split, load
    train, test = fixed_split(load("kang_muscat"), "kang_muscat_heldout.txt")
    keep = np.sort(np.random.default_rng([0, 200]).choice(train.n_obs, 200, replace=False))
    return train[keep].copy(), test


def muscat(label: str, do_fit: bool):
    """`check` (defaults: 200 draws, the LPD with 100) of the Gaussian twin and the flow, once each, cold
    (compilation included, as a user's call), on the 156 held-out cells of the joint-structure sweep."""
    import probgex as pg
    from probgex.diagnostics.check import check
    from probgex.fit import Model
    from probgex.latent import ODE, Flow
    train, test = muscat_data()
    if do_fit:
        Model("~ group_id", likelihood="nb", latent=Flow(dim=10)).fit(train, seed=0, progress=False).save(MUSCAT_MODEL)
    flow = pg.load(MUSCAT_MODEL)
    gauss = replace(flow, params={k: v for k, v in flow.params.items() if k != "learned_prior"}, prior_history=None)
    loose = replace(flow, spec=replace(flow.spec, latent=replace(flow.spec.latent, ode=ODE(rtol=1e-3, atol=1e-3))))
    row = {"label": label, "setup": "muscat_group 200 train / 156 held-out x 1267 genes, check cold"}
    for name, fit in (("gaussian", gauss), ("flow", flow), ("flow_tol1e-3", loose)):
        c, w, load_avg = cpu(), time.perf_counter(), os.getloadavg()[0]
        rep = check(fit, test, reference=train, progress=False)
        row[f"check_{name}_cpu_s"], row[f"check_{name}_wall_s"] = cpu() - c, time.perf_counter() - w
        row[f"check_{name}_load"] = load_avg
        lpd = np.asarray(rep.results["log_predictive_density"])
        row[f"check_{name}_lpd_mean"] = float(lpd.mean())
        print(name, {k: v for k, v in row.items() if name in k}, flush=True)
    for name in ("flow", "flow_tol1e-3"):
        row[f"check_cpu_ratio_{name}"] = row[f"check_{name}_cpu_s"] / row["check_gaussian_cpu_s"]
    print(json.dumps(row, indent=1))
    out = HERE / "results" / "flow_lpd_cost_muscat.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    out.write_text(json.dumps({"rows": [r for r in rows if r["label"] != label] + [row]}, indent=1))


def ctrl5_data(fit):
    """calibration_everywhere.py's kang_ctrl5 row: the fixed split, the genes with a count in training
    (the fit's genes)."""
    from _common import fixed_split, load
    train, test = fixed_split(load("kang_ctrl5"), "kang_ctrl5_heldout.txt")
    genes = np.asarray(fit.var_names, dtype=str)
    return train[:, genes].copy(), test[:, genes].copy()


def count_ode_steps():
    """Wrap the ODE solve so that each solve (traced or not) appends (rows, steps, accepted, t0, t1) to
    the list returned: a profile of the step counts, not used for timing."""
    import jax
    import probgex.prior.ode as ode
    record, solve = [], ode.solve

    def counted(options, field, y0, t0, t1, args=None):
        sol = solve(options, field, y0, t0, t1, args)
        rows = jax.tree_util.tree_leaves(y0)[0].shape[0]
        jax.debug.callback(lambda a, b: record.append((rows, int(a), int(b), float(t0), float(t1))),
                           sol.stats["num_steps"], sol.stats["num_accepted_steps"])
        return sol

    ode.solve = counted
    return record, lambda: setattr(ode, "solve", solve)


def ctrl5(model: Path, label: str, variants: list[str], profile: bool, warm_lpd: bool, warm: bool = False):
    """`check` (defaults, cold) of the saved kang_ctrl5 default fit (the flow chosen by `latent=10`) against
    its Gaussian twin, back to back in one process; with `warm_lpd` then each variant's
    `log_predictive_density` warm. `profile`: the ODE's step counts of the log density on the first block
    of held-out cells (one call per flow variant). `warm`: every variant's check is run once untimed first
    (all compiled before any timing), so the order of the variants does not matter."""
    import probgex as pg
    from probgex.diagnostics.check import check
    from probgex.latent import ODE
    flow = pg.load(model)
    train, test = ctrl5_data(flow)
    gauss = replace(flow, params={k: v for k, v in flow.params.items() if k != "learned_prior"}, prior_history=None)
    loose = replace(flow, spec=replace(flow.spec, latent=replace(flow.spec.latent, ode=ODE(rtol=1e-3, atol=1e-3))))
    fits = {"gaussian": gauss, "flow": flow, "flow_tol1e-3": loose}
    row = {"label": label, "setup": f"kang_ctrl5 default fit ({model.name}), {test.n_obs} held-out x "
                                     f"{test.n_vars} genes; check cold, defaults (200 draws, LPD 100)",
           "latent_choice": (flow.fit_info or {}).get("latent_choice")}
    if warm:
        for name in variants:
            check(fits[name], test, reference=train, progress=False)
        row["setup"] = row["setup"].replace("check cold", "check warm (each variant checked once before)")
    for name in variants:
        fit = fits[name]
        c, w, load_avg = cpu(), time.perf_counter(), os.getloadavg()[0]
        rep = check(fit, test, reference=train, progress=False)
        row[f"check_{name}_cpu_s"], row[f"check_{name}_wall_s"] = cpu() - c, time.perf_counter() - w
        row[f"check_{name}_load"] = [load_avg, os.getloadavg()[0]]
        row[f"check_{name}_lpd_mean"] = float(np.asarray(rep.results["log_predictive_density"]).mean())
        row[f"check_{name}_coverage_by_decile"] = np.asarray(rep.results["coverage_by_decile"]).round(4).tolist()
        if warm_lpd:
            c, w = cpu(), time.perf_counter()  # warm: check compiled it
            fit.log_predictive_density(test, n_samples=100, seed=0)
            row[f"lpd_{name}_warm_cpu_s"], row[f"lpd_{name}_warm_wall_s"] = cpu() - c, time.perf_counter() - w
        print(name, {k: v for k, v in row.items() if name in k and not isinstance(v, list)}, flush=True)
    for name in variants:
        if name != "gaussian" and "gaussian" in variants:
            row[f"check_cpu_ratio_{name}"] = row[f"check_{name}_cpu_s"] / row["check_gaussian_cpu_s"]
            if warm_lpd:
                row[f"lpd_warm_cpu_ratio_{name}"] = row[f"lpd_{name}_warm_cpu_s"] / row["lpd_gaussian_warm_cpu_s"]
    if profile:
        import jax
        from probgex.inference.predict import density_block
        jax.clear_caches()  # check compiled the log density without the wrapped solve
        record, undo = count_ode_steps()
        first = test[: density_block(test.n_obs)]  # the first block of the held-out cells
        for name in [v for v in variants if v != "gaussian"]:
            record.clear()
            fits[name].log_predictive_density(first, n_samples=100, seed=0)  # compiles anew (wrapped solve)
            row[f"ode_steps_{name}"] = [list(r) for r in record]
            print(name, "ODE solves (rows, steps, accepted, t0, t1):", record, flush=True)
        undo()
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}, indent=1))
    out = HERE / "results" / "flow_lpd_cost_ctrl5.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    out.write_text(json.dumps({"rows": [r for r in rows if r["label"] != label] + [row]}, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit", action="store_true")
    p.add_argument("--time", action="store_true")
    p.add_argument("--label", default="run")
    p.add_argument("--muscat", action="store_true", help="check on the joint-structure muscat split (cold)")
    p.add_argument("--muscat-fit", action="store_true", help="fit and save that split's model first")
    p.add_argument("--check", action="store_true", help="also time `check` (200 draws; one worker thread)")
    p.add_argument("--ctrl5", type=Path, default=None,
                   help="a saved kang_ctrl5 default fit (calibration_everywhere.py --save-fits): check vs its twin")
    p.add_argument("--variants", nargs="*", default=["gaussian", "flow", "flow_tol1e-3"])
    p.add_argument("--warm", action="store_true", help="with --ctrl5: time check warm (each variant run once before)")
    p.add_argument("--warm-lpd", action="store_true", help="with --ctrl5: time log_predictive_density warm too")
    p.add_argument("--profile", action="store_true", help="with --ctrl5: the ODE step counts of the log density")
    a = p.parse_args()
    if a.fit:
        fit_model()
    if a.time:
        time_model(a.label, a.check)
    if a.muscat or a.muscat_fit:
        muscat(a.label, a.muscat_fit)
    if a.ctrl5 is not None:
        ctrl5(a.ctrl5, a.label, a.variants, a.profile, a.warm_lpd, a.warm)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(HERE))
    main()
