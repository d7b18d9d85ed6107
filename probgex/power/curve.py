"""Power curves: simulate experiments for a grid of replicates per group and run the vectorized DE test
on all of them at once.

For each n, S posterior draws x R replicate experiments are simulated (each experiment from its own
draw) and tested. Per experiment: power = share of the true DE genes called at padj < fdr, FDP = share
of the calls that are not DE. The estimate is the mean over all experiments. Its interval is the central
`level` interval of the per-draw mean powers: their spread is the posterior uncertainty of the expected
power plus the Monte Carlo noise of R experiments per draw, so it combines both (with a fixed truth it
reduces to Monte Carlo error). The smallest n reaching `target` is found per draw the same way.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from probgex import rng as streams
from probgex._checks import check_grid, check_power_options
from probgex.errors import DataError, SpecError
from probgex.power.de import deseq_batch
from probgex.power.simulate import Truth, simulate_counts, truth_from_fit

STRATA = (10.0, 100.0, 1000.0)  # edges of expected counts per sample (reference group, at `depth`)


def _rng(key) -> np.random.Generator:
    """The simulated experiments' NumPy generator: a stream of `key` (an int seed or a JAX key)."""
    if key is None:
        raise SpecError("pass key=: a PRNG key or an int seed, e.g. key=jax.random.PRNGKey(0) or key=0")
    return streams.host_rng(key, "experiments")


def _test_chunk(y: list[np.ndarray], n: int, chunk: int, test: str):
    """padj and log2 fold change estimates (E, G) of experiments with n per group, padded to a fixed
    batch of `chunk` (one compilation per n)."""
    X = np.column_stack([np.ones(2 * n), np.repeat([0.0, 1.0], n)]).astype(np.float32)
    k = len(y)
    y = np.stack(y)
    if k < chunk:
        y = np.concatenate([y, np.repeat(y[-1:], chunk - k, 0)])
    res = deseq_batch(jnp.asarray(y), X, coef=1, test=test)
    return np.asarray(res.padj)[:k], np.asarray(res.lfc, np.float64)[:k] / np.log(2.0)


def _nested(y_ref, truth: Truth, s: int, n: int, reference_n: int, depth: float, rng):
    """n per group drawn without replacement from a reference experiment (reference group first)."""
    idx = np.concatenate([rng.choice(reference_n, n, replace=False),
                          reference_n + rng.choice(reference_n, n, replace=False)])
    return y_ref[idx], truth.lfc[s], depth * np.exp(truth.log_rate[s])


def _check_reference(truth: Truth, reference_n, min_abs_lfc) -> tuple[int | None, np.ndarray]:
    """The checked (check_power_options) reference_n and min_abs_lfc, as an int and an array."""
    if reference_n is not None:
        if truth.lfc is None:
            raise SpecError("reference_n calls each draw's DE genes on a reference experiment, which needs "
                            "fold changes fixed per draw: a Truth with lfc (truth_from_fit(..., effects=...) "
                            "or Truth.fixed(..., lfc=...))")
        reference_n = int(reference_n)
    return reference_n, np.atleast_1d(np.asarray(min_abs_lfc, dtype=float))


