"""Words for a power curve: what effect model it assumes (the figure's title, power.json's
`effect_model`), and why its realized FDR can exceed the nominal level (power.json's `notes`, the figure)."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr


def effect_model(attrs: dict) -> str:
    """One line naming the effects the curve assumes, from the Dataset's attrs."""
    effects = attrs.get("effects", "fixed lfc")
    ref = attrs.get("reference_n", -1)
    called = f"; DE genes: those called at {ref} per group" if ref is not None and ref > 0 else ""
    if effects in ("posterior", "shrunk"):
        kind = "shrunk (ashr-style) " if effects == "shrunk" else ""
        return f"each gene's own {kind}posterior log2FC from the fit{called}"
    lfc = attrs.get("lfc")
    if isinstance(lfc, str):  # a Truth with its own fold changes
        return f"the truth's own per-gene log2FC{called}"
    frac = attrs.get("de_fraction", float("nan"))
    share = f"{frac:.0%} of genes DE" if isinstance(frac, float) and math.isfinite(frac) else "DE genes"
    if attrs.get("lfc_per_gene", 0):
        return f"{share}, per-gene |log2FC| (mean {lfc:g})"
    return f"{share} at |log2FC| = {lfc:g} (fold change {2 ** lfc:.2g})"


def fdr_excess(ds: xr.Dataset) -> list[int]:
    """Indices of the n whose realized FDR exceeds the nominal FDR by more than 2 Monte Carlo standard
    errors (not an excess by simulation noise alone)."""
    fdr = float(ds.attrs["fdr"])
    fdp = np.asarray(ds["fdp_mean"], float)
    se = np.asarray(ds["fdp_mc_se"], float) if "fdp_mc_se" in ds else np.zeros_like(fdp)
    return [i for i in range(len(fdp)) if np.isfinite(fdp[i]) and fdp[i] - fdr > 2 * np.nan_to_num(se[i])]


def fdr_notes(ds: xr.Dataset) -> list[str]:
    """A note when the realized FDR (mean false discovery proportion) exceeds the nominal FDR at some n
    (`fdr_excess`), with the curve's own numbers; empty when it never does."""
    fdr = float(ds.attrs["fdr"])
    ns = [int(n) for n in ds["n"].values]
    fdp = np.asarray(ds["fdp_mean"], float)
    lo, hi = np.asarray(ds["fdp_lower"], float), np.asarray(ds["fdp_upper"], float)
    above = fdr_excess(ds)
    if not above:
        return []
    at = ", ".join(f"{fdp[i]:.3f} at n = {ns[i]} ({ds.attrs['level']:.0%} interval {lo[i]:.3f}-{hi[i]:.3f})"
                   for i in above)
    trend = ", ".join(f"{fdp[i]:.3f}" for i in range(len(ns)) if np.isfinite(fdp[i]))
    text = (f"Realized FDR above the nominal {fdr:g}: {at}. With few replicates each gene's dispersion is "
            f"estimated from few residual degrees of freedom ({2 * ns[above[0]] - 2} at n = {ns[above[0]]} per "
            "group): the estimates are noisy and the test treats them as known, so genes whose dispersion is "
            "underestimated get p-values that are too small, and Benjamini-Hochberg, which assumes valid "
            f"p-values, lets more false discoveries through than nominal. Across n = {', '.join(map(str, ns))} "
            f"the realized FDR is {trend}: a real experiment of that size, tested the same way, should expect a "
            "similar excess.")
    return [text]


def short_fdr_note(ds: xr.Dataset) -> str:
    """The figure's version of `fdr_notes` (one line), or ''."""
    above = fdr_excess(ds)
    if not above:
        return ""
    fdp, ns = np.asarray(ds["fdp_mean"], float), ds["n"].values
    at = ", ".join(f"{fdp[i]:.2f} at n = {int(ns[i])}" for i in above)
    return (f"Realized FDR above nominal {float(ds.attrs['fdr']):g} ({at}): with few replicates the dispersion "
            "estimates are noisy and the test's p-values too small (power.json: notes).")
