"""Gene programs and the latent (issue 13 item 3, second half): when the formula does not name the cell
types, the cVAE's latent must carry them, and sums over gene sets are calibrated only if the predictive's
gene-gene co-variation is right. Which latent story gets it right: the default Gaussian prior at latent
size 10, larger latents, or a learned prior (flow / diffusion after the VAE; trained on the encoder means
until 2026-12-03, on the aggregate posterior, draws of q(z | x, c), since: the rows of
results/joint_structure_aggregate.json, written with --out, are the latter)?

Rows (one fit each, select with --rows; --seed adds `_seed<n>` rows):
  harmony_*          kang_harmony `~ condition` (the issue's case; 2,000 PBMCs, no cell-type column): the
                     split and genes of calibration_check.py's harmony rows (a random 10% of cells held
                     out with numpy seed 0, the 2,000 genes with the largest log1p-CP10k variance on the
                     training cells).
  harmony_kmeans_g10 the reference point: the same cells with pseudo cell types in the formula,
                     `~ kmeans + condition`; kmeans = KMeans(8) on 20 PCs of log1p CP10k of all 2,000 cells
                     (labels from the cells' own counts, as an annotation would be; the held-out cells'
                     labels are therefore metadata carrying information about their counts).
  muscat_group_*     kang_muscat `~ group_id` (cell types left out of the formula; real labels exist),
  muscat_cluster_g10 kang_muscat `~ cluster_id + group_id` (the reference with the real labels);
                     fixed split splits/kang_muscat_heldout.txt.
  ctrl5_*            kang_ctrl5 `~ cluster_id + sample_id`, fixed split (the issue's no-harm row).
  No-harm rows before a flow default (g10 vs flow10, same seed; `--noharm` prints their table: LPD,
  coverage 50 / 90, worst decile, genes in 3 SE, energy prior-posterior, fit and check seconds):
  zscrb_*            ziegenhain_scrbseq `~ batch` (42 cells: does a flow trained on ~35 cells' latents hurt?);
                     no split exists: a random 10% of cells held out (numpy seed 0; 4 cells), all genes.
  yeast_*            schurch_yeast `~ strain` (bulk), calibration_check.py's split (every 6th clean replicate).
  gtex_*             gtex_brain `~ class + sex` (bulk), calibration_check.py's gtex split (8 samples held out).
  muscat_cluster_flow10  the flow where the formula names the cell types (beside muscat_cluster_g10).
  Variant suffix: g10 / g20 / g30 = Gaussian prior of that latent size; flow10 / diffusion10 = the learned
  prior (default options) on a latent of 10 (flow20: of 20); g10q / flow10q: g10 / flow10 with
  sample_quality="on" (a per-cell scale of the NB overdispersion shared by the cell's genes, issue 13
  item 3's first half), the one term that adds co-variation given z.

Everything else is the default a user gets: `Model(formula, likelihood="nb", latent=...)`, encoder and
decoder (128,), `fit(train, seed=seed)` with the default epochs and early stopping.

Per row: `check(fit, test, n_samples=100, reference=train, n_random_programs=20)` (held-out LPD per cell,
pooled / per-decile coverage, genes within 3 SE, the correlated program and 20 random 20-gene sets; the
first 5 random sets are those `check`'s default draws), and the latent diagnostics of `diagnose`:
  - program sums: predictive / observed variance of each program's sum over the held-out cells, and the
    share of program PITs in the outer 5% tails (nominal 0.10: more = intervals too narrow);
  - the same program coverage when z comes from the encoder of each held-out cell (the reconstruction
    predictive): if that is calibrated and the prior's is not, the prior (the mixture of cell states it
    draws) is what is wrong, not the decoder or the count law;
  - aggregate posterior vs prior: per latent dimension, the variance of the aggregate posterior q(z | c)
    (variance of the encoder means + mean encoder variance) against the prior's; the share of active
    dimensions (variance of the encoder means > 0.01); an energy distance between prior draws and draws
    of q(z | x, c) for the training cells of the same condition;
  - what that does to the cell states: the decoded fraction of the counts in the correlated program,
    f(z, c) = sum_{g in program} rho_g(z, c), under z from the prior and from the encoder (training cells):
    quantiles and the share of cells above the midpoint of the two modes (for harmony: the myeloid share).

Training-size sweep (where does the flow start to win? issue 13 item 3's "learned prior as default where it
wins"): `--train-cells N` fits on a random N of the training cells (numpy default_rng([seed, N]): another
subset per seed), the held-out cells unchanged; `--pair` on a flow10 row also stores its g10 twin, the same
fit's VAE stage with its Gaussian prior network (a g10 fit of the same seed and cells reaches the same
parameters: checked, identical LPD, on a 50-cell smoke fit and on ctrl5's full row, -1233.31 both), so one fit
gives both rows; `--sweep` prints one line per (cells, seed): g10 -> flow10. Keys get `_n<N>`.

Results: benchmarks/results/joint_structure.json, merged by row name (rows may run in pieces).

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/joint_structure.py --rows harmony_g10 harmony_flow10
  PYTHONPATH=. .venv/bin/python benchmarks/joint_structure.py --table-only
  PYTHONPATH=. .venv/bin/python benchmarks/joint_structure.py --noharm --rows zscrb_g10 zscrb_flow10
  PYTHONPATH=. .venv/bin/python benchmarks/joint_structure.py --noharm --table-only
  PYTHONPATH=. .venv/bin/python benchmarks/joint_structure.py --out R.json --pair --train-cells 200 --rows muscat_group_flow10
  PYTHONPATH=. .venv/bin/python benchmarks/joint_structure.py --out R.json --sweep --table-only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fixed_split, load, machine, timed, write
from calibration import yeast_split
from calibration_check import gtex_split, harmony_split

OUT = RESULTS / "joint_structure.json"
LEVELS = ("0.5", "0.8", "0.9", "0.95")
N_RANDOM = 20
KMEANS_K = 8

DATASETS = {
    "harmony": ("~ condition", "condition"),
    "harmony_kmeans": ("~ kmeans + condition", "condition"),
    "muscat_group": ("~ group_id", "group_id"),
    "muscat_cluster": ("~ cluster_id + group_id", "group_id"),
    "ctrl5": ("~ cluster_id + sample_id", "sample_id"),
    # no-harm rows for a flow default (tiny and bulk sets; Gaussian vs flow, same seed)
    "zscrb": ("~ batch", "batch"),
    "yeast": ("~ strain", "strain"),
    "gtex": ("~ class + sex", "class"),
}
VARIANTS = {"g10": ("gaussian", 10), "g20": ("gaussian", 20), "g30": ("gaussian", 30),
            "flow10": ("flow", 10), "diffusion10": ("diffusion", 10), "flow20": ("flow", 20),
            "g10q": ("gaussian", 10), "flow10q": ("flow", 10)}  # ...q: with sample_quality="on"
ROWS = {f"{d}_{v}": (d, v) for d in DATASETS for v in VARIANTS}


def kmeans_labels(adata, genes_from) -> np.ndarray:
    """KMeans(KMEANS_K) on 20 PCs of log1p CP10k over the genes of `genes_from` (all cells of adata)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    a = adata[:, genes_from.var_names]
    x = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    pcs = PCA(20, random_state=0).fit_transform(x - x.mean(0))
    return KMeans(KMEANS_K, n_init=10, random_state=0).fit_predict(pcs)


