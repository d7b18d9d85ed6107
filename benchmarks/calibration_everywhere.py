"""Issue 13's validation protocol: held-out calibration of the default GLM on every bulk set in
../shared/data, against the DESeq2 plug-in NB predictive (pydeseq2 0.5.4) on the same splits.

Bulk rows: dataset x design (1, 2 and >= 4 residual degrees of freedom). Each row pools DRAWS random
leave-2-samples-out splits (`_bulk_protocol.bulk_split`: 2 test samples at random, P + df training
samples from the rest, every test level present in training). Genes: a fixed random subset of
N_GENES of those with a count in the training samples (the same subset for both methods; it bounds
the run time on 2 cores), scored on genes whose test mean is >= 5 counts. probgex is fitted with its
defaults (`pg.Model(formula, likelihood="nb").fit(train, seed=draw)`); `--variant before` emulates the
defaults before issue 13 (10% held out for early stopping, total-count library sizes, the ELBO's
trend) for the before/after comparison.

Per row: pooled coverage at 50/80/90/95%, the largest deviation of any expression decile (deciles of
the genes' mean count in training) from nominal, the share of genes whose 90% coverage over their entries
is within 3 binomial SE, and the mean held-out log predictive density per entry (nats), for probgex and
for the plug-in.

Single-cell rows (`--rows kang_ctrl5 ...`, stories `--stories glm cvae`): 10% of cells held out (the
fixed split of ../shared/data/splits for kang_ctrl5 and kang_muscat; a random 10% per draw otherwise,
5 draws for the 32-42-cell ziegenhain sets, on a random 1,000 of their 10,000 genes as in the bulk
rows), all genes with a count in training scored, deciles of
the training mean; probgex's default GLM and the cVAE with a 10-dimensional latent, each with its
defaults; the plug-in is pydeseq2 with DESeq2's poscounts size factors (the single-cell rule).

The cVAE's prior (`--prior`): "auto" (the default, what a new user gets: `latent=10`, i.e.
`pg.latent.Auto(dim=10)`, a flow prior from 200 training cells with an active latent dimension, else the
Gaussian; row "cvae"), "gaussian" (`pg.latent.Gaussian(dim=10)`, row "cvae_gaussian", the rows stored before
2026-12-04) or "flow" (row "cvae_flow"). Where the default chose the flow, the same fit without its learned
prior (its VAE stage with the Gaussian prior network: the Gaussian twin, same encoder, decoder and seed) is
scored too (row "cvae_twin_gaussian", the same plug-in), so the two priors are compared on one VAE.
The row records `fit_info["latent_choice"]` and the CPU seconds of the predictive scoring of each.

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/calibration_everywhere.py                  # all bulk rows
  PYTHONPATH=. .venv/bin/python benchmarks/calibration_everywhere.py --rows kang_ctrl5 kang_muscat \
      kang_harmony ziegenhain_scrbseq ziegenhain_celseq2 ziegenhain_dropseq ziegenhain_marsseq
  PYTHONPATH=. .venv/bin/python benchmarks/calibration_everywhere.py --rows kang_muscat --stories cvae --prior gaussian
  PYTHONPATH=. .venv/bin/python benchmarks/calibration_everywhere.py --rows gse60450 --variant before
  PYTHONPATH=. .venv/bin/python benchmarks/calibration_everywhere.py --rows schurch_yeast --sample-quality on
Results: benchmarks/results/calibration_everywhere_<variant>.json, and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bulk_protocol import LEVELS, MIN_TEST_MEAN, bulk_split, deseq_plugin, expressed, scores  # noqa: E402
from _common import RESULTS, fixed_split, load, machine, markdown_table  # noqa: E402
from calibration_noise import clustered  # noqa: E402

N_GENES = 1000
DRAWS = 5
N_DRAWS_PREDICTIVE = 200
BULK = {  # dataset: (formula, training sizes give df = these)
    "schurch_yeast": ("~ strain", (1, 2, 6)),
    "bottomly": ("~ strain", (1, 2, 6)),
    "gse60450": ("~ CellType + Status", (1, 2, 6)),
    "tung_bulk": ("~ individual", (1, 2, 4)),
    "gtex_brain": ("~ class + sex", (1, 2, 7)),
    "tcga_brca": ("~ tissue", (1, 2, 8)),
}


def probgex_entries(fit, test, rng, n=N_DRAWS_PREDICTIVE):
    """Randomized PIT and log predictive density per (test sample, gene) from the fit's predictive."""
    import jax
    data = fit.data(test)
    pit = np.empty((data.n_obs, data.n_genes))
    lp = np.empty_like(pit)
    for rows, d in fit.predictive_blocks(data, n, jax.random.PRNGKey(1)):
        y = data.rows(rows).astype(np.float64)
        pit[rows] = d.randomized_pit(y, rng)
        lp[rows] = logsumexp(d.log_prob(y), axis=0) - np.log(n)
    return pit, lp