def power_grid(truth: Truth, n_per_group: Sequence[int], *, key, fdr: float = 0.05, lfc=0.585,
               de_fraction: float = 0.1, depth: float = 1e7, depth_sd: float = 0.2, n_rep: int = 2,
               target: float = 0.8, level: float = 0.9, test: str = "wald", strata=STRATA,
               chunk: int = 8, progress: bool = True, reference_n: int | None = None,
               min_abs_lfc: Sequence[float] = (), nested: bool = False) -> xr.Dataset:
    """Power, FDP and power by expression stratum for every n, from `truth`'s draws (see module doc).

    The DE genes of an experiment are those with a true fold change (nonzero log2FC), or, with
    `reference_n`, the genes called at padj < fdr in one reference experiment of `reference_n` per group
    simulated from the same draw, as a real study's "truth" is called on its many replicates (needs a
    truth whose fold changes are fixed per draw, `Truth.lfc`). `min_abs_lfc`: power also among the DE
    genes whose |log2FC| exceeds each value (the reference experiment's estimate, else the true one),
    as `power_lfc` (n, min_abs_lfc, draw, rep). `nested`: each experiment is n samples per group drawn
    without replacement from its draw's reference experiment instead of a fresh one, mirroring a
    subsampling validation where the small experiments share samples with the one that called the
    truth (which inflates their recall when n is a large part of reference_n)."""
    from rich.progress import Progress

    check_power_options(n_per_group=n_per_group, fdr=fdr, level=level, target=target, n_rep=n_rep, depth=depth,
                        depth_sd=depth_sd, reference_n=reference_n, min_abs_lfc=min_abs_lfc, nested=nested)
    ns = check_grid(n_per_group)
    if truth.n_draws < 1:
        raise SpecError("n_rep and the number of draws must be at least 1")
    reference_n, thr = _check_reference(truth, reference_n, min_abs_lfc)
    rng = _rng(key)
    S, R, G = truth.n_draws, n_rep, truth.log_rate.shape[1]
    edges = np.concatenate([[0.0], np.asarray(strata, float), [np.inf]])
    K = len(edges) - 1
    power = np.full((len(ns), S, R), np.nan)
    fdp = np.full((len(ns), S, R), np.nan)
    called_n = np.zeros((len(ns), S, R), int)
    p_str = np.full((len(ns), K, S, R), np.nan)
    n_str = np.zeros((len(ns), K, S, R), int)
    p_lfc = np.full((len(ns), thr.size, S, R), np.nan)
    n_ref = np.zeros(S, int)
    jobs = [(s, r) for s in range(S) for r in range(R)]
    sim = dict(depth=depth, depth_sd=depth_sd, lfc=lfc, de_fraction=de_fraction, rng=rng)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("power: simulate + test", total=len(ns) * len(jobs) + (S if reference_n else 0))
        ref_de = ref_mag = None
        ref_y = {}
        if reference_n is not None:  # each draw's DE set, called on its reference experiment
            ref_de, ref_mag = np.zeros((S, G), bool), np.zeros((S, G))
            for start in range(0, S, chunk):
                part = list(range(start, min(S, start + chunk)))
                y = [simulate_counts(truth, s, reference_n, **sim)[0] for s in part]
                if nested:
                    ref_y.update(zip(part, y))
                padj, est = _test_chunk(y, reference_n, chunk, test)
                ref_de[part] = np.nan_to_num(padj, nan=1.0) < fdr
                ref_mag[part] = np.abs(np.nan_to_num(est))
                bar.advance(task, len(part))
            n_ref = ref_de.sum(1)
        for i, n in enumerate(ns):
            for start in range(0, len(jobs), chunk):
                part = jobs[start:start + chunk]
                sims = [_nested(ref_y[s], truth, s, n, reference_n, depth, rng) if nested else
                        simulate_counts(truth, s, n, **sim) for s, _ in part]
                padj, _ = _test_chunk([c for c, _, _ in sims], n, chunk, test)
                for (s, r), (_, l2fc, expected), q in zip(part, sims, padj):
                    call = np.nan_to_num(q, nan=1.0) < fdr
                    de = ref_de[s] if ref_de is not None else l2fc != 0
                    mag = ref_mag[s] if ref_mag is not None else np.abs(l2fc)
                    power[i, s, r] = call[de].mean() if de.any() else np.nan
                    called_n[i, s, r] = call.sum()
                    fdp[i, s, r] = (call & ~de).sum() / max(1, call.sum())
                    for t, m in enumerate(thr):
                        sel = de & (mag > m)
                        if sel.any():
                            p_lfc[i, t, s, r] = call[sel].mean()
                    k = np.digitize(expected, edges[1:-1])
                    for j in range(K):
                        sel = de & (k == j)
                        n_str[i, j, s, r] = sel.sum()
                        if sel.any():
                            p_str[i, j, s, r] = call[sel].mean()
                bar.advance(task, len(part))
    data = {"power": (("n", "draw", "rep"), power), "fdp": (("n", "draw", "rep"), fdp),
            "n_called": (("n", "draw", "rep"), called_n),
            "power_stratum": (("n", "stratum", "draw", "rep"), p_str),
            "n_de_stratum": (("n", "stratum", "draw", "rep"), n_str)}
    coords = {"n": ns, "stratum": [f"[{edges[j]:g}, {edges[j + 1]:g})" for j in range(K)],
              "draw": np.arange(S), "rep": np.arange(R)}
    if thr.size:
        data["power_lfc"] = (("n", "min_abs_lfc", "draw", "rep"), p_lfc)
        coords["min_abs_lfc"] = thr
    if reference_n is not None:
        data["n_de_reference"] = ("draw", n_ref)
    effect = ("truth" if truth.lfc is not None else
              float(np.mean(np.abs(lfc))) if np.ndim(lfc) else float(lfc))
    return summarize(xr.Dataset(data, coords=coords, attrs={
        "fdr": fdr, "lfc": effect, "de_fraction": de_fraction if truth.lfc is None else float("nan"),
        "depth": float(depth), "depth_sd": float(depth_sd), "test": test, "level": level, "target": target,
        "n_genes": G, "reference_n": -1 if reference_n is None else reference_n, "nested": int(nested),
        "lfc_per_gene": int(truth.lfc is None and np.ndim(lfc) > 0)}),
        level, target)