def split_for(dataset: str):
    if dataset.startswith("harmony"):
        train, test = harmony_split()
        if dataset == "harmony_kmeans":
            import anndata as ad
            both = ad.concat([train, test])
            lab = kmeans_labels(both, train)
            train.obs["kmeans"] = [f"k{v}" for v in lab[: train.n_obs]]
            test.obs["kmeans"] = [f"k{v}" for v in lab[train.n_obs:]]
        return train, test
    if dataset == "zscrb":  # no split file, none in calibration_check.py: a random 10% of cells (numpy seed 0)
        a = load("ziegenhain_scrbseq")
        test = np.zeros(a.n_obs, bool)
        test[np.random.default_rng(0).permutation(a.n_obs)[: round(0.1 * a.n_obs)]] = True
        return a[~test].copy(), a[test].copy()
    if dataset == "yeast":  # calibration_check.py's yeast rows: every 6th clean replicate held out
        return yeast_split()
    if dataset == "gtex":  # calibration_check.py's gtex rows: every 4th eligible sample held out
        return gtex_split()
    if dataset.startswith("muscat"):
        return fixed_split(load("kang_muscat"), "kang_muscat_heldout.txt")
    return fixed_split(load("kang_ctrl5"), "kang_ctrl5_heldout.txt")


def make_model(formula: str, variant: str):
    from probgex.fit import Model
    from probgex.latent import Diffusion, Flow, Gaussian
    kind, dim = VARIANTS[variant]
    latent = {"gaussian": Gaussian, "flow": Flow, "diffusion": Diffusion}[kind](dim=dim)
    return Model(formula, likelihood="nb", latent=latent, sample_quality="on" if variant.endswith("q") else "off")