def fit_and_score(fit_fn, train, test, formula: str, draw: int, size_factors: str = "ratio"):
    """(fit, fit seconds, probgex's (PIT, log p), the plug-in's (PIT, log p, info)) on one split; the
    randomized PITs of both from one generator seeded by the draw."""
    rng = np.random.default_rng(draw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        fit = fit_fn()
        seconds = time.perf_counter() - t
        entries = probgex_entries(fit, test, rng)
        plugin = deseq_plugin(train, test, formula, rng, size_factors=size_factors)
    return fit, seconds, entries, plugin


def fit_probgex(train, formula: str, seed: int, variant: str, quality: str | None = None):
    """`quality`: the spec's sample_quality ("on", "off", "auto"), or None for the default."""
    import probgex as pg
    import probgex.inference.start as pgstart
    if quality is not None:
        return pg.Model(formula, likelihood="nb", sample_quality=quality).fit(train, seed=seed, progress=False)
    if variant == "before":  # the fit before the trend was placed before SVI
        trend_start = pgstart.trend_start
        pgstart.trend_start = lambda *a: None
        try:
            return pg.Model(formula, likelihood="nb", library="observed").fit(train, seed=seed, holdout=0.1,
                                                                            progress=False)
        finally:
            pgstart.trend_start = trend_start
    return pg.Model(formula, likelihood="nb").fit(train, seed=seed, progress=False)


def bulk_row(name: str, formula: str, df: int, variant: str, draws: int, quality: str | None = None) -> dict:
    a = load(name)
    a.X = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X)
    acc = {"probgex": [], "deseq2_plugin": []}
    splits, trends, held, t_fit = [], [], [], 0.0
    for draw in range(draws):
        sp = bulk_split(a, formula, df, seed=1000 * df + draw)
        if sp is None:
            break
        tr, te = sp
        genes = np.flatnonzero(expressed(a, tr))
        genes = np.sort(np.random.default_rng(draw).choice(genes, min(N_GENES, len(genes)), replace=False))
        b = a[:, genes]
        train, test = b[tr].copy(), b[te].copy()
        y = np.asarray(test.X, float)
        sel = y.mean(0) >= MIN_TEST_MEAN
        # decile key: the gene's mean count in training (never the held-out count: binning on the outcome
        # would bias every decile's coverage by itself)
        train_mean = np.asarray(train.X, float).mean(0)
        fit, seconds, (pit, lp), (dpit, dlp, info) = fit_and_score(
            lambda: fit_probgex(train, formula, draw, variant, quality), train, test, formula, draw)
        t_fit += seconds
        gid = np.broadcast_to(genes[sel][None], (len(te), sel.sum()))
        dkey = np.broadcast_to(train_mean[sel][None], (len(te), sel.sum()))
        held.append(np.broadcast_to((len(te) * draw + np.arange(len(te)))[:, None], gid.shape).ravel())
        for key, (p, l) in (("probgex", (pit, lp)), ("deseq2_plugin", (dpit, dlp))):
            acc[key].append((p[:, sel].ravel(), l[:, sel].ravel(), dkey.ravel(), gid.ravel()))
        par = fit.params
        trends.append({"probgex": [float(np.asarray(par[k])) for k in
                                   ("disp_asymptote", "disp_extra_poisson", "disp_trend_sd")],
                       "deseq2": info["trend"] + [info["prior_sd"]], "library": fit.spec.library,
                       "sample_quality": fit.spec.sample_quality,
                       "quality_sd": float(np.asarray(par["quality_sd"])) if "quality_sd" in par else None})
        splits.append({"train": list(a.obs_names[tr]), "test": list(a.obs_names[te])})
    variant = variant if quality is None else f"quality_{quality}"
    row = {"dataset": name, "formula": formula, "df": df, "variant": variant, "draws": len(splits),
           "splits": splits, "trends": trends, "fit_seconds": round(t_fit, 1)}
    entries = {}
    for key, parts in acc.items():
        if parts:
            cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
            row[key] = scores(*cat)
            # the pooled coverages' SEs clustered by held-out sample (`calibration_noise.py`)
            row[key]["coverage_se"] = [round(clustered(np.abs(cat[0] - 0.5) <= lv / 2, np.concatenate(held))[1], 4)
                                       for lv in LEVELS]
            entries.update({f"{key}_{n}": c for n, c in zip(("pit", "logp", "decile_key", "gene"), cat, strict=True)})
    entries["sample"] = np.concatenate(held)  # the held-out sample of every entry (split len(test) draw + position)
    # the scored entries, so other scores can be computed without refitting
    np.savez_compressed(RESULTS / "calibration_everywhere" / f"{name}_df{df}_{variant}.npz", **entries)
    return row


