"""The calibration report: tables, figures, the worst-calibrated genes, and files (PNG, JSON, HTML)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from probgex import rng as streams
from probgex._outputs import atomic_folder, json_ready
from probgex.diagnostics import plots
from probgex.diagnostics.ppc import Summaries

FIGURES = ("pit_ecdf", "coverage", "coverage_by_decile", "mean_variance", "mean_zero_fraction",
           "rootograms_worst_genes", "summary_statistics")
REPORT_FILES = ("report.json", "report.html") + tuple(f"{f}.png" for f in FIGURES)  # what `Report.save` writes


@dataclass
class Report:
    """What `check` found. `results` holds the per-entry and per-gene arrays (xarray)."""

    fit: object
    data: object  # the held-out CountData
    results: xr.Dataset
    ppc: Summaries
    ppc_table: dict
    programs: dict
    pit_pooled: dict
    seed: object = 0  # the check's int seed or JAX key: the rootogram's draws take a stream of it
    _figures: dict = field(default_factory=dict, repr=False)

    @property
    def levels(self) -> list[float]:
        return [float(a) for a in self.results["level"].values]

    def worst_genes(self, k: int = 20) -> list[dict]:
        """Genes whose interval coverage is furthest from nominal, in binomial standard errors."""
        cov = self.results["coverage_per_gene"].values
        lv = np.array(self.levels)[:, None]
        n = self.results.sizes["obs"]
        z = np.abs(cov - lv) / np.sqrt(lv * (1 - lv) / n)
        worst = np.argsort(-z.max(0))[:k]
        genes = self.results["gene"].values
        return [{"gene": str(genes[g]), "max_z": float(z[:, g].max()),
                 "coverage": {str(a): float(cov[i, g]) for i, a in enumerate(self.levels)},
                 "decile": int(self.results["gene_decile"].values[g])} for g in worst]

    def worst_observations(self, k: int = 10, level: float = 0.9) -> list[dict]:
        """Observations whose genes fall outside the central interval most often (outlier samples),
        with their log predictive density."""
        u = self.results["pit"].values
        cov = ((u >= (1 - level) / 2) & (u <= (1 + level) / 2)).mean(1)
        lpd = self.results["log_predictive_density"].values
        names = self.results["obs"].values
        return [{"obs": str(names[i]), f"coverage_{level}": float(cov[i]), "log_predictive_density": float(lpd[i])}
                for i in np.argsort(cov)[:k]]

    def summary(self) -> dict:
        r = self.results
        genes_pass = r["gene_pit_inside_band"].values
        return {
            "model": r.attrs["model"],
            "n_obs": int(r.sizes["obs"]), "n_genes": int(r.sizes["gene"]), "n_samples": int(r.attrs["n_samples"]),
            "coverage": {str(a): float(c) for a, c in zip(self.levels, r["coverage"].values)},
            "coverage_by_decile": {str(a): [float(v) for v in r["coverage_by_decile"].values[:, i]]
                                   for i, a in enumerate(self.levels)},
            "worst_decile_deviation": {str(a): float(np.nanmax(np.abs(r["coverage_by_decile"].values[:, i] - a)))
                                       for i, a in enumerate(self.levels)},
            "genes_within_3se": {str(a): float(v) for a, v in
                                 zip(self.levels, _within_3se(r["coverage_per_gene"].values, self.levels,
                                                              r.sizes["obs"]))},
            "pit_uniformity": {"pooled": self.pit_pooled, "fraction_genes_passing": float(genes_pass.mean()),
                               "band_prob": 0.99},
            "mean_log_predictive_density": float(r["log_predictive_density"].mean()),
            "mean_crps": float(r["crps"].mean()),
            "mean_interval_score": {str(a): float(v) for a, v in zip(self.levels, r["interval_score"].mean("gene").values)},
            "summary_statistics": self.ppc_table,
            "gene_programs": self.programs,
            "worst_genes": self.worst_genes(10),
            "worst_observations": self.worst_observations(10),
        }

    def figures(self) -> dict:
        """Figures by name (matplotlib); built once."""
        if not self._figures:
            r, stats = self.results, self.ppc.gene_stats()
            worst = [w["gene"] for w in self.worst_genes(4)]
            self._figures = {
                "pit_ecdf": plots.pit_ecdf(r["pit"].values),
                "coverage": plots.coverage_curve(self.levels, r["coverage"].values),
                "coverage_by_decile": plots.coverage_by_decile(self.levels, r["coverage_by_decile"].values),
                "mean_variance": plots.relation(stats, "mean", "variance", "mean-variance"),
                "mean_zero_fraction": plots.relation(stats, "mean", "zero_fraction", "mean-zero fraction"),
                "rootograms_worst_genes": plots.rootograms(worst, *self._rootogram_data(worst)),
                "summary_statistics": plots.summary_statistics(
                    {k: v for k, v in stats.items()},
                    {"library_size": (self.ppc.obs_lib, self.ppc.rep_lib),
                     "zero_fraction_per_obs": (self.ppc.obs_zf, self.ppc.rep_zf)},
                    self.ppc.correlations()),
            }
        return self._figures

    def _rootogram_data(self, genes: list[str]):
        """Observed and expected frequencies of count bins for a few genes (a second predictive pass,
        on those genes only)."""
        fit = self.fit
        idx = np.array([fit.var_names.get_loc(g) for g in genes])
        data = self.data
        y = np.concatenate([data.rows(np.arange(s, min(s + 4096, data.n_obs)))[:, idx]
                            for s in range(0, data.n_obs, 4096)])
        edges = [np.unique(np.linspace(0, np.quantile(y[:, j], 0.995) + 1, 31).astype(int)) for j in range(len(idx))]
        expected = [np.zeros(len(e) - 1) for e in edges]
        for rows, d in fit.predictive_blocks(data, 50, streams.stream(self.seed, "rootogram")):
            sub = d.genes(idx)
            for j, e in enumerate(edges):
                cdf = np.stack([sub.genes([j]).cdf(np.full((len(rows), 1), k - 1.0))[:, 0] for k in e])
                expected[j] += np.diff(cdf, axis=0).sum(1)
        observed = [np.histogram(y[:, j], bins=e)[0].astype(float) for j, e in enumerate(edges)]
        return observed, expected, edges

    def save(self, folder: str | Path) -> Path:
        """Write the figures (PNG), `report.json` and a self-contained `report.html` to `folder`."""
        folder = Path(folder)
        summary = self.summary()
        with atomic_folder(folder) as tmp:  # earlier files are replaced only once every new one is written
            (tmp / "report.json").write_text(json.dumps(json_ready(summary), indent=2, allow_nan=False))
            images = {}
            for name, fig in self.figures().items():
                fig.savefig(tmp / f"{name}.png", dpi=110)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=110)
                images[name] = base64.b64encode(buf.getvalue()).decode()
            (tmp / "report.html").write_text(_html(summary, images))
        return folder


def _within_3se(per_gene: np.ndarray, levels: list[float], n: int) -> np.ndarray:
    lv = np.array(levels)[:, None]
    return (np.abs(per_gene - lv) <= 3 * np.sqrt(lv * (1 - lv) / n)).mean(1)


def _html(summary: dict, images: dict[str, str]) -> str:
    rows = "".join(f"<tr><td>{a}</td><td>{c:.4f}</td><td>{summary['worst_decile_deviation'][a]:.4f}</td>"
                   f"<td>{summary['genes_within_3se'][a]:.4f}</td></tr>" for a, c in summary["coverage"].items())
    worst = "".join(f"<tr><td>{html.escape(w['gene'])}</td><td>{w['decile']}</td><td>{w['max_z']:.1f}</td>"
                    + "".join(f"<td>{v:.3f}</td>" for v in w["coverage"].values()) + "</tr>"
                    for w in summary["worst_genes"])
    stats = "".join(f"<tr><td>{html.escape(k)}</td><td>{v.get('ks', float('nan')):.3f}</td>"
                    f"<td>{v.get('wasserstein', float('nan')):.4g}</td></tr>"
                    for k, v in summary["summary_statistics"].items())
    progs = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{c:.3f}</td>" for c in v["coverage"].values())
                    + f"<td>{v['uniformity']['inside_band']}</td></tr>" for k, v in summary["gene_programs"].items())
    imgs = "".join(f"<figure><img src='data:image/png;base64,{b}'><figcaption>{html.escape(n)}</figcaption></figure>"
                   for n, b in images.items())
    pu = summary["pit_uniformity"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>probgex calibration report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}}figure{{display:inline-block;margin:4px}}img{{max-width:520px}}</style>
</head><body><h1>probgex calibration report</h1>
<p>{html.escape(summary['model'])}: {summary['n_obs']} held-out observations x {summary['n_genes']} genes,
{summary['n_samples']} predictive draws. Mean log predictive density per observation:
<b>{summary['mean_log_predictive_density']:.2f}</b>; mean CRPS {summary['mean_crps']:.4g}.</p>
<h2>Coverage of central intervals (randomized PIT)</h2>
<table><tr><th>nominal</th><th>pooled</th><th>worst decile |dev|</th><th>genes within 3 SE</th></tr>{rows}</table>
<p>PIT uniformity (99% simultaneous ECDF band): pooled inside band: {pu['pooled']['inside_band']}
(max excursion {pu['pooled']['max_excursion']:.2f} band half-widths); genes passing: {pu['fraction_genes_passing']:.3f}</p>
<h2>Worst-calibrated genes</h2><table><tr><th>gene</th><th>decile</th><th>max z</th>
{''.join(f'<th>{a}</th>' for a in summary['coverage'])}</tr>{worst}</table>
<h2>Observations least covered (at 90%)</h2><table><tr><th>obs</th><th>coverage</th><th>log p(x | c)</th></tr>
{''.join(f"<tr><td>{html.escape(w['obs'])}</td><td>{w['coverage_0.9']:.3f}</td><td>{w['log_predictive_density']:.1f}</td></tr>" for w in summary['worst_observations'])}</table>
<h2>Summary statistics, observed vs replicated</h2><table><tr><th>statistic</th><th>KS</th><th>Wasserstein</th></tr>{stats}</table>
<h2>Joint calibration: PIT of gene-program sums</h2><table><tr><th>program</th>
{''.join(f'<th>{a}</th>' for a in summary['coverage'])}<th>uniform</th></tr>{progs}</table>
<h2>Figures</h2>{imgs}</body></html>"""