# ----- diagnostics -----------------------------------------------------------------------------------------
def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance 2E|A-B| - E|A-A'| - E|B-B'| between two samples (rows = points)."""
    def mean_dist(x, y):
        return float(np.sqrt(np.maximum(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1), 0)).mean())
    return 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)


def encoder_moments(fit, data, rows: np.ndarray, block: int = 256):
    """Encoder means and scales of q(z | x, c) for `rows`: two (n, dim) arrays."""
    import jax

    from probgex.inference.minibatch import make_batch
    story = fit.story

    @jax.jit
    def enc(params, batch):
        q = story._encode(story._nets(params)["encoder"], batch)[0].base_dist
        return q.loc, q.scale
    locs, scales = [], []
    for s in range(0, len(rows), block):
        r = rows[s:s + block]
        loc, scale = enc(fit.params, make_batch(data, r, block, 1.0))
        locs.append(np.asarray(loc)[: len(r)])
        scales.append(np.asarray(scale)[: len(r)])
    return np.concatenate(locs), np.concatenate(scales)


def program_fraction(fit, z: np.ndarray, design: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Decoded share of a cell's expected counts in `genes`: sum_g softmax(decoder(z, c))_g, per row."""
    import jax
    import jax.numpy as jnp

    from probgex.models.nets import concat
    story = fit.story

    @jax.jit
    def frac(params, z, design):
        out = story._nets(params)["decoder"](concat(z, design))[0]
        return jnp.exp(jax.nn.logsumexp(jax.nn.log_softmax(out, -1)[..., genes], -1))
    return np.concatenate([np.asarray(frac(fit.params, jnp.asarray(z[s:s + 512]), jnp.asarray(design[s:s + 512])))
                           for s in range(0, len(z), 512)])


def reconstruction_programs(fit, data, programs: dict, n_samples: int, seed: int) -> dict:
    """Coverage of the program sums under the reconstruction predictive (z from each held-out cell's encoder)."""
    from probgex import rng as streams
    from probgex.diagnostics.scores import sample_pit
    from probgex.inference.predictive import inside
    rng = streams.host_rng(seed, "programs")
    idx = list(programs.values())
    obs, rep = np.zeros((data.n_obs, len(idx))), np.zeros((n_samples, data.n_obs, len(idx)))
    for rows, d in fit.predictive_blocks(data, n_samples, streams.stream(seed, "predictive"), from_data=True):
        y = data.rows(rows).astype(np.float64)
        x = d.sample(rng).astype(np.float64)
        for j, g in enumerate(idx):
            obs[rows, j] = y[:, g].sum(1)
            rep[:, rows, j] = x[:, :, g].sum(2)
    u = sample_pit(rep, obs, rng)
    return {name: {a: float(np.mean(inside(u[:, j], float(a)))) for a in LEVELS} for j, name in enumerate(programs)}


