"""Files of `explain`: variance.csv (gene, term, share, lower, upper), variance.json (per term the median
share and the genes with the largest), violins.png (shares per term across genes, as variancePartition's
plotVarPart) and top_genes.png (stacked shares of the genes the formula explains most, as plotPercentBars)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

N_TOP = 10  # genes listed per term in variance.json
N_BARS = 20  # genes in the stacked bars
FIXED = ("latent", "overdispersion", "other", "noise")


def table(ds: xr.Dataset) -> pd.DataFrame:
    """Long table: one row per (gene, term) with share, lower, upper."""
    df = ds[["share", "lower", "upper"]].to_dataframe().reset_index()
    return df[["gene", "term", "share", "lower", "upper"]]


def summary(ds: xr.Dataset, n_top: int = N_TOP) -> dict:
    terms = {}
    for term in ds.term.values:
        s = ds.share.sel(term=term)
        top = np.argsort(-s.values, kind="stable")[:n_top]
        terms[str(term)] = {
            "median_share": float(np.median(s.values)), "mean_share": float(s.values.mean()),
            "top_genes": [{"gene": str(ds.gene.values[i]), "share": float(s.values[i]),
                           "lower": float(ds.lower.sel(term=term).values[i]),
                           "upper": float(ds.upper.sel(term=term).values[i])} for i in top]}
    attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in ds.attrs.items()}
    return {"n_genes": int(ds.sizes["gene"]), **attrs, "terms": terms}


def _colors(terms) -> dict:
    fixed = {"latent": "tab:purple", "overdispersion": "darkgrey", "other": "tab:olive", "noise": "lightgrey"}
    own = [t for t in terms if t not in fixed]
    return {t: fixed.get(t, f"C{own.index(t) % 10}" if t in own else "grey") for t in terms}


def violins(ds: xr.Dataset) -> Figure:
    terms = [str(t) for t in ds.term.values]
    colors = _colors(terms)
    fig = Figure(figsize=(1.1 * len(terms) + 2, 4))
    ax = fig.subplots()
    data = [100 * ds.share.sel(term=t).values for t in terms]
    parts = ax.violinplot(data, showextrema=False, widths=0.85)
    for body, t in zip(parts["bodies"], terms, strict=True):
        body.set_facecolor(colors[t])
        body.set_alpha(0.8)
    ax.boxplot(data, widths=0.12, showfliers=False, medianprops={"color": "black"})
    ax.set_xticks(range(1, len(terms) + 1), terms, rotation=30, ha="right")
    ax.set(ylabel="variance explained (%)", ylim=(0, 100),
           title=f"{ds.attrs.get('formula', '')}: {ds.sizes['gene']:,} genes, log1p CP10k")
    fig.tight_layout()
    return fig


def top_bars(ds: xr.Dataset, n: int = N_BARS) -> Figure:
    terms = [str(t) for t in ds.term.values]
    own = [t for t in terms if t not in FIXED]
    colors = _colors(terms)
    explained = ds.share.sel(term=own).sum("term").values if own else ds.share.sel(term=terms[0]).values
    top = np.argsort(-explained, kind="stable")[:n][::-1]
    fig = Figure(figsize=(7, 0.28 * len(top) + 1.6))
    ax = fig.subplots()
    left = np.zeros(len(top))
    for t in terms:
        w = 100 * ds.share.sel(term=t).values[top]
        ax.barh(np.arange(len(top)), w, left=left, color=colors[t], label=t, height=0.8)
        left += w
    ax.set_yticks(np.arange(len(top)), ds.gene.values[top], fontsize=7)
    ax.set(xlabel="variance explained (%)", xlim=(0, 100),
           title=f"the {len(top)} genes the formula's terms explain most")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return fig


def write(ds: xr.Dataset, out: str | Path) -> dict:
    """Write variance.csv, variance.json, violins.png and top_genes.png to the folder `out`; return the summary."""
    from probgex._outputs import atomic_folder, json_ready

    s = summary(ds)
    with atomic_folder(out) as tmp:  # the files appear together, only once all are written
        table(ds).to_csv(tmp / "variance.csv", index=False)
        (tmp / "variance.json").write_text(json.dumps(json_ready(s), indent=2, allow_nan=False))
        violins(ds).savefig(tmp / "violins.png", dpi=110)
        top_bars(ds).savefig(tmp / "top_genes.png", dpi=110)
    return s
