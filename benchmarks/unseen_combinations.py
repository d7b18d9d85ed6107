"""Unseen combinations of metadata (issue 16 section 3): the perturbation benchmark of scGen / CPA on
kang_muscat (1,556 PBMCs x 1,267 genes; 5 cell types x ctrl / stim). For each cell type in turn, its
stimulated cells are held out, the model is fitted on the rest (`~ cluster_id + group_id`: the held-out
combination is never seen, only its two main effects) and the held-out cells are predicted from their
metadata and library sizes alone.

Scores per cell type and model, on log1p(counts per 10k) as scGen reports them:
  - R^2 (squared Pearson correlation over genes) of predicted vs observed per-gene mean and sd, over all
    genes and over the cell type's top 100 DE genes (largest |observed stim - ctrl| mean difference of
    log1p CP10k within the type, chosen on all of its cells, as the peers choose them);
  - what the peers do not report: randomized-PIT coverage of the held-out counts at 50 / 90% and the mean
    log predictive density per cell (`Fit.evaluate`), and the coverage over the type's top 100 DE genes
    alone (the same PIT values, only those genes' columns: where the unseen interaction lives);
  - the no-change baseline: the type's control cells as the prediction of its stimulated cells.
Models (`--models`): the NB GLM (additive on the log scale: its prediction of the unseen cells is the type
effect plus the average stimulation effect), the cVAE-NB (Gaussian prior, latent 10), `cvae_diffusion`
(the cVAE with a diffusion prior; or `--learned`), and `scgen`: scGen 2.1.0 (Lotfollahi et al. 2019) in
its own venv (benchmarks/.scgen-venv from `bash benchmarks/peer_env.sh scgen`) through
benchmarks/_scgen_run.py, data exchanged by files; it predicts log1p CP10k values for the type's control
cells shifted by its latent stimulation vector, scored with the same R^2s. scGen gives no predictive
distribution: no coverage or log density for it. Rows merge into --out by (cell type, model).

Usage: python benchmarks/unseen_combinations.py --out benchmarks/results/unseen_combinations.json
       python benchmarks/unseen_combinations.py --models scgen --scgen-epochs 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, machine, write  # noqa: E402

FORMULA = "~ cluster_id + group_id"
# the interaction model: every cell type's own stimulation effect on top of the average one, one column per
# type (`stim` is 1 for stimulated cells; formulaic codes cluster_id in full in `cluster_id:stim` since `stim`
# alone is not a term), so the types are exchangeable and the held-out type's column is all zero in training;
# with coef_prior "learned" its posterior is N(0, tau^2), tau the learned sd of the interaction term
FORMULA_INTERACTION = "~ cluster_id + group_id + cluster_id:stim"
# the same with formulaic's treatment coding of `cluster_id * group_id`: the reference type (B cells) carries
# the stimulation main effect, so a held-out type is predicted from B cells' response (+ its unseen interaction)
FORMULA_TREATMENT = "~ cluster_id * group_id"
LEVELS = (0.5, 0.9)
HERE = Path(__file__).resolve().parent
SCGEN_PY = HERE / ".scgen-venv" / "bin" / "python"
PROBGEX_MODELS = ("glm", "cvae", "cvae_diffusion", "glm_interaction", "glm_interaction_per_gene",
                  "glm_interaction_per_gene_level", "glm_interaction_all_terms", "glm_interaction_treatment")
NO_CHANGE = "no change (the type's ctrl cells)"


def log_cp10k(x: np.ndarray) -> np.ndarray:
    lib = np.maximum(x.sum(-1, keepdims=True), 1.0)
    return np.log1p(x / lib * 1e4)


def r2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1] ** 2)


def models(names):
    import probgex as pg

    make = {"glm": lambda: pg.Model(FORMULA, likelihood="nb"),
            "cvae": lambda: pg.Model(FORMULA, likelihood="nb", latent=pg.latent.Gaussian(dim=10)),
            "cvae_diffusion": lambda: pg.Model(FORMULA, likelihood="nb", latent=pg.latent.Diffusion(dim=10)),
            "glm_interaction": lambda: pg.Model(FORMULA_INTERACTION, likelihood="nb", coef_prior="learned-interactions"),
            "glm_interaction_per_gene": lambda: pg.Model(FORMULA_INTERACTION, likelihood="nb",
                                                         coef_prior="learned-interactions-per-gene"),
            "glm_interaction_per_gene_level": lambda: pg.Model(FORMULA_INTERACTION, likelihood="nb",
                                                               coef_prior="learned-interactions-per-gene-level"),
            "glm_interaction_all_terms": lambda: pg.Model(FORMULA_INTERACTION, likelihood="nb", coef_prior="learned"),
            "glm_interaction_treatment": lambda: pg.Model(FORMULA_TREATMENT, likelihood="nb",
                                                          coef_prior="learned-interactions")}
    return {n: make[n] for n in names if n in make}


def interaction_summary(fit, deg: np.ndarray) -> dict:
    """A learned-prior GLM's term sds, and per gene the root mean square of its seen interaction coefficients
    (posterior means; the held-out type's column is the prior's 0), median over all genes and over the top
    100 DE genes: whether one sd for the term suits the genes whose response differs between types."""
    tau = np.asarray(fit.params["coef_prior_sd"], np.float64)  # per learned term, in formula order
    terms = np.asarray(fit.dims.coef_terms)
    cols = [j for j in np.flatnonzero(terms == terms.max()) if j not in fit.dims.coef_unseen]  # the interaction
    coefs = fit.coefficients()
    rms = np.sqrt((coefs["mean"].values[cols] ** 2).mean(0))
    names = list(fit.encoding.columns)
    out = {}
    if "coef_gene_sd_loc" in fit.params:  # per-gene sds: tau_t exp(loc) per gene, and the unseen column's sd
        gene_sd = tau[-1] * np.exp(np.asarray(fit.params["coef_gene_sd_loc"], np.float64)[:, -1])
        unseen_sd = coefs["sd"].values[list(fit.dims.coef_unseen)].max(0)
        out = {"gene_sd_median_all": float(np.median(gene_sd)), "gene_sd_median_deg": float(np.median(gene_sd[deg])),
               "unseen_sd_median_all": float(np.median(unseen_sd)), "unseen_sd_median_deg": float(np.median(unseen_sd[deg])),
               "gene_sd_vs_rms_spearman": float(pd_spearman(gene_sd, rms))}
    for k in ("coef_level_loc", "coef_level_scale", "coef_level_pop_loc", "coef_level_pop_scale"):  # per-level scales:
                                                                                # the seen levels, the population
        if k in fit.params:
            out[k] = np.asarray(fit.params[k], np.float64).round(4).tolist()
    return {**out, "formula": fit.spec.formula, "coef_prior": fit.spec.coef_prior, "coef_prior_sd": tau.tolist(), "coef_terms": terms.tolist(),
            "unseen_columns": [names[j] for j in fit.dims.coef_unseen],
            "interaction_rms_median_all": float(np.median(rms)), "interaction_rms_median_deg": float(np.median(rms[deg]))}


def pd_spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic


def score(pred_counts: np.ndarray, obs_counts: np.ndarray, deg: np.ndarray) -> dict:
    """R^2 of per-gene means and sds of log1p CP10k: predicted (pooled draws x cells) vs observed."""
    p = log_cp10k(pred_counts.reshape(-1, pred_counts.shape[-1]).astype(np.float64))
    return score_log(p, obs_counts, deg)


def score_log(p: np.ndarray, obs_counts: np.ndarray, deg: np.ndarray) -> dict:
    """`score` for a prediction already on the log1p CP10k scale (cells x genes), as scGen makes it."""
    o = log_cp10k(obs_counts.astype(np.float64))
    pm, ps, om, os_ = p.mean(0), p.std(0), o.mean(0), o.std(0)
    return {"r2_mean": r2(pm, om), "r2_sd": r2(ps, os_), "r2_mean_deg": r2(pm[deg], om[deg]),
            "r2_sd_deg": r2(ps[deg], os_[deg])}


def pit_coverage(pit: np.ndarray, levels) -> list[float]:
    """Share of randomized PIT values inside each level's central band (as `Fit.evaluate` pools them)."""
    return [float(np.mean((pit >= (1 - a) / 2) & (pit <= (1 + a) / 2))) for a in levels]