SC = {  # dataset: (formula, fixed split file or None for random 10% of cells, draws, genes: None = all)
    "kang_ctrl5": ("~ cluster_id + sample_id", "kang_ctrl5_heldout.txt", 1, None),
    "kang_muscat": ("~ cluster_id + group_id", "kang_muscat_heldout.txt", 1, None),
    "kang_harmony": ("~ condition", None, 1, None),
    "ziegenhain_scrbseq": ("~ batch", None, DRAWS, N_GENES),
    "ziegenhain_celseq2": ("~ batch", None, DRAWS, N_GENES),
    "ziegenhain_dropseq": ("~ batch", None, DRAWS, N_GENES),
    "ziegenhain_marsseq": ("~ batch", None, DRAWS, N_GENES),
}
SC_MODELS = ("glm", "cvae")


def sc_split(a, split_file, draw):
    """(train, test) AnnData: the fixed held-out cells of ../shared/data/splits, or a random 10%."""
    if split_file is not None:
        return fixed_split(a, split_file)
    test = np.zeros(a.n_obs, bool)
    test[np.random.default_rng(draw).permutation(a.n_obs)[:max(1, round(0.1 * a.n_obs))]] = True
    return a[~test].copy(), a[test].copy()


PRIORS = ("auto", "gaussian", "flow")


def fit_sc(train, formula: str, story: str, seed: int, prior: str = "auto"):
    """A new user's call: the default GLM, or the cVAE with a 10-dimensional latent (`prior` "auto": the
    default `latent=10`; "gaussian" / "flow": that prior forced)."""
    import probgex as pg
    if story == "glm":
        return pg.Model(formula, likelihood="nb").fit(train, seed=seed, progress=False)
    latent = {"auto": 10, "gaussian": pg.latent.Gaussian(dim=10), "flow": pg.latent.Flow(dim=10)}[prior]
    return pg.Model(formula, likelihood="nb", latent=latent).fit(train, seed=seed, progress=False)


def row_key(story: str, prior: str) -> str:
    """The row's story label: "glm", "cvae" (the default prior), "cvae_gaussian", "cvae_flow"."""
    return story if story == "glm" or prior == "auto" else f"{story}_{prior}"


def cpu_seconds() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def gaussian_twin(fit):
    """The fit without its learned prior: its VAE stage with the Gaussian prior network."""
    from dataclasses import replace
    return replace(fit, params={k: v for k, v in fit.params.items() if k != "learned_prior"}, prior_history=None)


def sc_row(name: str, story: str, prior: str = "auto", save_dir: Path | None = None) -> list[dict]:
    """Single-cell row: 10% of cells held out (the fixed split where ../shared/data/splits has one), all
    genes with a count in training scored, against the DESeq2 plug-in with poscounts size factors. A cVAE
    row whose default prior chose the flow in every draw comes with its Gaussian twin's row (second)."""
    formula, split_file, draws, n_genes = SC[name]
    a = load(name)
    acc = {"probgex": [], "deseq2_plugin": [], "twin": []}
    libraries, choices, latents, t_fit, t_score, t_twin = [], [], [], 0.0, 0.0, 0.0
    for draw in range(draws):
        train, test = sc_split(a, split_file, draw)
        keep = np.asarray((train.X > 0).sum(0)).ravel() > 0
        if n_genes is not None and keep.sum() > n_genes:  # the bulk rows' rule: a fixed random subset
            chosen = np.random.default_rng(draw).choice(np.flatnonzero(keep), n_genes, replace=False)
            keep = np.isin(np.arange(a.n_vars), chosen)
        train, test = train[:, keep].copy(), test[:, keep].copy()
        y = np.asarray(test.X.todense() if hasattr(test.X, "todense") else test.X, float)
        train_mean = np.asarray(train.X.mean(0)).ravel()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            fit = fit_sc(train, formula, story, draw, prior)
            t_fit += time.perf_counter() - t
            if save_dir is not None and story != "glm":
                fit.save(save_dir / f"{name}_{row_key(story, prior)}_draw{draw}.pgx")
            c, rng = cpu_seconds(), np.random.default_rng(draw)  # the plug-in's PITs continue this generator
            pit, lp = probgex_entries(fit, test, rng)
            t_score += cpu_seconds() - c
            twin = None
            if "learned_prior" in fit.params:  # the same VAE with its Gaussian prior network
                c = cpu_seconds()
                twin = probgex_entries(gaussian_twin(fit), test, np.random.default_rng(draw))
                t_twin += cpu_seconds() - c
            dpit, dlp, _ = deseq_plugin(train, test, formula, rng, size_factors="poscounts")
        gid = np.broadcast_to(np.flatnonzero(keep)[None], y.shape)
        dkey = np.broadcast_to(train_mean[None], y.shape)
        for key, pl in (("probgex", (pit, lp)), ("deseq2_plugin", (dpit, dlp)), ("twin", twin)):
            if pl is None:
                continue
            p, l = pl
            ok = np.isfinite(l)  # a held-out cell without any positive count among the plug-in's genes
            acc[key].append((p[ok], l[ok], dkey[ok], gid[ok]))
        libraries.append(fit.spec.library)
        choices.append((fit.fit_info or {}).get("latent_choice"))
        latents.append(None if fit.spec.latent is None else fit.spec.latent.kind)
    label = row_key(story, prior)
    row = {"dataset": name, "formula": formula, "story": label, "df": label, "draws": draws,
           "load_end": round(os.getloadavg()[0], 2),
           "libraries": libraries, "latents": latents, "latent_choice": choices, "fit_seconds": round(t_fit, 1),
           "score_cpu_s": round(t_score, 1)}
    for key in ("probgex", "deseq2_plugin"):
        row[key] = scores(*[np.concatenate([p[i] for p in acc[key]]) for i in range(4)])
    if len(acc["twin"]) != draws:  # the flow was not chosen in every draw: no twin row
        return [row]
    twin_row = {**row, "story": "cvae_twin_gaussian", "df": "cvae_twin_gaussian", "score_cpu_s": round(t_twin, 1),
                "twin_of": label, "latents": ["gaussian (twin: the fit without its learned prior)"] * draws,
                "probgex": scores(*[np.concatenate([p[i] for p in acc["twin"]]) for i in range(4)])}
    return [row, twin_row]


