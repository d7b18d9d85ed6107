"""The calibration report: tables, figures, the worst-calibrated genes, and files (PNG, JSON, HTML)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from probgex import rng as streams
from probgex._outputs import REPORT_FILES, atomic_folder, json_ready  # noqa: F401  (REPORT_FILES: what save writes)
from probgex.diagnostics import plots, report_html
from probgex.diagnostics.ppc import Summaries
from probgex.diagnostics.verdict import verdict



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
            "verdict": verdict(self.pit_pooled, float(genes_pass.mean()), self.programs, r["pit"].values,
                               {str(a): float(c) for a, c in zip(self.levels, r["coverage"].values)}),
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
                     "zero_fraction": (self.ppc.obs_zf, self.ppc.rep_zf)},
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
        edges = [plots.rootogram_edges(y[:, j]) for j in range(len(idx))]
        expected = [np.zeros(len(e) - 1) for e in edges]
        for rows, d in fit.predictive_blocks(data, 50, streams.stream(self.seed, "rootogram")):
            sub = d.genes(idx)
            for j, e in enumerate(edges):
                cdf = np.stack([sub.genes([j]).cdf(np.full((len(rows), 1), k - 1.0))[:, 0] for k in e])
                expected[j] += np.diff(cdf, axis=0).sum(1)  # P(e[i] <= x < e[i + 1]) summed over obs
        # the same half-open integer bins [e[i], e[i + 1]); counts at or beyond the last edge are not shown
        observed = [np.bincount(y[:, j][y[:, j] < e[-1]].astype(np.int64) // (e[1] - e[0]),
                                minlength=len(e) - 1).astype(float) for j, e in enumerate(edges)]
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
            (tmp / "report.html").write_text(report_html.page(summary, images))
        return folder


def _within_3se(per_gene: np.ndarray, levels: list[float], n: int) -> np.ndarray:
    lv = np.array(levels)[:, None]
    return (np.abs(per_gene - lv) <= 3 * np.sqrt(lv * (1 - lv) / n)).mean(1)