def run_scgen(path: Path, epochs: int, seed: int, types: list[str]) -> tuple[dict, dict]:
    """scGen in its venv: {cell type: predicted log1p CP10k (cells x genes)} and its run record."""
    if not SCGEN_PY.exists():
        raise SystemExit(f"{SCGEN_PY} is missing: run bash benchmarks/peer_env.sh scgen first")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(SCGEN_PY), str(HERE / "_scgen_run.py"), "--h5ad", str(path), "--out-dir", tmp, "--epochs",
               str(epochs), "--seed", str(seed), "--cell-types", *types]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if r.returncode != 0:
            raise SystemExit(f"_scgen_run.py failed:\n{r.stderr[-3000:]}")
        record = json.loads((Path(tmp) / "scgen.json").read_text())
        preds = {run["cell_type"]: np.load(Path(tmp) / run["file"]) for run in record["runs"]}
    return preds, record


def table(rows: list[dict]) -> str:
    """The README's markdown table of a results file's rows."""
    def f(r, k):
        return f"{r[k]:.3f}" if k in r else "-"

    out = ["| cell type | model | R² mean (all) | R² sd (all) | R² mean (top 100 DEG) | R² sd (top 100 DEG) "
           "| coverage 50 / 90 (all) | coverage 50 / 90 (top 100 DEG) | log p / cell |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cov = f"{f(r, 'coverage_50')} / {f(r, 'coverage_90')}" if "coverage_50" in r else "-"
        deg = f"{f(r, 'coverage_50_deg')} / {f(r, 'coverage_90_deg')}" if "coverage_50_deg" in r else "-"
        lpd = f"{r['lpd_per_cell']:.1f}" if "lpd_per_cell" in r else "-"
        out.append(f"| {r['cell_type']} | {r['model']} | {f(r, 'r2_mean')} | {f(r, 'r2_sd')} | {f(r, 'r2_mean_deg')} "
                   f"| {f(r, 'r2_sd_deg')} | {cov} | {deg} | {lpd} |")
    return "\n".join(out)


def report(path: Path) -> Path:
    """A figure of a results file: R^2 of per-gene means (all genes, top-100 DE genes) per cell type and model."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(path.read_text())["rows"]
    types = sorted({r["cell_type"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / len(models)
    for ax, key, title in zip(axes, ("r2_mean", "r2_mean_deg"), ("all genes", "top 100 DE genes of the type")):
        for k, m in enumerate(models):
            vals = [next((r[key] for r in rows if r["cell_type"] == t and r["model"] == m), np.nan) for t in types]
            ax.bar(np.arange(len(types)) + k * width, vals, width, label=m.split(" (")[0])
        ax.set_xticks(np.arange(len(types)) + width * (len(models) - 1) / 2, types, rotation=20, ha="right")
        ax.set_title(f"unseen type x stim: R^2 of means, {title}", fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("R^2, predicted vs observed means")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--report", type=Path, help="draw the figure of a results file and stop")
    p.add_argument("--learned", action="store_true", help="add cvae_diffusion to --models")
    p.add_argument("--models", nargs="+", default=["glm", "cvae"], choices=[*PROBGEX_MODELS, "scgen"])
    p.add_argument("--scgen-epochs", type=int, default=100, help="scGen's max_epochs (early stopping on)")
    p.add_argument("--types", nargs="+", default=None, help="only these cell types (default: all five)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "unseen_combinations.json")
    args = p.parse_args()
    if args.report is not None:
        print(table(json.loads(args.report.read_text())["rows"]))
        print(report(args.report))
        return
    warnings.simplefilter("ignore")
    names = list(dict.fromkeys(args.models + (["cvae_diffusion"] if args.learned else [])))
    a = load("kang_muscat")
    a.obs["stim"] = (a.obs["group_id"].astype(str) == "stim").astype(float)  # the interaction formula's column
    x = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X)
    all_types = sorted(a.obs["cluster_id"].astype(str).unique())
    types = args.types or all_types
    rows, extra = [], {}
    scgen_pred = {}
    if "scgen" in names:
        from _common import DATA

        scgen_pred, extra["scgen"] = run_scgen(DATA / "kang_muscat.h5ad", args.scgen_epochs, args.seed, types)
        print({k: v for k, v in extra["scgen"].items() if k != "runs"}, flush=True)

    def save():
        """Merge this run's rows into --out as it is now (another run may have written it meanwhile)."""
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        mine = {(r["cell_type"], r["model"]) for r in rows}
        merged = [r for r in old.get("rows", []) if (r["cell_type"], r["model"]) not in mine] + rows
        kinds = [NO_CHANGE, "scgen", *PROBGEX_MODELS]
        merged.sort(key=lambda r: (all_types.index(r["cell_type"]), kinds.index(r["model"])))
        keep = {k: v for k, v in old.items() if k not in ("rows", "machine", "formula")}
        if "scgen" in extra and "scgen" in keep:  # keep the records of the types run before
            ran = {r["cell_type"] for r in extra["scgen"]["runs"]}
            extra["scgen"]["runs"] = [r for r in keep["scgen"]["runs"] if r["cell_type"] not in ran] + \
                extra["scgen"]["runs"]
        write(args.out, {"machine": machine(), "formula": FORMULA, "rows": merged, **keep, **extra})

    for cell_type in types:
        in_type = (a.obs["cluster_id"].astype(str) == cell_type).to_numpy()
        stim = (a.obs["group_id"].astype(str) == "stim").to_numpy()
        test_mask, ctrl_mask = in_type & stim, in_type & ~stim
        train, test = a[~test_mask].copy(), a[test_mask].copy()
        diff = log_cp10k(x[test_mask].astype(float)).mean(0) - log_cp10k(x[ctrl_mask].astype(float)).mean(0)
        deg = np.argsort(-np.abs(diff))[:100]
        y = x[test_mask]
        base = score(x[ctrl_mask][None], y, deg)
        rows.append({"cell_type": cell_type, "model": NO_CHANGE, "n_test": int(test_mask.sum()), **base})
        print(rows[-1], flush=True)
        if cell_type in scgen_pred:
            run = next(r for r in extra["scgen"]["runs"] if r["cell_type"] == cell_type)
            rows.append({"cell_type": cell_type, "model": "scgen", "n_test": int(test_mask.sum()),
                         **score_log(scgen_pred[cell_type].astype(np.float64), y, deg),
                         "n_predicted_cells": int(scgen_pred[cell_type].shape[0]),
                         "epochs_run": run["epochs_run"], "seconds": run["train_seconds"]})
            print(rows[-1], flush=True)
        for name, make in models(names).items():
            t = time.perf_counter()
            fit = make().fit(train, seed=args.seed, progress=False)
            lib = y.sum(1).astype(float)
            pred = fit.predict(test.obs, n_samples=100, library_size=lib, seed=args.seed)
            ev = fit.evaluate(test, n_samples=100, levels=LEVELS, seed=args.seed)
            cov = ev["coverage"].values
            cov_deg = pit_coverage(ev["pit"].values[:, deg], LEVELS)
            rows.append({"cell_type": cell_type, "model": name, "n_test": int(test_mask.sum()),
                         **score(pred["counts"].values, y, deg),
                         "coverage_50": float(cov[0]), "coverage_90": float(cov[1]),
                         "coverage_50_deg": cov_deg[0], "coverage_90_deg": cov_deg[1],
                         "lpd_per_cell": float(ev.attrs["mean_log_predictive_density"]),
                         "seconds": time.perf_counter() - t})
            if name.startswith("glm_interaction"):
                rows[-1].update(interaction_summary(fit, deg))
            print(rows[-1], flush=True)
            save()
    save()


if __name__ == "__main__":
    main()