def summarize(ds: xr.Dataset, level: float, target: float) -> xr.Dataset:
    """Estimates (mean over experiments), intervals (quantiles of per-draw means) and the smallest n
    reaching `target` with its interval."""
    with warnings.catch_warnings():  # strata without DE genes give all-NaN slices: NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        return _summarize(ds, level, target)


def _summarize(ds: xr.Dataset, level: float, target: float) -> xr.Dataset:
    lo, hi = (1 - level) / 2, (1 + level) / 2
    out = ds.copy()
    for name in [v for v in ("power", "fdp", "power_stratum", "power_lfc") if v in ds]:
        per_draw = ds[name].mean("rep", skipna=True)
        out[f"{name}_mean"] = ds[name].mean(("draw", "rep"), skipna=True)
        out[f"{name}_lower"] = per_draw.quantile(lo, "draw", skipna=True).drop_vars("quantile")
        out[f"{name}_upper"] = per_draw.quantile(hi, "draw", skipna=True).drop_vars("quantile")
        out[f"{name}_mc_se"] = ds[name].std(("draw", "rep"), skipna=True) / np.sqrt(ds[name].count(("draw", "rep")))
    ns = np.asarray(ds["n"])
    mean = np.asarray(out["power_mean"])
    reach = np.flatnonzero(mean >= target)
    per_draw = np.asarray(ds["power"].mean("rep"))  # (n, draw)
    n_star = np.array([ns[np.flatnonzero(per_draw[:, s] >= target)[0]] if (per_draw[:, s] >= target).any()
                       else np.inf for s in range(per_draw.shape[1])], float)
    out["n_at_target_draw"] = ("draw", n_star)
    out.attrs.update(n_at_target=float(ns[reach[0]]) if reach.size else float("inf"),
                     n_at_target_lower=float(np.quantile(n_star, lo, method="inverted_cdf")),
                     n_at_target_upper=float(np.quantile(n_star, hi, method="inverted_cdf")))
    return out


def curve(fit, contrast: tuple[str, str, str], n_per_group: Sequence[int] = (3, 6, 12), *, key,
          fdr: float = 0.05, lfc=0.585, de_fraction: float = 0.1, depth: float | None = None,
          depth_sd: float | None = None, n_draws: int = 20, n_rep: int = 2, target: float = 0.8,
          level: float = 0.9, test: str = "wald", progress: bool = True, effects: str | None = None,
          reference_n: int | None = None, min_abs_lfc: Sequence[float] = (), pilot=None,
          nested: bool = False) -> xr.Dataset:
    """Power curve of a two-group experiment `contrast` = (column, level, reference) from a fitted NB
    GLM: each simulated experiment takes its own posterior draw of the genes' reference-group means and
    dispersions; a `de_fraction` of the genes change by `lfc` (log2, random sign; or a list, one per
    gene), or, with `effects` ("posterior" or "shrunk", see `truth_from_fit`), every gene by its own
    posterior draw of the contrast's log2 fold change, the DE genes of a draw then being those called on
    a reference experiment of `reference_n` per group (see `power_grid`); libraries are log-normal
    around `depth` (default: the fit's typical library size). `pilot`: the AnnData the model was fitted
    on; with it, every draw's dispersions also move together by the jackknife uncertainty of the
    pilot's dispersion level (`replicates.dispersion_level`: which replicates a small pilot happened to
    get), so that the interval covers what a new experiment will see, not only the fit's per-gene
    uncertainty. `nested`: see `power_grid`.
    `key`: an int seed or a JAX PRNG key (`probgex.rng`); the same key gives the same curve.
    Returns an xarray.Dataset (see `power_grid`); `plot_curve` draws it."""
    if not (isinstance(contrast, tuple | list) and len(contrast) == 3):
        raise SpecError(f"contrast must be (column, level, reference), got {contrast!r}")
    if contrast[1] == contrast[2]:
        raise SpecError(f"contrast {tuple(contrast)!r} compares level {contrast[1]!r} with itself; name two "
                        "different levels (column, level, reference)")
    check_power_options(n_per_group=n_per_group, fdr=fdr, level=level, target=target, n_draws=n_draws, n_rep=n_rep,
                        depth=depth, depth_sd=depth_sd, lfc=lfc, de_fraction=de_fraction, effects=effects,
                        reference_n=reference_n, min_abs_lfc=min_abs_lfc, nested=nested)
    if pilot is not None:
        check_pilot(fit, pilot)
    if key is None:
        raise SpecError("pass key=: a PRNG key or an int seed, e.g. key=jax.random.PRNGKey(0) or key=0")
    truth = truth_from_fit(fit, tuple(contrast), n_draws, key, effects=effects)
    disp_level = None
    if pilot is not None:
        from probgex.power.replicates import dispersion_level, with_level_uncertainty

        disp_level = dispersion_level(pilot, fit.encoding.formula, tuple(contrast))
        truth = with_level_uncertainty(truth, disp_level, streams.host_rng(key, "dispersion_level"))
    depth = float(np.exp(fit.dims.lib_loc)) if depth is None else float(depth)
    depth_sd = float(fit.dims.lib_scale) if depth_sd is None else float(depth_sd)
    ds = power_grid(truth, n_per_group, key=key, fdr=fdr, lfc=lfc, de_fraction=de_fraction, depth=depth,
                    depth_sd=depth_sd, n_rep=n_rep, target=target, level=level, test=test, progress=progress,
                    reference_n=reference_n, min_abs_lfc=min_abs_lfc, nested=nested)
    ds.attrs.update(contrast=":".join(contrast), formula=fit.encoding.formula,
                    effects=effects or "fixed lfc", dispersion_level_se=float("nan") if disp_level is None
                    else disp_level.se, dispersion_level_df=-1 if disp_level is None else disp_level.df)
    return ds


