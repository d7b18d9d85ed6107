"""Simulated two-group experiments for power analysis.

A `Truth` holds, per posterior draw s and gene g, the log expected count per unit of library size in
the reference group and the NB dispersion. From a fitted probgex GLM (`truth_from_fit`) every draw is a
joint posterior draw of the fit's coefficients and dispersions, so experiments simulated from different
draws carry the fit's uncertainty; `Truth.fixed` repeats one known parameter set (the "pilot estimates
as truth" view of powsimR-style tools, and the known truth of the tests).

`simulate_counts` draws one experiment per (draw, replicate): library sizes log-normal around `depth`,
a random set of DE genes with log2 fold changes `lfc` (a magnitude with random signs, or a user list),
NB counts sampled on the host (Gamma-Poisson in NumPy, ~10x JAX's speed on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd

from probgex.errors import DataError, SpecError


@dataclass(frozen=True)
class Truth:
    """Parameters of the reference group: log_rate (S, G) log mean per unit library, alpha (S, G)
    NB dispersions (variance mu + alpha mu^2)."""

    log_rate: np.ndarray
    alpha: np.ndarray
    genes: np.ndarray

    @classmethod
    def fixed(cls, mean_fraction, alpha, n_draws: int = 1, genes=None) -> Truth:
        """One parameter set repeated: mean_fraction (G,) the expected share of a library per gene."""
        rate = np.asarray(mean_fraction, np.float64)
        alpha = np.broadcast_to(np.asarray(alpha, np.float64), rate.shape)
        if rate.ndim != 1 or np.any(rate <= 0) or np.any(alpha <= 0):
            raise DataError("mean_fraction and alpha must be positive, one value per gene")
        genes = np.asarray(genes if genes is not None else [f"g{j}" for j in range(rate.size)], dtype=str)
        return cls(np.tile(np.log(rate), (n_draws, 1)), np.tile(alpha, (n_draws, 1)), genes)

    @property
    def n_draws(self) -> int:
        return self.log_rate.shape[0]


def reference_row(fit, contrast: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Design rows of the reference and of the tested level of a fitted GLM; other categorical
    covariates at their first level and numeric ones at 0."""
    enc = fit.encoding
    col, level, ref = contrast
    if col not in enc.levels:
        raise SpecError(f"the model's formula {enc.formula!r} has no factor {col!r}; its factors are "
                        f"{list(enc.levels)}")
    for lv in (level, ref):
        if lv not in enc.levels[col]:
            raise SpecError(f"level {lv!r} is not a level of {col!r} in the fitted model; levels: {enc.levels[col]}")
    rows = {}
    for lv in (ref, level):
        obs = {v: [enc.levels[v][0]] for v in enc.levels} | {v: [0.0] for v in enc.numeric}
        obs[col] = [lv]
        rows[lv] = enc.transform(pd.DataFrame(obs))[0].astype(np.float64)
    return rows[ref], rows[level]


def truth_from_fit(fit, contrast: tuple[str, str, str], n_draws: int, key: jax.Array) -> Truth:
    """n_draws joint posterior draws of a fitted GLM's reference-group rates and dispersions."""
    if getattr(fit, "spec", None) is None or fit.spec.story != "glm":
        raise SpecError("power curves need a fitted GLM (pg.Model(formula, likelihood='nb') without a "
                        "latent); refit without `latent`")
    if fit.spec.likelihood != "nb":
        raise SpecError(f"power curves simulate NB counts; the model has likelihood "
                        f"{fit.spec.likelihood!r}: refit with likelihood='nb'")
    ref_row, _ = reference_row(fit, contrast)
    v = fit.story.draw_gene_params(fit.params, key, n_draws)
    beta, theta, _ = fit.story.split(v)  # (S, P, G), (S, K, G)
    log_rate = np.einsum("p,spg->sg", ref_row, np.asarray(beta, np.float64))
    alpha = 1.0 / np.asarray(theta, np.float64)[:, 0, :]  # first dispersion group
    return Truth(log_rate, alpha, np.asarray(fit.var_names, dtype=str))


def effect_sizes(lfc, n_genes: int, de_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """True log2 fold changes (G,) of one experiment: a user list as is, or a magnitude `lfc` with
    random signs on a random `de_fraction` of the genes."""
    arr = np.asarray(lfc, np.float64)
    if arr.ndim == 1:
        if arr.size != n_genes:
            raise DataError(f"a list of log2 fold changes needs one per gene ({n_genes}), got {arr.size}")
        return arr
    if arr.ndim != 0 or not np.isfinite(arr) or arr <= 0:
        raise SpecError(f"lfc must be a positive log2 fold change (e.g. 0.585 for 1.5-fold) or one per gene, got {lfc!r}")
    if not 0 < de_fraction <= 1:
        raise SpecError(f"de_fraction must lie in (0, 1], got {de_fraction!r}")
    k = max(1, int(round(de_fraction * n_genes)))
    out = np.zeros(n_genes)
    idx = rng.choice(n_genes, k, replace=False)
    out[idx] = float(arr) * rng.choice([-1.0, 1.0], k)
    return out


def simulate_counts(truth: Truth, draw: int, n_per_group: int, *, depth: float, depth_sd: float,
                    lfc, de_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One experiment from draw `draw`: counts (2n, G) (reference group first), true log2 fold changes
    (G,) and the expected counts per gene in the reference group at `depth` (G,)."""
    G = truth.log_rate.shape[1]
    l2fc = effect_sizes(lfc, G, de_fraction, rng)
    grp = np.repeat([0.0, 1.0], n_per_group)
    lib = depth * np.exp(rng.normal(0.0, depth_sd, 2 * n_per_group))
    log_mu = np.log(lib)[:, None] + truth.log_rate[draw][None] + grp[:, None] * l2fc[None] * np.log(2.0)
    mu = np.exp(np.minimum(log_mu, 30.0))
    r = 1.0 / truth.alpha[draw]
    counts = rng.poisson(rng.gamma(r[None], mu / r[None]))
    return counts.astype(np.float32), l2fc, depth * np.exp(truth.log_rate[draw])
