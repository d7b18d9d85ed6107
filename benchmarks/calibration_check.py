"""Calibration on real held-out data, predicting from metadata only, via `probgex.diagnostics.check`
(issue 4), for every story built so far: rows = dataset x model.

Every row is fitted on the training observations only (the fit holds out its own random 10% of them for
early stopping, the default), then `check(fit, test, n_samples=100)` scores the test observations, which
the fit never sees, from their metadata and observed library sizes.

Rows (select with --rows):
  yeast_glm / yeast_cvae     schurch_yeast `~ strain`, flagged_bad_rep removed, the split of
                             benchmarks/calibration.py's yeast_split (every 6th clean replicate -> test).
                             GLM NB; cVAE NB (Gaussian dim 4, (64,) encoder/decoder).
  gtex_glm / gtex_cvae       gtex_brain `~ class + sex + age` (40 samples). Test rule (fixed, deterministic):
                             a sample is *eligible* if each of its class, sex and age levels has >= 3
                             samples in the whole data set (35 samples: drops ages 20-29, 30-39, 70-79);
                             test = every 4th eligible sample in file order (0-based eligible positions
                             3, 7, ..., 31 -> 8 samples). Asserted: every test level also occurs in training.
                             GLM NB; cVAE NB (dim 4, (64,)).
  ctrl5_glm_cluster          kang_ctrl5, fixed split splits/kang_ctrl5_heldout.txt: GLM NB `~ cluster_id`
                             (the peers' baseline).
  ctrl5_glm / ctrl5_cvae     same split: GLM NB / cVAE NB `~ cluster_id + sample_id` (dim 10, (128,),
                             max_epochs 100 for the cVAE).
  muscat_glm / muscat_cvae   kang_muscat, fixed split splits/kang_muscat_heldout.txt: GLM NB / cVAE NB
                             `~ cluster_id + group_id` (dim 10, (128,), max_epochs 100 for the cVAE).
  ctrl5_residual / muscat_residual   the residual story around the GLM's prediction (stage 1 the GLM NB
                             fitted on the same training cells, stage 2 as the cVAE).
  yeast_glm_sf / gtex_glm_sf the GLM with median-of-ratios library sizes (library="size_factors").
  ctrl5_diffusion            the cVAE with a learned diffusion prior (VP-SDE score model, 6,000 steps;
                             probability-flow ODE sampling).
  harmony_glm / harmony_cvae kang_harmony `~ condition` (2,000 PBMCs, ctrl / stim; the formula does not
                             name the cell types): a random 10% of cells held out (numpy seed 0), the
                             2,000 genes with the largest variance of log1p(counts per 10,000) over the
                             training cells. GLM NB; cVAE NB (dim 10, (128,), max_epochs 100).
  *_quality                  the same row with sample_quality="on": a per-cell scale of the NB
                             overdispersion with a fitted Student-t prior, integrated over for a held-out
                             cell (probgex.models.quality; issue 13 item 3, the top expression decile).

Joint calibration: the gene programs (the 20 most correlated of the 50 most variable genes, and random
sets of 20) are chosen on the training cells (`check(..., reference=train)`), on library-normalized
log1p counts net of the design's effects; rows written before 2026-11-25 17:30 UTC chose them on the
held-out cells, on raw log1p counts, which biased the correlated program's coverage low.

Per row: `Report.save`-style report.json (Report.summary()) under benchmarks/results/check/<row>/ and one
row of headline numbers merged into benchmarks/results/check/summary.json; a markdown table of all stored
rows is printed.

Usage:
  .venv/bin/python benchmarks/calibration_check.py                 # all rows
  .venv/bin/python benchmarks/calibration_check.py --rows gtex_glm gtex_cvae
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fixed_split, load, machine, timed, write  # noqa: E402
from calibration import yeast_split  # noqa: E402

OUT = RESULTS / "check"
LEVELS = ("0.5", "0.8", "0.9", "0.95")
GTEX_COVARIATES = ("class", "sex", "age")
GTEX_MIN_LEVEL = 3
GTEX_EVERY = 4


def gtex_split():
    a = load("gtex_brain")
    obs = a.obs
    eligible = np.ones(a.n_obs, bool)
    for c in GTEX_COVARIATES:
        counts = obs[c].astype(str).map(obs[c].astype(str).value_counts()).to_numpy()
        eligible &= counts >= GTEX_MIN_LEVEL
    pos = np.flatnonzero(eligible)[GTEX_EVERY - 1 :: GTEX_EVERY]
    test = np.zeros(a.n_obs, bool)
    test[pos] = True
    train, held = a[~test].copy(), a[test].copy()
    for c in GTEX_COVARIATES:
        missing = set(held.obs[c].astype(str)) - set(train.obs[c].astype(str))
        assert not missing, f"gtex test levels of {c} absent from training: {missing}"
    return train, held


CVAE_SMALL = {"dim": 4, "hidden": (64,), "max_epochs": None}
CVAE_SC = {"dim": 10, "hidden": (128,), "max_epochs": 100}

ROWS = {
    # name: (dataset, split, formula, story, cvae options)
    "yeast_glm": ("schurch_yeast", "yeast", "~ strain", "glm", None),
    "yeast_cvae": ("schurch_yeast", "yeast", "~ strain", "cvae", CVAE_SMALL),
    "gtex_glm": ("gtex_brain", "gtex", "~ class + sex + age", "glm", None),
    "gtex_cvae": ("gtex_brain", "gtex", "~ class + sex + age", "cvae", CVAE_SMALL),
    "ctrl5_glm_cluster": ("kang_ctrl5", "kang_ctrl5_heldout.txt", "~ cluster_id", "glm", None),
    "ctrl5_glm": ("kang_ctrl5", "kang_ctrl5_heldout.txt", "~ cluster_id + sample_id", "glm", None),
    "ctrl5_cvae": ("kang_ctrl5", "kang_ctrl5_heldout.txt", "~ cluster_id + sample_id", "cvae", CVAE_SC),
    "muscat_glm": ("kang_muscat", "kang_muscat_heldout.txt", "~ cluster_id + group_id", "glm", None),
    "muscat_cvae": ("kang_muscat", "kang_muscat_heldout.txt", "~ cluster_id + group_id", "cvae", CVAE_SC),
    "ctrl5_residual": ("kang_ctrl5", "kang_ctrl5_heldout.txt", "~ cluster_id + sample_id", "residual", CVAE_SC),
    "muscat_residual": ("kang_muscat", "kang_muscat_heldout.txt", "~ cluster_id + group_id", "residual", CVAE_SC),
    "yeast_glm_sf": ("schurch_yeast", "yeast", "~ strain", "glm_sf", None),
    "gtex_glm_sf": ("gtex_brain", "gtex", "~ class + sex + age", "glm_sf", None),
    "ctrl5_diffusion": ("kang_ctrl5", "kang_ctrl5_heldout.txt", "~ cluster_id + sample_id", "diffusion", CVAE_SC),
    "harmony_glm": ("kang_harmony", "harmony", "~ condition", "glm", None),
    "harmony_cvae": ("kang_harmony", "harmony", "~ condition", "cvae", CVAE_SC),
}
for _base in ("ctrl5_glm_cluster", "ctrl5_cvae", "muscat_cvae", "harmony_glm", "harmony_cvae"):
    ROWS[_base + "_quality"] = ROWS[_base]  # the same row with sample_quality="on"
HARMONY_GENES = 2000


def harmony_split():
    """kang_harmony: a random 10% of cells held out (seed 0), the HARMONY_GENES genes with the largest
    variance of log1p(counts per 10,000) over the training cells."""
    a = load("kang_harmony")
    test = np.zeros(a.n_obs, bool)
    test[np.random.default_rng(0).permutation(a.n_obs)[: round(0.1 * a.n_obs)]] = True
    x = a.X[~test]
    x = np.asarray(x.todense() if hasattr(x, "todense") else x, float)
    v = np.log1p(x / x.sum(1, keepdims=True) * 1e4).var(0)
    genes = np.sort(np.argsort(-v)[:HARMONY_GENES])
    return a[~test][:, genes].copy(), a[test][:, genes].copy()
DIFFUSION_STEPS = 6000  # prior optimizer steps, as in benchmarks/sampling.py


def split_for(dataset: str, split: str):
    if split == "yeast":
        return yeast_split()
    if split == "gtex":
        return gtex_split()
    if split == "harmony":
        return harmony_split()
    return fixed_split(load(dataset), split)


def headline(s: dict) -> dict:
    """The row's numbers from Report.summary()."""
    progs = s["gene_programs"]
    rand = [v for k, v in progs.items() if k.startswith("random")]
    pooled = s["pit_uniformity"]["pooled"]
    return {
        "n_test": s["n_obs"], "n_genes": s["n_genes"],
        "coverage": {a: s["coverage"][a] for a in LEVELS},
        "worst_decile_deviation": s["worst_decile_deviation"],
        "worst_decile_deviation_max": max(s["worst_decile_deviation"].values()),
        "genes_within_3se_90": s["genes_within_3se"]["0.9"],
        "genes_within_3se": s["genes_within_3se"],
        "pit_pooled_inside_band": pooled["inside_band"], "pit_pooled_max_excursion": pooled["max_excursion"],
        "pit_pooled_ks": pooled["ks_statistic"],
        "fraction_genes_passing": s["pit_uniformity"]["fraction_genes_passing"],
        "lpd": s["mean_log_predictive_density"], "crps": s["mean_crps"],
        "top_decile_coverage": {a: s["coverage_by_decile"][a][-1] for a in LEVELS},
        "program_correlated_cov90": progs["correlated"]["coverage"]["0.9"] if "correlated" in progs else None,
        "program_correlated_coverage": progs["correlated"]["coverage"] if "correlated" in progs else None,
        "program_random_cov90_mean": float(np.mean([v["coverage"]["0.9"] for v in rand])) if rand else None,
        "program_correlated_inside_band": (progs["correlated"]["uniformity"]["inside_band"]
                                           if "correlated" in progs else None),
    }


