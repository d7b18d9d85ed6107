"""Summary-statistic checks, observed vs replicated data, streamed over blocks of observations so that
draws x observations x genes never sits in memory at once.

Per gene: mean, variance, zero fraction, coefficient of variation (and so the mean-variance and
mean-zero relations); per observation: library size and zero fraction; the gene-gene correlation of
the most variable genes; sums over gene programs (joint calibration). The properties simulator
benchmarks use (SimBench, Crowell et al. 2023).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ks_2samp, wasserstein_distance


class Summaries:
    """Accumulates per-gene moments and per-observation statistics of observed and replicated counts."""

    def __init__(self, n_obs: int, n_genes: int, n_draws: int, top_genes: np.ndarray,
                 programs: dict[str, np.ndarray], n_keep: int = 20):
        self.S, self.n, self.G = n_draws, n_obs, n_genes
        self.obs_sum, self.obs_sq, self.obs_zero = (np.zeros(n_genes) for _ in range(3))
        self.rep_sum, self.rep_sq, self.rep_zero = (np.zeros((n_draws, n_genes)) for _ in range(3))
        self.obs_lib, self.obs_zf = np.zeros(n_obs), np.zeros(n_obs)
        self.rep_lib, self.rep_zf = np.zeros((n_draws, n_obs)), np.zeros((n_draws, n_obs))
        self.top = np.asarray(top_genes)
        self.keep = min(n_keep, n_draws)
        self.obs_top = np.zeros((n_obs, len(self.top)))
        self.rep_top = np.zeros((self.keep, n_obs, len(self.top)))
        self.programs = programs
        self.obs_prog = np.zeros((n_obs, len(programs)))
        self.rep_prog = np.zeros((n_draws, n_obs, len(programs)))

    def add(self, rows: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Observed counts y (b, G) and replicated counts x (S, b, G) of the observations `rows`."""
        self.obs_sum += y.sum(0)
        self.obs_sq += (y**2).sum(0)
        self.obs_zero += (y == 0).sum(0)
        xf = x.astype(np.float64)
        self.rep_sum += xf.sum(1)
        self.rep_sq += (xf**2).sum(1)
        self.rep_zero += (x == 0).sum(1)
        self.obs_lib[rows], self.obs_zf[rows] = y.sum(1), (y == 0).mean(1)
        self.rep_lib[:, rows], self.rep_zf[:, rows] = xf.sum(2), (x == 0).mean(2)
        self.obs_top[rows] = y[:, self.top]
        self.rep_top[:, rows] = xf[: self.keep][:, :, self.top]
        for j, genes in enumerate(self.programs.values()):
            self.obs_prog[rows, j] = y[:, genes].sum(1)
            self.rep_prog[:, rows, j] = xf[:, :, genes].sum(2)

    def gene_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-gene statistics: observed (G,) and replicated (S, G)."""
        out = {}
        for who, s, sq, z in (("obs", self.obs_sum, self.obs_sq, self.obs_zero),
                              ("rep", self.rep_sum, self.rep_sq, self.rep_zero)):
            mean = s / self.n
            var = np.maximum(sq / self.n - mean**2, 0) * self.n / max(self.n - 1, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                cv = np.where(mean > 0, np.sqrt(var) / mean, np.nan)
            out[who] = {"mean": mean, "variance": var, "zero_fraction": z / self.n, "cv": cv}
        return {k: (out["obs"][k], out["rep"][k]) for k in out["obs"]}

    def table(self) -> dict:
        """Distances between observed and replicated distributions of each statistic, and per-gene
        posterior predictive p-values (share of replicates at or above the observed statistic)."""
        rows = {}
        for name, (o, r) in self.gene_stats().items():
            t = _transform(name)
            ok = np.isfinite(o)
            rows[f"gene_{name}"] = _distance(t(o[ok]), t(r[:, ok].ravel()))
            ppp = (r >= o[None]).mean(0)
            rows[f"gene_{name}"]["extreme_genes"] = float(np.mean((ppp < 0.005) | (ppp > 0.995)))
        rows["obs_library_size"] = _distance(np.log1p(self.obs_lib), np.log1p(self.rep_lib.ravel()))
        rows["obs_zero_fraction"] = _distance(self.obs_zf, self.rep_zf.ravel())
        c_obs, c_rep = self.correlations()
        iu = np.triu_indices(len(self.top), 1)
        rows["gene_correlation"] = {"mean_abs_difference": float(np.nanmean(np.abs(c_obs[iu] - c_rep[iu]))),
                                    **_distance(c_obs[iu], c_rep[iu])}
        return rows

    def correlations(self) -> tuple[np.ndarray, np.ndarray]:
        """Gene-gene correlation of log1p counts of the top genes: observed, and replicated (mean
        over the kept draws)."""
        c_obs = _corr(np.log1p(self.obs_top))
        c_rep = np.nanmean([_corr(np.log1p(r)) for r in self.rep_top], axis=0)
        return c_obs, c_rep


def _corr(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.corrcoef(a, rowvar=False)


def _transform(name: str):
    return np.log1p if name in ("mean", "variance") else (lambda v: v)


def _distance(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return {"ks": float("nan"), "wasserstein": float("nan")}
    return {"ks": float(ks_2samp(a, b).statistic), "wasserstein": float(wasserstein_distance(a, b))}


def gene_programs(top: np.ndarray, corr: np.ndarray, n_genes: int, size: int, n_random: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gene sets for joint calibration: the `size` top genes most correlated with each other (greedy
    around the gene with the largest summed |correlation|) and `n_random` random sets of that size."""
    size = min(size, len(top))
    strength = np.nansum(np.abs(corr), axis=0)
    seed = int(np.argmax(strength))
    order = np.argsort(-np.nan_to_num(corr[seed]))
    programs = {"correlated": top[np.sort(order[:size])]}
    for i in range(n_random):
        programs[f"random_{i + 1}"] = np.sort(rng.choice(n_genes, size, replace=False))
    return programs
