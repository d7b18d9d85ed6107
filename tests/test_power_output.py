"""Power output reads right: the legend sits beside the curve, strata without DE genes are not listed,
the title names the effect model, and a realized FDR above nominal is explained with the curve's numbers."""

import json

import numpy as np
import xarray as xr

from probgex.power.curve import curve_figure, summarize
from probgex.power.notes import effect_model
from probgex.power.report import summary, write

NS = [3, 6, 12]
STRATA = ["[0, 10)", "[10, 100)", "[100, 1000)", "[1000, inf)"]


def synthetic(fdp_by_n=(0.09, 0.06, 0.045), **attrs) -> xr.Dataset:
    """A small power Dataset as power_grid makes it: 4 draws x 2 replicate experiments per n; the lowest
    expression stratum has no DE genes (all NaN)."""
    rng = np.random.default_rng(0)
    S, R = 4, 2
    power = np.clip(np.array([0.3, 0.6, 0.85])[:, None, None] + rng.normal(0, 0.02, (3, S, R)), 0, 1)
    fdp = np.array(fdp_by_n)[:, None, None] + rng.normal(0, 0.003, (3, S, R))
    p_str = np.repeat(power[:, None], 4, axis=1)
    p_str[:, 0] = np.nan
    ds = xr.Dataset({"power": (("n", "draw", "rep"), power), "fdp": (("n", "draw", "rep"), fdp),
                     "power_stratum": (("n", "stratum", "draw", "rep"), p_str)},
                    coords={"n": NS, "stratum": STRATA, "draw": np.arange(S), "rep": np.arange(R)},
                    attrs={"fdr": 0.05, "lfc": 0.585, "de_fraction": 0.1, "depth": 1e7, "depth_sd": 0.2,
                           "test": "wald", "level": 0.9, "target": 0.8, "n_genes": 500, "reference_n": -1,
                           "nested": 0, "lfc_per_gene": 0, "contrast": "strain:Snf2:WT",
                           "effects": "fixed lfc"} | attrs)
    return summarize(ds, 0.9, 0.8)


def test_effect_model_names_what_the_curve_assumes():
    base = {"fdr": 0.05, "de_fraction": 0.1, "reference_n": -1}
    assert effect_model(base | {"lfc": 0.585, "effects": "fixed lfc"}) == \
        "10% of genes DE at |log2FC| = 0.585 (fold change 1.5)"
    assert "per-gene |log2FC| (mean 0.7)" in effect_model(base | {"lfc": 0.7, "lfc_per_gene": 1})
    s = effect_model(base | {"lfc": "truth", "effects": "shrunk", "reference_n": 8})
    assert s == "each gene's own shrunk (ashr-style) posterior log2FC from the fit; DE genes: those called at 8 per group"
    assert "DE at" not in effect_model(base | {"lfc": "truth", "effects": "posterior", "reference_n": 8})


def test_power_json_drops_empty_strata_and_explains_the_fdr_excess(tmp_path):
    ds = synthetic()
    s = summary(ds)
    for row in s["per_n"]:
        assert set(row["power_by_stratum"]) == set(STRATA[1:])  # the stratum without DE genes is not listed
    assert s["effect_model"] == "10% of genes DE at |log2FC| = 0.585 (fold change 1.5)"
    (note,) = s["notes"]
    fdp3 = float(ds["fdp_mean"].sel(n=3))
    assert fdp3 > 0.05 and f"{fdp3:.3f} at n = 3" in note and "dispersion" in note
    assert "at n = 6" in note  # 0.06 > 0.05 as well, n = 12 (0.045) is not above
    assert "at n = 12 (" not in note and "4 at n = 3 per group" in note  # 2n - 2 residual df
    # no excess, no note; the written JSON is valid and carries the same fields
    assert summary(synthetic(fdp_by_n=(0.04, 0.03, 0.02)))["notes"] == []
    assert summary(synthetic(fdp_by_n=(0.0502, 0.03, 0.02)))["notes"] == []  # within Monte Carlo noise
    written = write(ds, tmp_path / "power")
    assert json.loads((tmp_path / "power" / "power.json").read_text())["notes"] == written["notes"] == [note]


def test_power_figure_legend_beside_the_axes_title_and_fdr_note():
    ds = synthetic()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = curve_figure(ds)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (ax,) = fig.axes
    leg, r = ax.get_legend(), canvas.get_renderer()
    box, axes_box = leg.get_window_extent(r), ax.get_window_extent(r)
    assert box.x0 >= axes_box.x1  # beside the axes: it cannot hide a curve
    assert fig.bbox.contains(box.x1 - 1, box.y0 + 1)  # and inside the figure
    labels = [t.get_text() for t in leg.get_texts()]
    assert not any(STRATA[0] in t for t in labels) and any(STRATA[1] in t for t in labels)
    assert effect_model(ds.attrs) in ax.get_title()
    notes = [t.get_text() for t in fig.texts]
    assert any("Realized FDR above nominal 0.05" in t and "0.09 at n = 3" in t for t in notes)
    assert not curve_figure(synthetic(fdp_by_n=(0.04, 0.03, 0.02))).texts