def run_row(name: str, seed: int, patience: int | None, n_samples: int) -> dict:
    from probgex.diagnostics import check
    from probgex.fit import Model
    from probgex.latent import Diffusion, Gaussian
    from probgex.mean import GLMMean
    dataset, split, formula, story, opts = ROWS[name]
    train, test = split_for(dataset, split)
    kw = {}
    quality = "on" if name.endswith("_quality") else "off"
    if story in ("glm", "glm_sf"):
        model = Model(formula, likelihood="nb", library="size_factors" if story == "glm_sf" else "observed",
                      sample_quality=quality)
    else:
        latent = (Diffusion(dim=opts["dim"], training={"max_steps": DIFFUSION_STEPS}) if story == "diffusion"
                  else Gaussian(dim=opts["dim"]))
        mean = None
        if story == "residual":  # stage 1: the GLM's posterior-mean prediction, fitted on the same cells
            mean = GLMMean.from_fit(Model(formula, likelihood="nb").fit(train, seed=seed, progress=False))
        model = Model(formula, likelihood="nb", latent=latent, encoder=opts["hidden"], decoder=opts["hidden"],
                      mean=mean, sample_quality=quality)
        if opts["max_epochs"] is not None:
            kw["max_epochs"] = opts["max_epochs"]
    note = None
    try:
        fit, t_fit = timed(model.fit, train, seed=seed, patience=patience, progress=False, **kw)
    except FloatingPointError as e:  # recorded in the row; retried once with a 10x lower learning rate
        note = f"default fit failed: {e}; refitted with learning_rate=1e-4"
        print(f"{name}: {note}", flush=True)
        fit, t_fit = timed(model.fit, train, seed=seed, patience=patience, progress=False, learning_rate=1e-4, **kw)
    report, t_check = timed(check, fit, test, n_samples=n_samples, seed=seed, progress=False, reference=train)
    s = report.summary()
    folder = OUT / (name if seed == 0 else f"{name}_seed{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(s, indent=2, default=_jsonable))
    row = {"name": name, "dataset": dataset, "sample_quality": quality, "model": f"{story} nb"
           + ("" if opts is None else f" (dim {opts['dim']}, {opts['hidden']})"), "formula": formula,
           "programs_chosen_on": "training data",
           "n_train": int(train.n_obs), "epochs_run": len(fit.history.train), "best_epoch": fit.history.best_epoch,
           "fit_seconds": t_fit, "check_seconds": t_check, "seed": seed, "n_samples": n_samples}
    row.update(headline(s))
    if quality == "on":
        row["quality_sd"] = float(fit.params["quality_sd"])
        if "quality_mean" in fit.params:
            row["quality_mean"] = float(fit.params["quality_mean"])
    if note:
        row["note"] = note
    row["worst_genes"] = s["worst_genes"][:5]
    return row


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v))


