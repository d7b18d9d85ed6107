"""Write a power curve to a folder: power.json (per n: power, its interval, realized FDR), power.nc
(the full xarray.Dataset) and power.png (the figure)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import xarray as xr

from probgex._outputs import POWER_FILES, atomic_folder, json_ready  # noqa: F401  (what `write` puts in its folder)
from probgex.power.curve import plot_curve
from probgex.power.notes import effect_model, fdr_notes



def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else (x if math.isfinite(x) else None)


def summary(ds: xr.Dataset) -> dict:
    """JSON-ready summary: settings, the effect model in words, per-n estimates and intervals (power by
    expression stratum for the strata that have DE genes), the smallest n reaching the target (None when
    the grid never reaches it), and notes (why the realized FDR exceeds nominal, where it does)."""
    rows = []
    for n in ds["n"].values:
        d = ds.sel(n=n)
        rows.append({"n_per_group": int(n), "power": _num(d["power_mean"]), "power_lower": _num(d["power_lower"]),
                     "power_upper": _num(d["power_upper"]), "power_mc_se": _num(d["power_mc_se"]),
                     "realized_fdr": _num(d["fdp_mean"]), "realized_fdr_lower": _num(d["fdp_lower"]),
                     "realized_fdr_upper": _num(d["fdp_upper"]),
                     "power_by_stratum": {str(s): p for s in ds["stratum"].values  # strata with DE genes only
                                          if (p := _num(d["power_stratum_mean"].sel(stratum=s))) is not None}})
        if "power_lfc_mean" in ds:
            rows[-1]["power_by_min_abs_lfc"] = {
                f"{m:g}": {k: _num(d[f"power_lfc_{k}"].sel(min_abs_lfc=m)) for k in ("mean", "lower", "upper")}
                for m in ds["min_abs_lfc"].values}
    a = ds.attrs
    return {"settings": {k: a[k] for k in ("contrast", "formula", "fdr", "lfc", "de_fraction", "depth", "depth_sd",
                                           "test", "level", "target", "n_genes", "reference_n", "nested", "effects",
                                           "dispersion_level_se", "dispersion_level_df") if k in a}
            | {"n_draws": int(ds.sizes["draw"]), "n_rep": int(ds.sizes["rep"])},
            "effect_model": effect_model(a),
            "per_n": rows,
            "n_at_target": {"estimate": _num(a["n_at_target"]), "lower": _num(a["n_at_target_lower"]),
                            "upper": _num(a["n_at_target_upper"])},
            "notes": fdr_notes(ds)}


def write(ds: xr.Dataset, out: str | Path) -> dict:
    """Write power.json, power.nc and power.png into the folder `out`; returns the JSON summary (NaN as None)."""
    s = json_ready(summary(ds))  # valid JSON: no bare NaN (an unknown value is null)
    with atomic_folder(out) as tmp:  # the three files replace earlier ones only once all are written
        (tmp / "power.json").write_text(json.dumps(s, indent=1, allow_nan=False))
        ds.to_netcdf(tmp / "power.nc", engine="h5netcdf")
        plot_curve(ds, tmp / "power.png")
    return s
