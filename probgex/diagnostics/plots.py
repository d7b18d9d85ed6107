"""Figures of the calibration report: `matplotlib.figure.Figure` objects made without pyplot, so a
report holds its figures without filling pyplot's global registry (or choosing a backend for the user)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from probgex.diagnostics.pit import ecdf_counts, simultaneous_band


def pit_ecdf(u: np.ndarray, prob: float = 0.99):
    """ECDF minus the uniform CDF of pooled PIT values, inside its simultaneous band."""
    u = np.ravel(u)
    band = simultaneous_band(len(u), 100, prob)
    c = ecdf_counts(u, band.z) / band.n
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(band.z, band.lower / band.n - band.z, band.upper / band.n - band.z, color="C0", alpha=0.2,
                    label=f"{prob:.0%} simultaneous band")
    ax.plot(band.z, c - band.z, color="C0", label="PIT ECDF - uniform")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="PIT", ylabel="ECDF difference", title=f"pooled randomized PIT ({band.n:,} entries)")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)  # off the curve
    return fig


def coverage_curve(levels, pooled):
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    ax.plot(levels, pooled, "o-")
    low = min(0.4, float(np.nanmin(pooled)) - 0.05, float(np.min(levels)) - 0.05)
    ax.set(xlabel="nominal level", ylabel="held-out coverage", xlim=(low, 1), ylim=(low, 1),
           title="central-interval coverage")
    fig.tight_layout()
    return fig


def coverage_by_decile(levels, by_decile):
    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = fig.subplots()
    for i, lv in enumerate(levels):
        ax.plot(np.arange(1, 11), by_decile[:, i] - lv, "o-", label=f"{lv:.0%}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="decile of predicted mean expression", ylabel="coverage - nominal",
           title="coverage by expression decile")
    ax.legend(fontsize=9, title="nominal", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def relation(stats, x: str, y: str, title: str):
    """A per-gene relation (e.g. mean-variance), observed vs one replicated dataset."""
    (ox, rx), (oy, ry) = stats[x], stats[y]
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    tx = np.log10 if x in ("mean", "variance") else (lambda v: v)
    ty = np.log10 if y in ("mean", "variance") else (lambda v: v)
    with np.errstate(divide="ignore"):
        ax.scatter(tx(rx[0]), ty(ry[0]), s=3, alpha=0.4, label="replicated", color="C1")
        ax.scatter(tx(ox), ty(oy), s=3, alpha=0.4, label="observed", color="C0")
    ax.set(xlabel=("log10 " if tx is np.log10 else "") + x, ylabel=("log10 " if ty is np.log10 else "") + y,
           title=title)
    ax.legend(fontsize=9, markerscale=3)
    fig.tight_layout()
    return fig


def rootogram_edges(y: np.ndarray, max_bins: int = 30) -> np.ndarray:
    """Integer bin edges of one constant width, from 0 past the 99.5% quantile of the counts `y`:
    equal widths keep the bars comparable (uneven integer widths made spikes at every wider bin)."""
    top = int(np.quantile(y, 0.995)) + 1
    width = max(1, -(-top // max_bins))
    return np.arange(0, top + width, width)


def rootograms(genes: list[str], observed: list[np.ndarray], expected: list[np.ndarray],
               edges: list[np.ndarray]):
    """Hanging rootograms: sqrt(expected frequency) per count bin as a curve, observed bars hanging
    from it (a bar below zero: more observed than expected). Bin [a, b) of integer counts is drawn
    from a - 0.5 to b - 0.5, so a bin of width 1 is centred on its count."""
    k = len(genes)
    fig = Figure(figsize=(3.4 * k, 3.6))
    axes = fig.subplots(1, k, squeeze=False)
    for ax, g, o, e, b in zip(axes[0], genes, observed, expected, edges, strict=True):
        so, se = np.sqrt(o), np.sqrt(e)
        ax.bar(b[:-1] - 0.5, so, width=np.diff(b), bottom=se - so, align="edge", color="C0", alpha=0.5,
               edgecolor="white", linewidth=0.5, label="observed (hanging from expected)")
        ax.plot((b[:-1] + b[1:] - 1) / 2, se, "o-", color="C1", ms=2.5, label="expected by the model")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(title=g, xlabel="count" if b[1] - b[0] == 1 else f"count (bins of {b[1] - b[0]})")
    axes[0, 0].set_ylabel("sqrt(number of observations)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=11, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def summary_statistics(stats: dict, obs_stats: dict, corr: tuple[np.ndarray, np.ndarray]):
    """Observed vs replicated distributions of every summary statistic (per gene: log mean, log
    variance, zero fraction, CV; per observation: log library size, zero fraction) and the gene-gene
    correlation matrices of the most variable genes, side by side."""
    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 4)
    panels = [(k, "per gene", np.log1p if k in ("mean", "variance") else (lambda v: v), o, r)
              for k, (o, r) in stats.items()]
    panels += [(k, "per observation", np.log1p if k == "library_size" else (lambda v: v), o, r)
               for k, (o, r) in obs_stats.items()]
    for ax, (name, per, t, o, r) in zip(axes.ravel()[:6], panels, strict=True):
        o, r = t(np.asarray(o, float)), t(np.asarray(r, float).ravel())
        o, r = o[np.isfinite(o)], r[np.isfinite(r)]
        bins = np.histogram_bin_edges(np.concatenate([o, r]), 40)
        ax.hist(r, bins, density=True, alpha=0.5, color="C1", label="replicated")
        ax.hist(o, bins, density=True, histtype="step", color="C0", lw=1.5, label="observed")
        ax.set_title(("log1p " if t is np.log1p else "") + name.replace("_", " ") + " " + per, fontsize=10)
    axes[0, 0].set_ylabel("density")
    axes[1, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=9)
    c_obs, c_rep = corr
    for ax, c, title in ((axes[1, 2], c_obs, "gene-gene correlation, observed"),
                         (axes[1, 3], c_rep, "replicated")):
        im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title, fontsize=10)
        ax.set(xticks=[], yticks=[], xlabel=f"{len(c)} most variable genes")
    fig.colorbar(im, ax=[axes[1, 2], axes[1, 3]], label="correlation", shrink=0.9)
    return fig