def check_pilot(fit, pilot) -> None:
    """The pilot must be the data the model was fitted on: at least, the same genes (DataError naming the
    difference otherwise); another dataset would silently change the interval."""
    import anndata

    if not isinstance(pilot, anndata.AnnData):
        raise DataError(f"pilot must be the AnnData the model was fitted on, got {type(pilot).__name__}")
    model_genes, pilot_genes = pd.Index(fit.var_names).astype(str), pd.Index(pilot.var_names).astype(str)
    missing, extra = model_genes.difference(pilot_genes), pilot_genes.difference(model_genes)
    if len(missing) or len(extra):
        raise DataError(f"the pilot is not the data the model was fitted on: the model has {len(model_genes)} genes, "
                        f"the pilot {len(pilot_genes)}; {len(missing)} of the model's genes are not in the pilot "
                        f"(e.g. {list(missing[:3])}) and {len(extra)} of the pilot's are not in the model "
                        f"(e.g. {list(extra[:3])}); pass the .h5ad the model was fitted on (with the same genes)")


def curve_figure(ds: xr.Dataset):
    """The power curve as a matplotlib Figure (no pyplot): power with its interval band, power by
    expression stratum (strata without DE genes left out), realized FDR against n; the legend beside the
    axes (never over the curves), the effect model in the title, and a note under the axes when the
    realized FDR exceeds the nominal FDR."""
    from matplotlib.figure import Figure

    from probgex.power.notes import effect_model, short_fdr_note

    ns = np.asarray(ds["n"])
    note = short_fdr_note(ds)
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(ns, ds["power_lower"], ds["power_upper"], alpha=0.25, color="C0",
                    label=f"power, {ds.attrs['level']:.0%} interval")
    ax.plot(ns, ds["power_mean"], "o-", color="C0", label="power (all DE genes)")
    for j, s in enumerate(np.asarray(ds["stratum"])):
        p = np.asarray(ds["power_stratum_mean"].isel(stratum=j), float)
        if np.isfinite(p).any():  # a stratum without DE genes has no power to show
            ax.plot(ns, p, ":", color=f"C{j + 2}", label=f"power, genes with {s} expected counts")
    if "power_lfc_mean" in ds:
        for j, m in enumerate(np.asarray(ds["min_abs_lfc"])):
            ax.plot(ns, ds["power_lfc_mean"].isel(min_abs_lfc=j), "^-", color="C0", alpha=0.5,
                    label=f"power, DE genes with |log2FC| > {m:g}")
    ax.plot(ns, ds["fdp_mean"], "s--", color="C1", label="realized FDR")
    ax.axhline(ds.attrs["target"], color="grey", lw=0.8, ls="--", label=f"target power {ds.attrs['target']:g}")
    ax.axhline(ds.attrs["fdr"], color="C1", lw=0.6, ls=":", label=f"nominal FDR {ds.attrs['fdr']:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(0, 1)
    ax.set_xlabel(ds.attrs.get("unit", "replicates per group"))
    ax.set_ylabel("power / FDR")
    contrast = ds.attrs.get("contrast", "")
    ax.set_title(f"{contrast + ': ' if contrast else ''}{effect_model(ds.attrs)}\nBH FDR {ds.attrs['fdr']:g}, "
                 f"{ds.attrs.get('test', 'wald')} test", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if note:
        fig.text(0.01, 0.005, textwrap.fill(note, 130), fontsize=8, color="C1", va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.1, 1, 0.9))
    return fig


def plot_curve(ds: xr.Dataset, path):
    """Write the power curve (`curve_figure`) as a PNG; returns the path."""
    curve_figure(ds).savefig(path, dpi=120)
    return path