def table(rows: list[dict]) -> str:
    head = ("| dataset | model | formula | n test | genes | cov 50 | cov 80 | cov 90 | cov 95 | worst dec. dev | "
            "genes in 3SE @90 | PIT pooled in band (exc., KS) | genes PIT pass | LPD/obs | CRPS | "
            "prog corr cov90 | prog rand cov90 | prog corr unif | fit s | check s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for r in rows:
        c = r["coverage"]
        lines.append(
            f"| {r['dataset']} | {r['model']} | `{r['formula']}` | {r['n_test']} | {r['n_genes']} "
            f"| {c['0.5']:.3f} | {c['0.8']:.3f} | {c['0.9']:.3f} | {c['0.95']:.3f} "
            f"| {r['worst_decile_deviation_max']:.3f} | {r['genes_within_3se_90']:.3f} "
            f"| {r['pit_pooled_inside_band']} ({r['pit_pooled_max_excursion']:.2f}, {r['pit_pooled_ks']:.4f}) "
            f"| {r['fraction_genes_passing']:.3f} | {r['lpd']:.1f} | {r['crps']:.4g} "
            f"| {f(r['program_correlated_cov90'], '.3f')}{'' if r.get('programs_chosen_on') else ' (h)'} "
            f"| {f(r['program_random_cov90_mean'], '.3f')} "
            f"| {r['program_correlated_inside_band']} | {r['fit_seconds']:.0f} | {r['check_seconds']:.0f} |")
    lines.append("\n(h): a row from before 2026-11-25 17:30 UTC, its programs chosen on the held-out cells (biased low).")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: Model.fit's)")
    p.add_argument("--n-samples", type=int, default=100, help="predictive draws in check()")
    p.add_argument("--table-only", action="store_true", help="print the table of stored rows and exit")
    args = p.parse_args(argv)
    path = OUT / "summary.json"
    if not args.table_only:
        for name in args.rows:
            row = run_row(name, args.seed, args.patience, args.n_samples)
            row["machine"] = machine()
            stored = json.loads(path.read_text()) if path.exists() else {"rows": {}}  # re-read: merge
            stored["rows"][name if args.seed == 0 else f"{name}_seed{args.seed}"] = row  # other seeds: own rows
            write(path, stored)
            print(f"{name}: fit {row['fit_seconds']:.0f} s ({row['epochs_run']} epochs) + check "
                  f"{row['check_seconds']:.0f} s; LPD {row['lpd']:.2f}, pooled "
                  f"{' / '.join(f'{v:.3f}' for v in row['coverage'].values())}, top decile "
                  f"{' / '.join(f'{v:.3f}' for v in row['top_decile_coverage'].values())}, worst decile "
                  f"{row['worst_decile_deviation_max']:.3f}, genes in 3 SE {row['genes_within_3se_90']:.3f}, "
                  f"programs corr / rand {row['program_correlated_cov90']} / {row['program_random_cov90_mean']}",
                  flush=True)
    stored = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    print(table([stored["rows"][k] for k in ROWS if k in stored["rows"]]))


if __name__ == "__main__":
    main()