def diagnose(fit, train, test, report, seed: int, n_samples: int, group_col: str) -> dict:
    """The latent diagnostics of the module docstring."""
    out: dict = {}
    ppc, progs = report.ppc, report.ppc.programs
    # program sums: predictive vs observed spread, PIT tails
    u = report.results["program_pit"].values
    per = {}
    for j, name in enumerate(progs):
        obs, rep = ppc.obs_prog[:, j], ppc.rep_prog[:, :, j]
        per[name] = {"var_ratio": float(rep.var() / max(obs.var(), 1e-12)),
                     "pit_low_5": float(np.mean(u[:, j] < 0.05)), "pit_high_5": float(np.mean(u[:, j] > 0.95))}
    rand = [v for k, v in per.items() if k.startswith("random")]
    out["programs"] = {"correlated": per["correlated"],
                       "random_mean": {k: float(np.mean([r[k] for r in rand])) for k in rand[0]},
                       "random_var_ratio_range": [float(min(r["var_ratio"] for r in rand)),
                                                  float(max(r["var_ratio"] for r in rand))]}
    # gene-gene correlation among the top genes: observed vs replicated (mean off-diagonal)
    c_obs, c_rep = ppc.correlations()
    iu = np.triu_indices(len(ppc.top), 1)
    out["top_gene_correlation"] = {"observed_mean": float(np.nanmean(c_obs[iu])),
                                   "replicated_mean": float(np.nanmean(c_rep[iu])),
                                   "observed_mean_abs": float(np.nanmean(np.abs(c_obs[iu]))),
                                   "replicated_mean_abs": float(np.nanmean(np.abs(c_rep[iu])))}
    corr_genes = progs["correlated"]
    pos = np.searchsorted(ppc.top, corr_genes)
    ip = np.triu_indices(len(pos), 1)
    out["correlated_program_correlation"] = {"observed_mean": float(np.nanmean(c_obs[np.ix_(pos, pos)][ip])),
                                             "replicated_mean": float(np.nanmean(c_rep[np.ix_(pos, pos)][ip]))}
    # reconstruction predictive: z from the encoder of each held-out cell
    data_te = fit.data(test)
    out["reconstruction_program_coverage"] = reconstruction_programs(fit, data_te, progs, n_samples, seed)
    # aggregate posterior vs prior, per condition level
    data_tr = fit.data(train)
    loc, scale = encoder_moments(fit, data_tr, np.arange(data_tr.n_obs))
    out["latent"] = {"dim": int(loc.shape[1]),
                     "active_dims": int(np.sum(loc.var(0) > 0.01)),
                     "mean_encoder_var_over_mean_var": float((scale**2).mean() / max(loc.var(0).mean(), 1e-12)),
                     "encoder_mean_var_per_dim": [float(v) for v in np.sort(loc.var(0))[::-1]],
                     "mean_encoder_var_per_dim": [float(v) for v in (scale**2).mean(0)[np.argsort(-loc.var(0))]]}
    levels = data_tr.obs[group_col].astype(str).to_numpy()
    per_level = {}
    rng = np.random.default_rng(seed)
    prior_z = fit.prior_samples(data_tr.obs, n_samples=1, seed=seed)[0]  # one prior draw per training cell
    post_z = loc + scale * rng.standard_normal(loc.shape)  # one draw of q(z | x, c) per training cell
    design = np.asarray(data_tr.design, np.float32)
    f_prior = program_fraction(fit, prior_z, design, corr_genes)
    f_post = program_fraction(fit, post_z, design, corr_genes)
    lf_all = np.log(np.concatenate([f_prior, f_post]))
    mid = float(np.median(lf_all))  # a fixed cut for the 'high program' share: the pooled median
    # the two modes' midpoint: Otsu-like cut on the aggregate posterior's log f
    hist, edges = np.histogram(np.log(f_post), 60)
    cent = (edges[:-1] + edges[1:]) / 2
    best, cut = -1.0, mid
    for i in range(1, 60):
        w0, w1 = hist[:i].sum(), hist[i:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0, m1 = (hist[:i] * cent[:i]).sum() / w0, (hist[i:] * cent[i:]).sum() / w1
        between = w0 * w1 * (m0 - m1) ** 2
        if between > best:
            best, cut = between, float(edges[i])
    for lev in np.unique(levels):
        m = levels == lev
        sub = rng.choice(np.flatnonzero(m), min(800, m.sum()), replace=False)
        pz, qz = prior_z[sub], post_z[sub]
        per_level[lev] = {
            "n": int(m.sum()),
            "prior_var_over_aggregate_var": float(prior_z[m].var(0).sum() / max(
                (loc[m].var(0) + (scale[m] ** 2).mean(0)).sum(), 1e-12)),
            "energy_prior_vs_posterior": energy_distance(pz, qz),
            "energy_posterior_split_halves": energy_distance(qz[: len(qz) // 2], qz[len(qz) // 2:]),
            "log_program_fraction_quantiles_prior": [float(v) for v in np.quantile(np.log(f_prior[m]), [0.1, 0.5, 0.9])],
            "log_program_fraction_quantiles_posterior": [float(v) for v in np.quantile(np.log(f_post[m]), [0.1, 0.5, 0.9])],
            "high_program_share_prior": float(np.mean(np.log(f_prior[m]) > cut)),
            "high_program_share_posterior": float(np.mean(np.log(f_post[m]) > cut)),
        }
    out["per_condition"] = per_level
    out["program_fraction_cut"] = cut
    # observed (held-out) high-program share, on normalized counts: the same cut is on rho, so compare
    # the held-out cells' observed share of counts in the program
    y = np.concatenate([data_te.rows(np.arange(s, min(s + 512, data_te.n_obs))) for s in range(0, data_te.n_obs, 512)])
    f_obs = (y[:, corr_genes].sum(1) + 0.5) / y.sum(1)
    out["observed_heldout_high_program_share"] = float(np.mean(np.log(f_obs) > cut))
    return out


def headline(s: dict) -> dict:
    progs = s["gene_programs"]
    rand = [v for k, v in progs.items() if k.startswith("random")]
    return {
        "n_test": s["n_obs"], "n_genes": s["n_genes"],
        "lpd": s["mean_log_predictive_density"],
        "coverage": s["coverage"],
        "coverage_by_decile": s["coverage_by_decile"],
        "worst_decile_deviation": s["worst_decile_deviation"],
        "worst_decile_deviation_max": max(s["worst_decile_deviation"].values()),
        "top_decile_coverage": {a: s["coverage_by_decile"][a][-1] for a in LEVELS},
        "genes_within_3se": s["genes_within_3se"],
        "program_correlated_coverage": progs["correlated"]["coverage"],
        "program_correlated_genes": progs["correlated"]["genes"],
        "program_random_coverage_mean": {a: float(np.mean([v["coverage"][a] for v in rand])) for a in LEVELS},
        "program_random_coverage_min": {a: float(np.min([v["coverage"][a] for v in rand])) for a in LEVELS},
        "program_random5_coverage_mean": {a: float(np.mean([v["coverage"][a] for v in rand[:5]])) for a in LEVELS},
        "program_random_coverage_all_90": [v["coverage"]["0.9"] for v in rand],
    }


def subsample(train, n: int | None, seed: int):
    """`n` training cells drawn without replacement (numpy default_rng([seed, n]): a different subset per
    seed and size), or all of them when n is None. The held-out cells are untouched."""
    if n is None:
        return train
    if not 1 <= n <= train.n_obs:
        raise SystemExit(f"--train-cells must be in 1..{train.n_obs} (the training cells); got {n}")
    keep = np.sort(np.random.default_rng([seed, n]).choice(train.n_obs, n, replace=False))
    return train[keep].copy()


def gaussian_twin(fit):
    """The Gaussian-prior fit hidden in a learned-prior fit: its VAE stage (the VAE-stage Gaussian prior
    network, `Fit.learned_prior_status` "not trained") is the g10 fit of the same seed and data."""
    from dataclasses import replace
    return replace(fit, params={k: v for k, v in fit.params.items() if k != "learned_prior"}, prior_history=None)


def evaluate(fit, name, dataset, variant, train, test, seed, n_samples, t_fit, group_col) -> dict:
    """One row: `check` on the held-out cells and the latent diagnostics of `fit`."""
    from probgex.diagnostics import check
    formula = DATASETS[dataset][0]
    report, t_check = timed(check, fit, test, n_samples=n_samples, seed=seed, progress=False, reference=train,
                            n_random_programs=N_RANDOM)
    row = {"name": name, "dataset": dataset, "formula": formula, "variant": variant, "seed": seed,
           "latent": fit.spec.latent.to_dict(), "n_train": int(train.n_obs),
           "epochs_run": len(fit.history.train), "best_epoch": fit.history.best_epoch,
           "fit_seconds": t_fit, "check_seconds": t_check, "n_samples": n_samples}
    row.update(headline(report.summary()))
    try:
        row["diagnostics"], row["diagnose_seconds"] = timed(diagnose, fit, train, test, report, seed, n_samples,
                                                            group_col)
    except Exception as e:  # noqa: BLE001 - recorded in the row: the diagnostics are secondary to the check
        row["diagnostics_error"] = f"{type(e).__name__}: {e}"
        print(f"{name}: diagnose failed: {row['diagnostics_error']}", flush=True)
    return row


def run_pair(name: str, seed: int, n_samples: int, train_cells: int | None = None,
             max_epochs: int | None = None):
    """A learned-prior row and its g10 twin from one fit (the twin is the fit's VAE stage with its Gaussian
    prior network: the same parameters a g10 fit of this seed reaches, without fitting them twice); yields
    each row when it is done (the twin first: its check is the cheap one)."""
    dataset, variant = ROWS[name]
    if VARIANTS[variant][0] == "gaussian" or variant.endswith("q") or VARIANTS[variant][1] != 10:
        raise SystemExit(f"--pair needs a learned-prior row of latent 10 (e.g. {dataset}_flow10); got {name}")
    formula, group_col = DATASETS[dataset]
    train, test = split_for(dataset)
    train = subsample(train, train_cells, seed)
    kw = {} if max_epochs is None else {"max_epochs": max_epochs}
    fit, t_fit = timed(make_model(formula, variant).fit, train, seed=seed, progress=False, **kw)
    twin = evaluate(gaussian_twin(fit), f"{dataset}_g10", dataset, "g10", train, test, seed, n_samples, t_fit,
                    group_col)
    twin["latent"] = {"kind": "gaussian", "dim": 10, "hidden": [], "twin_of": name}
    yield twin
    yield evaluate(fit, name, dataset, variant, train, test, seed, n_samples, t_fit, group_col)


def run_row(name: str, seed: int, n_samples: int, max_epochs: int | None = None,
            train_cells: int | None = None) -> dict:
    dataset, variant = ROWS[name]
    formula, group_col = DATASETS[dataset]
    train, test = split_for(dataset)
    train = subsample(train, train_cells, seed)
    model = make_model(formula, variant)
    kw = {} if max_epochs is None else {"max_epochs": max_epochs}  # smoke runs only; rows use the default
    fit, t_fit = timed(model.fit, train, seed=seed, progress=False, **kw)
    return evaluate(fit, name, dataset, variant, train, test, seed, n_samples, t_fit, group_col)


def fmt(v, f=".3f"):
    return "-" if v is None else format(v, f)


def tails(p: dict) -> str:
    """Shares of program PITs below 0.05 and above 0.95 (0.05 each when calibrated)."""
    return f"{p['pit_low_5']:.2f}+{p['pit_high_5']:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| row | formula | latent | seed | LPD/cell | pooled 50/80/90/95 | worst decile | top decile 50/80/90/95 "
            "| genes in 3 SE @90 | corr. program 50/80/90/95 | random 50/80/90/95 (mean of 20) | random min @90 "
            "| recon. corr / rand @90 | PIT tails corr / rand | energy prior-posterior | active dims | fit s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    j = lambda d: " / ".join(fmt(d[a]) for a in LEVELS)
    for r in rows:
        if "diagnostics" not in r:
            continue
        dg = r["diagnostics"]
        rec = dg["reconstruction_program_coverage"]
        rec_rand = np.mean([v["0.9"] for k, v in rec.items() if k.startswith("random")])
        lines.append(
            f"| {r['name']} | `{r['formula']}` | {r['variant']} | {r['seed']} | {r['lpd']:.2f} | {j(r['coverage'])} "
            f"| {r['worst_decile_deviation_max']:.3f} | {j(r['top_decile_coverage'])} | {r['genes_within_3se']['0.9']:.3f} "
            f"| {j(r['program_correlated_coverage'])} | {j(r['program_random_coverage_mean'])} "
            f"| {r['program_random_coverage_min']['0.9']:.3f} | {rec['correlated']['0.9']:.3f} / {rec_rand:.3f} "
            f"| {tails(dg['programs']['correlated'])} / {tails(dg['programs']['random_mean'])} "
            f"| {' / '.join(format(v['energy_prior_vs_posterior'], '.3f') for v in dg['per_condition'].values())} "
            f"| {dg['latent']['active_dims']}/{dg['latent']['dim']} | {r['fit_seconds']:.0f} |")
    return "\n".join(lines)


NOHARM = ("zscrb", "yeast", "gtex", "muscat_cluster")


def noharm_table(rows: list[dict]) -> str:
    """The no-harm comparison (Gaussian vs flow on tiny, bulk and cell-type-named sets): the check's headline
    numbers, fit and check seconds, and the prior-posterior energy per condition level where diagnosed."""
    head = ("| row | formula | n train / test x genes | latent | seed | LPD/obs | coverage 50 / 90 | worst decile "
            "| genes in 3 SE @90 | energy prior-posterior | fit s | check s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        dg = r.get("diagnostics")
        energy = ("-" if dg is None else
                  " / ".join(format(v["energy_prior_vs_posterior"], ".3f") for v in dg["per_condition"].values()))
        lines.append(
            f"| {r['name']} | `{r['formula']}` | {r['n_train']} / {r['n_test']} x {r['n_genes']} | {r['variant']} "
            f"| {r['seed']} | {r['lpd']:.2f} | {r['coverage']['0.5']:.3f} / {r['coverage']['0.9']:.3f} "
            f"| {r['worst_decile_deviation_max']:.3f} | {r['genes_within_3se']['0.9']:.3f} | {energy} "
            f"| {r['fit_seconds']:.0f} | {r['check_seconds']:.0f} |")
    return "\n".join(lines)


def key(name: str, seed: int, train_cells: int | None = None) -> str:
    return name + ("" if train_cells is None else f"_n{train_cells}") + ("" if seed == 0 else f"_seed{seed}")


def sweep_table(rows: list[dict]) -> str:
    """The training-size sweep: one line per (dataset, cells, seed) with the g10 twin -> the learned prior."""
    head = ("| data | train cells | seed | active dims | LPD/cell g10 -> flow (diff) | pooled 50 / 90 | worst decile "
            "| top decile @50 | top decile @90 | genes in 3 SE @90 | corr. program @90 | random @90 mean / min "
            "| energy prior-post. | fit s / check s flow |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    pairs: dict = {}
    for r in rows:
        if r.get("train_cells") is not None or r.get("pair"):
            pairs.setdefault((r["dataset"], r["n_train"], r["seed"]), {})[r["variant"]] = r
    arrow = lambda g, f, fm=".3f": f"{format(g, fm)} -> {format(f, fm)}"
    for (dataset, n, seed), pr in sorted(pairs.items()):
        g, f = pr.get("g10"), pr.get("flow10")
        if g is None or f is None:
            continue
        en = lambda r: " / ".join(format(v["energy_prior_vs_posterior"], ".2f")
                                  for v in r["diagnostics"]["per_condition"].values()) if "diagnostics" in r else "-"
        lines.append(
            f"| {dataset} | {n} | {seed} | {f['diagnostics']['latent']['active_dims'] if 'diagnostics' in f else '-'} "
            f"| {g['lpd']:.2f} -> {f['lpd']:.2f} ({f['lpd'] - g['lpd']:+.2f}) "
            f"| {g['coverage']['0.5']:.3f} / {g['coverage']['0.9']:.3f} -> {f['coverage']['0.5']:.3f} / "
            f"{f['coverage']['0.9']:.3f} | {arrow(g['worst_decile_deviation_max'], f['worst_decile_deviation_max'])} "
            f"| {arrow(g['top_decile_coverage']['0.5'], f['top_decile_coverage']['0.5'])} "
            f"| {arrow(g['top_decile_coverage']['0.9'], f['top_decile_coverage']['0.9'])} "
            f"| {arrow(g['genes_within_3se']['0.9'], f['genes_within_3se']['0.9'])} "
            f"| {arrow(g['program_correlated_coverage']['0.9'], f['program_correlated_coverage']['0.9'])} "
            f"| {g['program_random_coverage_mean']['0.9']:.3f} / {g['program_random_coverage_min']['0.9']:.3f} -> "
            f"{f['program_random_coverage_mean']['0.9']:.3f} / {f['program_random_coverage_min']['0.9']:.3f} "
            f"| {en(g)} -> {en(f)} | {f['fit_seconds']:.0f} / {f['check_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--noharm", action="store_true", help="print the no-harm table (tiny / bulk sets) instead")
    p.add_argument("--max-epochs", type=int, default=None, help="smoke runs only (rows use the default)")
    p.add_argument("--train-cells", type=int, default=None,
                   help="fit on this many of the training cells (a random subset per seed; held-out cells unchanged)")
    p.add_argument("--pair", action="store_true",
                   help="for a flow10 / diffusion10 row, also store its g10 twin: the same fit's VAE stage with its "
                        "Gaussian prior network (one fit for both rows)")
    p.add_argument("--sweep", action="store_true", help="print the training-size sweep table (g10 -> flow pairs)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not args.table_only:
        for name in args.rows:
            if args.pair:
                new = run_pair(name, args.seed, args.n_samples, args.train_cells, args.max_epochs)
            else:
                new = [run_row(name, args.seed, args.n_samples, args.max_epochs, args.train_cells)]
            for row in new:  # each row stored when done
                row["machine"], row["train_cells"], row["pair"] = machine(), args.train_cells, args.pair
                stored = json.loads(args.out.read_text()) if args.out.exists() else {"rows": {}}  # re-read: merge
                stored["rows"][key(row["name"], args.seed, args.train_cells)] = row
                write(args.out, stored)
                print((noharm_table if args.noharm else table)([row]), flush=True)
    stored = json.loads(args.out.read_text()) if args.out.exists() else {"rows": {}}
    order = list(ROWS)
    rows = sorted(stored["rows"].values(), key=lambda r: (order.index(r["name"]), r.get("train_cells") or 0, r["seed"]))
    if args.sweep:
        print(sweep_table(rows))
    elif args.noharm:
        print(noharm_table([r for r in rows if ROWS[r["name"]][0] in NOHARM and r["variant"] in ("g10", "flow10")]))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