def table(rows: list[dict]) -> str:
    columns = ["dataset", "formula", "df", "draws", "probgex cov 50/80/90/95", "worst decile", "genes in 3 SE", "LPD",
               "plug-in cov 50/80/90/95", "worst decile", "genes in 3 SE", "LPD"]
    f = lambda s: " / ".join(f"{c:.3f}" for c in s["coverage"])  # noqa: E731
    g = lambda s: [f"{s['worst_decile_dev']:.3f}", f"{s['genes_within_3se']:.3f}", f"{s['lpd_per_entry']:.3f}"]  # noqa: E731
    return markdown_table(columns, [[r["dataset"], f"`{r['formula']}`", str(r["df"]), str(r["draws"]),
                                     f(r["probgex"]), *g(r["probgex"]), f(r["deseq2_plugin"]), *g(r["deseq2_plugin"])]
                                    for r in rows if "probgex" in r])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="*", default=list(BULK), help=f"bulk {list(BULK)} or single-cell {list(SC)}")
    ap.add_argument("--stories", nargs="*", default=list(SC_MODELS), help="single-cell rows: glm, cvae")
    ap.add_argument("--df", nargs="*", type=int, default=None, help="only these residual df")
    ap.add_argument("--variant", choices=("after", "before"), default="after")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--prior", choices=PRIORS, default="auto",
                    help="single-cell cVAE rows: the default prior (auto), or gaussian / flow forced")
    ap.add_argument("--save-fits", type=Path, default=None, help="single-cell cVAE rows: save each fit here")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default calibration_everywhere_<variant>.json)")
    ap.add_argument("--sample-quality", choices=("on", "off"), default=None,
                    help="bulk rows: fit with this sample_quality (results: calibration_everywhere_quality_X.json)")
    args = ap.parse_args()
    variant = args.variant if args.sample_quality is None else f"quality_{args.sample_quality}"
    path = args.out or RESULTS / f"calibration_everywhere_{variant}.json"
    if args.save_fits is not None:
        args.save_fits.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration_everywhere").mkdir(exist_ok=True)
    stored = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = {(r["dataset"], r["df"]): r for r in stored["rows"]}
    for name in args.rows:
        if name in SC:
            for story in args.stories:
                t = time.perf_counter()
                new = sc_row(name, story, args.prior, args.save_fits)
                for row in new:
                    row["seconds"] = round(time.perf_counter() - t, 1)
                    rows[(name, row["df"])] = row
                    print(table([row]).splitlines()[-1], flush=True)
                path.write_text(json.dumps({"machine": machine(), "rows": list(rows.values())}, indent=1))
            continue
        formula, dfs = BULK[name]
        for df in dfs:
            if args.df and df not in args.df:
                continue
            t = time.perf_counter()
            row = bulk_row(name, formula, df, args.variant, args.draws, args.sample_quality)
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows[(name, df)] = row
            print(table([row]).splitlines()[-1], flush=True)
            path.write_text(json.dumps({"machine": machine(), "rows": list(rows.values())}, indent=1))
    order = list(BULK) + list(SC)
    print(table(sorted(rows.values(), key=lambda r: (order.index(r["dataset"]), str(r["df"])))))


if __name__ == "__main__":
    main()
