"""Simulated two-group experiments for power analysis.

A `Truth` holds, per posterior draw s and gene g, the log expected count per unit of library size in
the reference group and the NB dispersion. From a fitted probgex GLM (`truth_from_fit`) every draw is a
joint posterior draw of the fit's coefficients and dispersions, so experiments simulated from different
draws carry the fit's uncertainty; `Truth.fixed` repeats one known parameter set (the "pilot estimates
as truth" view of powsimR-style tools, and the known truth of the tests).

A truth may also carry its own log2 fold changes per draw (`Truth.lfc`, (S, G)): from the fit's
posterior of the contrast (`truth_from_fit(..., effects="posterior")`), optionally shrunk across genes by
empirical Bayes (`effects="shrunk"`, see `effects.py`), or a fixed vector (`Truth.fixed(..., lfc=...)`).

`simulate_counts` draws one experiment per (draw, replicate): library sizes log-normal around `depth`,
the truth's own fold changes or else a random set of DE genes with log2 fold changes `lfc` (a magnitude
with random signs, or a user list), NB counts sampled on the host (Gamma-Poisson in NumPy, ~10x JAX's
speed on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from probgex import rng as streams
from probgex.choices import EFFECTS as CHOICES_EFFECTS
from probgex.errors import DataError, SpecError


@dataclass(frozen=True)
class Truth:
    """Parameters of the reference group: log_rate (S, G) log mean per unit library, alpha (S, G)
    NB dispersions (variance mu + alpha mu^2); optionally lfc (S, G), the tested group's log2 fold
    changes per draw (None: `power_grid`'s `lfc` and `de_fraction` set them per experiment);
    optionally quality (df, m, s): a GLM fitted with sample quality, whose dispersions are those of a
    sample with multiplier w = 0; each simulated sample then gets alpha exp(w_n), w_n ~ t(df, m, s)."""

    log_rate: np.ndarray
    alpha: np.ndarray
    genes: np.ndarray
    lfc: np.ndarray | None = None
    quality: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.lfc is not None:
            lfc = np.asarray(self.lfc, np.float64)
            if lfc.shape != self.log_rate.shape or not np.all(np.isfinite(lfc)):
                raise DataError(f"Truth.lfc must be finite log2 fold changes of shape {self.log_rate.shape} "
                                f"(draws, genes), got shape {lfc.shape}")
            object.__setattr__(self, "lfc", lfc)

    @classmethod
    def fixed(cls, mean_fraction, alpha, n_draws: int = 1, genes=None, lfc=None) -> Truth:
        """One parameter set repeated: mean_fraction (G,) the expected share of a library per gene;
        lfc (G,) optional log2 fold changes of the tested group."""
        rate = np.asarray(mean_fraction, np.float64)
        alpha = np.broadcast_to(np.asarray(alpha, np.float64), rate.shape)
        if rate.ndim != 1 or np.any(rate <= 0) or np.any(alpha <= 0):
            raise DataError("mean_fraction and alpha must be positive, one value per gene")
        genes = np.asarray(genes if genes is not None else [f"g{j}" for j in range(rate.size)], dtype=str)
        if lfc is not None:
            lfc = np.asarray(lfc, np.float64)
            if lfc.shape != rate.shape:
                raise DataError(f"lfc needs one log2 fold change per gene ({rate.size}), got shape {lfc.shape}")
            lfc = np.tile(lfc, (n_draws, 1))
        return cls(np.tile(np.log(rate), (n_draws, 1)), np.tile(alpha, (n_draws, 1)), genes, lfc)

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
        rows[lv] = enc.transform(pd.DataFrame(obs), check_range=False)[0].astype(np.float64)
    return rows[ref], rows[level]


EFFECTS = (None, *CHOICES_EFFECTS)  # None: a fixed lfc


def truth_from_fit(fit, contrast: tuple[str, str, str], n_draws: int, key, *,
                   effects: str | None = None, null_weight: float = 10.0) -> Truth:
    """n_draws joint posterior draws of a fitted GLM's reference-group rates and dispersions; with
    `effects`, also of the contrast's log2 fold changes: "posterior" the GLM's own posterior draws,
    "shrunk" the same draws mapped to the posterior under an empirical-Bayes normal-mixture prior fitted
    across genes (`effects.shrink_draws`; `key` an int seed or a JAX key; the unshrunk posterior's mean and sd from 512 extra draws;
    `null_weight`: the mixture's Dirichlet penalty on its point mass at 0, 10 as ashr, 1 for none)."""
    if effects not in EFFECTS:
        raise SpecError(f"effects must be one of {list(EFFECTS)}, got {effects!r}")
    if getattr(fit, "spec", None) is None or fit.spec.story != "glm":
        raise SpecError("power curves need a fitted GLM (pg.Model(formula, likelihood='nb') without a "
                        "latent); refit without `latent`")
    if fit.spec.likelihood != "nb":
        raise SpecError(f"power curves simulate NB counts; the model has likelihood "
                        f"{fit.spec.likelihood!r}: refit with likelihood='nb'")
    ref_row, level_row = reference_row(fit, contrast)
    posterior = fit.posterior()
    beta, extra = posterior.draws(streams.stream(key, "posterior"), n_draws)  # (S, P, G), by name
    theta = extra["theta"]  # (S, K, G)
    beta = np.asarray(beta, np.float64)
    log_rate = np.einsum("p,spg->sg", ref_row, beta)
    alpha = 1.0 / np.asarray(theta, np.float64)[:, 0, :]  # first dispersion group
    lfc = None
    if effects is not None:
        lfc = np.einsum("p,spg->sg", level_row - ref_row, beta) / np.log(2.0)
    if effects == "shrunk":
        from probgex.power.effects import fit_normal_mixture, shrink_draws

        k_moments = streams.stream(key, "effect_moments")
        more, _ = posterior.draws(k_moments, 512)
        l2 = np.einsum("p,spg->sg", level_row - ref_row, np.asarray(more, np.float64)) / np.log(2.0)
        b_hat, s = l2.mean(0), l2.std(0)
        pi, grid = fit_normal_mixture(b_hat, s, null_weight=null_weight)
        lfc = shrink_draws(lfc, b_hat, s, pi, grid, streams.host_rng(key, "shrinkage"))
    quality = None
    if "quality_sd" in fit.params:  # per-sample dispersion scales (probgex.models.quality)
        from probgex.models.quality import QUALITY_DF
        quality = (QUALITY_DF, float(fit.params["quality_mean"]), float(fit.params["quality_sd"]))
    return Truth(log_rate, alpha, np.asarray(fit.var_names, dtype=str), lfc, quality)


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
    l2fc = truth.lfc[draw] if truth.lfc is not None else effect_sizes(lfc, G, de_fraction, rng)
    grp = np.repeat([0.0, 1.0], n_per_group)
    lib = depth * np.exp(rng.normal(0.0, depth_sd, 2 * n_per_group))
    log_mu = np.log(lib)[:, None] + truth.log_rate[draw][None] + grp[:, None] * l2fc[None] * np.log(2.0)
    mu = np.exp(np.minimum(log_mu, 30.0))
    r = 1.0 / truth.alpha[draw][None]
    if truth.quality is not None:  # each sample's quality drawn from the fitted prior
        df, m, s = truth.quality
        r = r * np.exp(-(m + s * rng.standard_t(df, 2 * n_per_group)))[:, None]
    counts = rng.poisson(rng.gamma(r, mu / r))
    return counts.astype(np.float32), l2fc, depth * np.exp(truth.log_rate[draw])
