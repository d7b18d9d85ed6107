"""Issue 5: the residual story around stage-1 point predictors, on real held-out data, from metadata only.

For each dataset (the splits and formulas of benchmarks/calibration_check.py) and each stage-1 predictor
(`glm`: the probgex GLM's posterior-mean prediction; `mlp`: a Flax MLP trained by squared error on
log1p(counts per 10k), the way foundation models are trained), both trained on the training observations
only:
  * the point predictor alone: RMSE on log1p(counts per 10k) of the test observations (no intervals);
  * the residual model around it (stage 1 frozen): `check(fit, test)` coverage at 50/80/90/95%, the
    worst decile's deviation, genes within 3 SE, log predictive density per observation; RMSE on the same
    scale of log1p of its predictive mean count, and of the predictive mean of log1p(cp10k) (the point
    prediction a squared error on that scale asks for, what the MLP is trained on); and the share of the
    observed per-gene variance of log1p(cp10k) across test observations that predictive samples
    reproduce (sum over genes of replicated / observed variance, and the median per-gene ratio),
    predictive samples drawn at each test observation's own library size.
  * `--with-cvae`: the plain cVAE on the same split with the same numbers, for comparison.

`--no-latent`: the residual GLM instead (stage 1 as offset, per-gene corrections and dispersions, no latent;
the story for bulk data with tens of samples), merged into the stored rows as `residual_<kind>_nolatent`.

Usage:
  .venv/bin/python benchmarks/residual.py --rows ctrl5 yeast [--with-cvae]
  .venv/bin/python benchmarks/residual.py --rows yeast gtex --no-latent
Results: benchmarks/results/residual/summary.json; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, timed, write  # noqa: E402
from calibration_check import CVAE_SC, CVAE_SMALL, split_for  # noqa: E402

OUT = RESULTS / "residual"
LEVELS = ("0.5", "0.8", "0.9", "0.95")
DATASETS = {  # name: (dataset, split, formula, latent/network options)
    "yeast": ("schurch_yeast", "yeast", "~ strain", CVAE_SMALL),
    "gtex": ("gtex_brain", "gtex", "~ class + sex + age", CVAE_SMALL),
    "ctrl5": ("kang_ctrl5", "kang_ctrl5_heldout.txt", "~ cluster_id + sample_id", CVAE_SC),
    "muscat": ("kang_muscat", "kang_muscat_heldout.txt", "~ cluster_id + group_id", CVAE_SC),
}


def log1p_cp10k(x: np.ndarray, lib: np.ndarray, scale: float = 1e4) -> np.ndarray:
    return np.log1p(x / lib[..., None] * scale)


def predictive_numbers(fit, test, n_samples: int, seed: int, chunk: int = 128) -> dict:
    """RMSE of the predictive mean and the variance share, on log1p(cp10k), at observed library sizes."""
    data = fit.data(test)
    x = data.rows(np.arange(data.n_obs)).astype(np.float64)
    lib = data.library_size
    y = log1p_cp10k(x, lib)
    means, log_means = np.empty_like(y), np.empty_like(y)
    s1, s2 = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    for start in range(0, data.n_obs, chunk):
        rows = np.arange(start, min(start + chunk, data.n_obs))
        p = fit.predict(data.obs.iloc[rows], n_samples=n_samples, library_size=lib[rows], seed=seed + start)
        means[rows] = log1p_cp10k(p["mean"].values, lib[rows])
        rep = log1p_cp10k(p["counts"].values.astype(np.float64), lib[rows])
        log_means[rows] = rep.mean(0)
        s1 += rep.sum((0, 1))
        s2 += (rep ** 2).sum((0, 1))
    m = n_samples * data.n_obs
    var_rep = s2 / m - (s1 / m) ** 2
    var_obs = y.var(0)
    keep = var_obs > 0
    return {"rmse_mean": float(np.sqrt(np.mean((means - y) ** 2))),
            # the point prediction a squared error on log1p(cp10k) asks for: E[log1p(cp10k(x))] over samples
            "rmse_log1p_mean": float(np.sqrt(np.mean((log_means - y) ** 2))),
            "variance_share_total": float(var_rep[keep].sum() / var_obs[keep].sum()),
            "variance_share_median": float(np.median(var_rep[keep] / var_obs[keep]))}


def gaussian_log1p_baseline(mlp, train, test, formula: str, seed: int) -> dict:
    """The literature's simple baseline around the MLP: y = log1p(cp10k) ~ N(MLP(c), sigma_g^2), sigma_g the
    sd of the training residuals; counts x = max(0, round(expm1(y) l / 1e4)), so P(x = k) =
    Phi(g(k + 1/2)) - Phi(g(k - 1/2)) with g(v) = (log1p(v 1e4 / l) - MLP(c)) / sigma (all mass below 1/2
    at 0): a proper count pmf, scored like the models (randomized PIT coverage, log predictive density)."""
    import probgex as pg
    from scipy.stats import norm

    tr = pg.from_anndata(train, encoding=mlp.encoding, genes=list(mlp.var_names))
    te = pg.from_anndata(test, encoding=mlp.encoding, genes=list(mlp.var_names))
    # on the MLP's own scale (counts per 1e4, or per median library for bulk: MLPMean.scale)
    y_tr = log1p_cp10k(tr.rows(np.arange(tr.n_obs)).astype(np.float64), tr.library_size, mlp.scale)
    sigma = np.maximum((y_tr - mlp.predict_log1p(tr.design)).std(0), 1e-3)
    x = te.rows(np.arange(te.n_obs)).astype(np.float64)
    lib = te.library_size[:, None]
    yhat = mlp.predict_log1p(te.design)
    g = lambda v: (np.log1p(np.maximum(v, 0.0) / lib * mlp.scale) - yhat) / sigma  # noqa: E731
    upper = norm.cdf(g(x + 0.5))
    below = np.where(x > 0, norm.cdf(g(x - 0.5)), 0.0)
    p = np.maximum(upper - below, 1e-300)
    u = below + np.random.default_rng(seed).random(x.shape) * p
    y = log1p_cp10k(x, te.library_size)
    yhat_cp10k = np.log1p(np.expm1(np.maximum(yhat, 0.0)) / mlp.scale * 1e4)  # the table's scale
    rmse = float(np.sqrt(np.mean((yhat_cp10k - y) ** 2)))
    return {"coverage": {a: float(np.mean(np.abs(u - 0.5) <= float(a) / 2)) for a in LEVELS},
            "lpd": float(np.log(p).sum(1).mean()), "rmse_mean": rmse, "stage1": "mlp", "stage1_rmse": rmse}


def stage1_rmse(stage1, fit, test) -> float:
    data = fit.data(test)
    y = log1p_cp10k(data.rows(np.arange(data.n_obs)).astype(np.float64), data.library_size)
    pred = np.log1p(np.exp(stage1.log_fraction(data.obs, fit.var_names, data.library_size)) * 1e4)
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def run(name: str, with_cvae: bool, seed: int, n_samples: int, no_latent: bool = False) -> dict:
    import probgex as pg
    from probgex.diagnostics import check
    from probgex.mean import GLMMean, MLPMean

    dataset, split, formula, opts = DATASETS[name]
    train, test = split_for(dataset, split)
    kw = {} if opts["max_epochs"] is None else {"max_epochs": opts["max_epochs"]}
    net = dict(latent=pg.latent.Gaussian(dim=opts["dim"]), encoder=opts["hidden"], decoder=opts["hidden"])
    glm, t_glm = timed(pg.Model(formula, "nb").fit, train, seed=seed, progress=False)
    mlp, t_mlp = timed(MLPMean.train, pg.from_anndata(train, formula), seed=seed, progress=False)
    models = {"glm": GLMMean.from_fit(glm), "mlp": mlp}
    rows = {}
    if no_latent:  # the residual GLM (stage 1 as offset, no latent): merged into the stored row
        net, kw = {}, {}
    for kind, stage1 in models.items():
        fit, t_fit = timed(pg.Model(formula, "nb", mean=stage1, **net).fit, train, seed=seed, progress=False, **kw)
        report, _ = timed(check, fit, test, n_samples=n_samples, seed=seed, progress=False)
        s = report.summary()
        rows[f"residual_{kind}" + ("_nolatent" if no_latent else "")] = {
            "stage1": kind, "stage1_rmse": stage1_rmse(stage1, fit, test),
            "stage1_seconds": t_glm if kind == "glm" else t_mlp, "fit_seconds": t_fit,
            "coverage": {a: s["coverage"][a] for a in LEVELS},
            "worst_decile_deviation": max(s["worst_decile_deviation"].values()),
            "genes_within_3se_90": s["genes_within_3se"]["0.9"], "lpd": s["mean_log_predictive_density"],
            **predictive_numbers(fit, test, n_samples, seed)}
    if not no_latent:
        rows["gaussian_log1p_mlp"] = gaussian_log1p_baseline(mlp, train, test, formula, seed)
    if with_cvae and not no_latent:
        fit, t_fit = timed(pg.Model(formula, "nb", **net).fit, train, seed=seed, progress=False, **kw)
        s = check(fit, test, n_samples=n_samples, seed=seed, progress=False).summary()
        rows["cvae"] = {"stage1": None, "fit_seconds": t_fit, "coverage": {a: s["coverage"][a] for a in LEVELS},
                        "worst_decile_deviation": max(s["worst_decile_deviation"].values()),
                        "genes_within_3se_90": s["genes_within_3se"]["0.9"], "lpd": s["mean_log_predictive_density"],
                        **predictive_numbers(fit, test, n_samples, seed)}
    return {"dataset": dataset, "formula": formula, "n_train": int(train.n_obs), "n_test": int(test.n_obs),
            "n_genes": int(train.n_vars), "seed": seed, "n_samples": n_samples, "models": rows,
            "machine": machine()}


def table(stored: dict) -> str:
    head = ("| dataset | model | stage-1 RMSE | RMSE log1p(E x) | RMSE E log1p(x) | cov 50 | cov 80 | cov 90 | cov 95 | "
            "worst dec. dev | genes in 3SE @90 | LPD/obs | var. share (total / median gene) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in stored.values():
        for model, m in r["models"].items():
            c = m["coverage"]
            if "worst_decile_deviation" not in m:  # the Gaussian-on-log1p baseline: coverage and LPD only
                lines.append(f"| {r['dataset']} `{r['formula']}` | {model} | {m['stage1_rmse']:.3f} | - | - "
                             f"| {c['0.5']:.3f} | {c['0.8']:.3f} | {c['0.9']:.3f} | {c['0.95']:.3f} | - | - "
                             f"| {m['lpd']:.1f} | - |")
                continue
            s1 = "-" if m.get("stage1_rmse") is None else f"{m['stage1_rmse']:.3f}"
            lm = "-" if m.get("rmse_log1p_mean") is None else f"{m['rmse_log1p_mean']:.3f}"
            lines.append(f"| {r['dataset']} `{r['formula']}` | {model} | {s1} | {m['rmse_mean']:.3f} | {lm} "
                         f"| {c['0.5']:.3f} | {c['0.8']:.3f} | {c['0.9']:.3f} | {c['0.95']:.3f} "
                         f"| {m['worst_decile_deviation']:.3f} | {m['genes_within_3se_90']:.3f} | {m['lpd']:.1f} "
                         f"| {m['variance_share_total']:.2f} / {m['variance_share_median']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--with-cvae", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--no-latent", action="store_true",
                   help="fit only the residual GLM (no latent) around each stage 1, merged into the stored rows")
    args = p.parse_args(argv)
    path = OUT / "summary.json"
    if not args.table_only:
        for name in args.rows:
            row = run(name, args.with_cvae, args.seed, args.n_samples, args.no_latent)
            stored = json.loads(path.read_text()) if path.exists() else {}
            if args.no_latent and name in stored:
                stored[name]["models"].update(row["models"])
            else:
                stored[name] = row
            write(path, stored)
            print(f"{name} done", flush=True)
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
