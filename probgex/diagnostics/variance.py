"""`explain(fit, adata)`: the share of each gene's variance, on the log1p CP10k scale, explained by each
term of the formula, by the latent, by NB overdispersion and by count sampling noise, with intervals.

The decomposition (by simulation from the fitted model at the observed design)
-------------------------------------------------------------------------------
Take the observations of `adata` as they are: their metadata c_n and library sizes l_n. For one draw s
of the model's parameters (the GLM: a joint posterior draw of every gene's coefficients and dispersion;
the cVAE / residual stories: the fitted networks, point estimates), simulate for every observation
`n_latent` latents z ~ p(z | c_n) (stories with a latent), for each 4 Gamma rates (the NB / ZINB
mixing layer; the mean itself for Poisson) and for each rate `n_counts` Poisson counts x (zeroed with the
ZINB gate's probability), and read them as scanpy users do:

    y = log1p(scale * x / l_n),   scale = 1e4 (counts per 10k).

The library size l_n is each observation's own, as the model uses it: its total count
(`library="observed"`, exactly scanpy's `normalize_total(target_sum=1e4)` + `log1p` when the model holds
every gene), the median-of-ratios size factor on the read scale (`library="size_factors"`, bulk: CP10k
of a composition-robust library), or for a latent library (`library="latent"`) the drawn library of
each simulated profile (the sum over the model's genes of its means). Library sizes are never
varied: how deep an observation was sequenced is held as observed, as the normalisation removes it.

The variance of y over the observations (equal weight each), latents and counts is split exactly by
the law of total variance into

- **noise**: E Var(y | c_n, l_n, z, rate), count sampling noise: Poisson given the rate (and the ZINB
  gate's zeros, treated as technical);
- **overdispersion** (NB / ZINB): E Var_rate(E[y | rate] | c_n, l_n, z), the extra-Poisson variation of
  the NB's Gamma layer: biological variation between observations that neither the metadata nor the
  latent explain (for a GLM, all of it; variancePartition puts it in its residual with the noise);
- **latent**: E_n Var_z(E[y | c_n, l_n, z]), the variation the latent carries beyond the metadata;
- the between-observation variance of m_n = E[y | c_n, l_n], split among the formula's terms (main
  effects and interactions) by the Shapley value of least-squares projections of m onto the design's
  terms over marginality-respecting orders (`partition.py`: for a balanced design the classical ANOVA
  decomposition; coding-invariant; LMG-style averaging of the order effects of unbalanced designs);
- **other**: what of Var_n(m) the formula's span does not carry: on the log1p scale an additive
  log-mean model is no longer exactly additive, and log1p CP10k of a shallower observation is lower at
  the same normalised mean (depth), which the terms cannot explain; for the cVAE, also non-additive
  effects of the metadata that the decoder learned beyond the formula's terms.

Each component of each draw is estimated from the simulation with its Monte Carlo noise subtracted in
expectation (within-observation variances; leverage-weighted for the projections), so it is unbiased
and may fall below 0 when its true value is near 0. The variance over the observations of effects the
data determine poorly (a level seen in 1-3 observations) is inflated by their uncertainty, twice: in the
fit (E Var_n(X beta_hat) = Var_n(X beta) + tr(A Sigma)) and in the posterior draws around it. The terms
and "other" are therefore bias-corrected as a bootstrap estimate is: each draw is shifted by
2 (plug-in - mean over draws), the plug-in being the split of the draws' mean profile, so that their
mean is 2 plug-in - posterior mean (exact for quadratic functionals under a Gaussian posterior; on a
simulated 40-sample design with a null six-level factor of levels of 1-17 samples, it took the null
factor's mean share from 0.14 to 0.02 and the 90% coverage of the real factor's share from 0.71 to
0.87). `share` is each component's mean over the draws, clipped at 0, over their sum (the shares sum to 1); `lower` / `upper` is the central `level` interval of
the draws' shares (each draw's components over their sum), clipped to [0, 1]. It carries the posterior
uncertainty of the GLM's parameters and the Monte Carlo error of one draw (so it is somewhat wider than
the posterior alone); for the networks' point estimates, only the latter.

Limits. Shares are of the variance over *these* observations: an unbalanced design (one level with most
observations) gives its term less variance than a balanced one would. A numeric covariate enters as the
formula has it (linear); the log1p scale makes its curve part "other". The shares describe the fitted
model: where it is misspecified (an interaction missing from the formula of a GLM), the data's variance
it cannot produce is not attributed anywhere, and what it produces as noise may in the data be a term.
Compare with variancePartition (a linear mixed model per gene on log-CPM): there the noise of counts is
part of the residual with unexplained biology; here they are separate (noise vs overdispersion, latent,
other). Whether the NB's Gamma layer is biology or technical extra-Poisson noise the model cannot tell;
it is reported as "overdispersion", apart from the Poisson sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from probgex.diagnostics.partition import Partition, formula_terms
from probgex._checks import check_explain_options
from probgex.errors import DataError, SpecError
from probgex.models.families import NAMES, family
from probgex.models.families.base import DISPERSION

SCALE = 1e4  # counts per 10k
BLOCK_ENTRIES = 2**22  # simulated entries (draws x latents x counts x rows x genes) held at once
RESERVED = ("latent", "overdispersion", "other", "noise")
RATES = 4  # Gamma rates drawn per NB / ZINB mean (the overdispersion layer)


@dataclass(frozen=True)
class Options:
    n_draws: int
    n_counts: int
    n_latent: int
    level: float
    max_obs: int
    scale: float


def _check(n_draws, n_counts, n_latent, level, max_obs, scale, n_obs: int) -> Options:
    check_explain_options(n_draws=n_draws, n_counts=n_counts, n_latent=n_latent, level=level, max_obs=max_obs,
                          scale=scale)
    if n_counts is None:  # enough count draws per rate that ~400 simulated values (4 rates) enter each gene's noise
        n_counts = int(np.clip(np.ceil(100 / max(min(n_obs, max_obs), 1)), 2, 4))
    return Options(int(n_draws), int(n_counts), int(n_latent), float(level), int(max_obs), float(scale))


def explain(fit, adata, *, n_draws: int = 50, n_counts: int | None = None, n_latent: int = 2,
            level: float = 0.9, max_obs: int = 2000, scale: float = SCALE, seed: int = 0,
            out: str | Path | None = None) -> xr.Dataset:
    """Share of each gene's variance of log1p(counts per 10k) explained by each formula term, the latent
    and count noise, by simulation from `fit` at the observations of `adata` (see the module docstring).

    `n_draws` parameter draws (posterior draws for the GLM; Monte Carlo replicates for the networks) give
    the intervals; each simulates `n_latent` latents per observation (stories with a latent) and
    `n_counts` Poisson counts per Gamma rate (4 rates per mean; default: enough for ~400 values per gene,
    2 to 4). At most `max_obs`
    observations are used (a random subset beyond; the shares are averages over observations). Returns a
    Dataset over (gene, term): `share` (mean over draws), `lower` / `upper` (central `level` interval over
    draws), and `total_variance` (gene) of log1p CP10k; the terms are the formula's, then "latent"
    (stories with a latent), "overdispersion" (NB / ZINB), "other" and "noise". The same seed gives the same result. With `out`, also
    writes variance.csv, variance.json, violins.png and top_genes.png there (`variance_report.write`).
    """
    import anndata as ad

    from probgex import rng as streams

    if not hasattr(fit, "spec") or not hasattr(fit, "encoding"):
        raise DataError(f"explain needs a fitted model (pg.Model(...).fit or pg.load), got {type(fit).__name__}")
    if not isinstance(adata, ad.AnnData):
        raise DataError(f"adata must be an AnnData with raw counts and the formula's metadata, got "
                        f"{type(adata).__name__}")
    fam = family(fit.spec.likelihood)
    if not fam.gamma_poisson:  # the families whose count noise is Poisson over a Gamma layer (+ a gate)
        explained = [n for n in NAMES if family(n).gamma_poisson]
        raise SpecError(f"explain splits count noise into Gamma and Poisson layers, which the {fit.spec.likelihood!r} "
                        f"likelihood does not have; it supports {', '.join(explained)}")
    opt = _check(n_draws, n_counts, n_latent, level, max_obs, scale, adata.n_obs)
    if adata.n_obs > opt.max_obs:  # a random subset of observations (the stage-1 offset only for those)
        keep = np.sort(streams.host_rng(seed, "explain_obs").choice(adata.n_obs, opt.max_obs, replace=False))
        adata = adata[keep]
    data = fit.data(adata)
    if data.n_obs < 3:
        raise DataError(f"explain needs at least 3 observations with counts, got {data.n_obs}")
    terms = formula_terms(fit.encoding, data.obs)
    clash = [t for t in terms.names if t in RESERVED]
    if clash:
        raise SpecError(f"formula term(s) {clash} collide with the names of the other components {RESERVED}; "
                        "rename the obs column(s)")
    latent = fit.spec.latent is not None
    R = opt.n_latent if latent else 1
    Q = RATES if fam.role(DISPERSION) else 1  # a Gamma layer to draw rates from (Poisson: none)
    acc = _Accumulator(Partition(data.design, terms, opt.n_draws, data.n_genes), opt, R, Q)
    rng = streams.host_rng(seed, "explain_counts")
    key = streams.stream(seed, "explain_draws")
    blocks = _latent_blocks(fit, data, opt, R, Q, key, rng) if latent else _glm_blocks(fit, data, opt, Q, key, rng)
    for rows, genes, y in blocks:
        acc.update(rows, genes, y)
    components = acc.components()  # (draws, genes, K)
    names = (list(terms.names) + (["latent"] if latent else []) + (["overdispersion"] if Q > 1 else [])
             + ["other", "noise"])
    ds = _dataset(components, names, data, fit, opt, R)
    if out is not None:
        from probgex.diagnostics.variance_report import write

        write(ds, out)
    return ds


class _Accumulator:
    """Per draw and gene: the sums of the within-level variances and the projections of the mean."""

    def __init__(self, part: Partition, opt: Options, R: int, Q: int):
        self.part, self.opt, self.R, self.Q = part, opt, R, Q
        S, G = part.proj[frozenset()].shape[0], part.proj[frozenset()].shape[2]
        self.noise, self.over, self.latent = np.zeros((S, G)), np.zeros((S, G)), np.zeros((S, G))

    def update(self, rows: np.ndarray, genes: slice, y: np.ndarray) -> None:
        """y: (draws, latents R, rates Q, counts M, rows, genes) simulated log1p CP10k."""
        M = y.shape[3]
        hq = y.mean(3)  # E[y | rate] estimate
        within = y.var(3, ddof=1)  # E = Poisson noise given the rate
        self.noise[:, genes] += within.sum((1, 2, 3))
        hr = hq.mean(2)
        if self.Q > 1:
            sq = hq.var(2, ddof=1)  # E = Var_rate E[y | rate] + noise / M
            self.over[:, genes] += sq.sum((1, 2))
        if self.R > 1:
            sr = hr.var(1, ddof=1)  # E = Var_z E[y | z] + (overdispersion + noise / M) / Q
            self.latent[:, genes] += sr.sum(1)
            err = sr / self.R
        elif self.Q > 1:
            err = sq[:, 0] / self.Q
        else:
            err = within[:, 0, 0] / M
        self.part.update(rows, genes, hr.mean(1), err)

    def components(self) -> np.ndarray:
        """Per draw and gene the variance components (draws, genes, K): terms, [latent], [overdispersion],
        other, noise.

        The terms and "other" are shifted by 2 (plug-in - mean over draws), so their mean over draws is
        2 v(mean of m) - mean of v(m_s): the variance of uncertain effects over the observations is
        inflated by their uncertainty (E v(beta_s) = v(beta_hat) + tr(A Sigma) for a quadratic v, and
        E v(beta_hat) = v(beta) + tr(A Sigma) again), and this removes both inflations to first order.
        It moves nothing where the draws are Monte Carlo replicates of one fit (the networks)."""
        n, M, R, Q = self.part.n, self.opt.n_counts, self.R, self.Q
        noise = self.noise / (n * R * Q)
        over = self.over / (n * R) - noise / M if Q > 1 else 0.0
        terms, other = self.part.shares()
        terms_pi, other_pi = self.part.shares(plug_in=True)
        terms = terms + 2 * (terms_pi - terms.mean(0))
        other = other + 2 * (other_pi - other.mean(0))
        parts = [terms[..., t] for t in range(terms.shape[-1])]
        if R > 1:
            parts.append(self.latent / n - (over + noise / M) / Q)
        if Q > 1:
            parts.append(over)
        parts += [other, noise]
        return np.stack(parts, -1)


def _simulate(mu, theta, gate, lib, opt: Options, Q: int, rng) -> np.ndarray:
    """log1p CP10k of counts drawn in two layers: Q Gamma rates per mean (the NB's overdispersion; the
    mean itself for Poisson), then M Poisson counts per rate, zeroed with the ZINB gate's probability.
    mu, theta, gate logits (draws, rows, genes) or broadcastable; lib broadcastable to them. Returns
    (draws, Q, M, rows, genes)."""
    mu = np.asarray(mu, np.float64)
    if theta is None:
        rate = mu[:, None]
    else:
        th = np.broadcast_to(theta, mu.shape)
        rate = np.moveaxis(rng.gamma(th, mu / th, size=(Q, *mu.shape)), 0, 1)
    keep = None if gate is None else 1.0 - 1.0 / (1.0 + np.exp(-np.broadcast_to(gate, mu.shape)))
    out = np.empty((rate.shape[0], rate.shape[1], opt.n_counts, *rate.shape[2:]))
    for m in range(opt.n_counts):
        x = rng.poisson(rate).astype(np.float64)
        if keep is not None:
            x *= rng.random(rate.shape) < keep[:, None]
        out[:, :, m] = np.log1p(opt.scale * x / lib[:, None])
    return out


def _glm_blocks(fit, data, opt: Options, Q: int, key, rng):
    """GLM stories: one joint posterior draw of every gene's parameters per draw, shared by all rows."""
    S, M = opt.n_draws, opt.n_counts
    beta, extra = fit.posterior().draws(key, S)
    beta = np.asarray(beta, np.float64)  # (S, P, G)
    extra = {k: np.asarray(v, np.float64) for k, v in extra.items()}  # theta (S, K, G), gate (S, G)
    x = data.design.astype(np.float64)
    lib = data.library_size.astype(np.float64)
    rows = np.arange(data.n_obs)
    step = max(1, BLOCK_ENTRIES // (S * Q * M * data.n_obs))
    for g0 in range(0, data.n_genes, step):
        genes = slice(g0, min(g0 + step, data.n_genes))
        eta = np.einsum("np,spg->sng", x, beta[:, :, genes]) + np.log(lib)[None, :, None]
        if data.offset is not None:
            eta = eta + data.offset[None, :, genes]
        th = extra.get("theta")
        if th is not None:
            th = th[:, data.groups, genes] if data.groups is not None else th[:, :1, genes]
        gate = extra.get("gate")
        y = _simulate(np.exp(np.minimum(eta, 30.0)), th, None if gate is None else gate[:, None, genes],
                      lib[None, :, None], opt, Q, rng)
        yield rows, genes, y[:, None]


def _latent_blocks(fit, data, opt: Options, R: int, Q: int, key, rng):
    """Stories with a latent: S x R latents per row from the conditional prior, rows in blocks."""
    S, M = opt.n_draws, opt.n_counts
    latent_library = fit.spec.library == "latent"
    for rows, d in fit.predictive_blocks(data, S * R, key, from_data=False):
        # the normaliser: the observation's library, or the drawn one of a latent library
        lib = d.mu.sum(-1, keepdims=True) if latent_library else data.library_size[rows].astype(np.float64)[None, :, None]
        step = max(1, BLOCK_ENTRIES // (S * R * Q * M * len(rows)))
        for g0 in range(0, data.n_genes, step):
            genes = slice(g0, min(g0 + step, data.n_genes))
            dg = d.genes(genes)
            y = _simulate(dg.mu, dg.params.get("theta"), dg.params.get("gate"), lib, opt, Q, rng)  # (S R, Q, M, rows, g)
            yield rows, genes, y.reshape(S, R, *y.shape[1:])


def _dataset(components: np.ndarray, names: list[str], data, fit, opt: Options, R: int) -> xr.Dataset:
    """Shares from the components (draws, genes, K), each an unbiased estimate that may fall below 0.

    The point share: the components' means over the draws, clipped at 0, over their sum (so the Monte
    Carlo noise of single draws adds no ratio bias and clipping none of its own); the interval: quantiles
    of each draw's shares (components over their sum), clipped to [0, 1]."""
    total = components.sum(-1, keepdims=True)
    shares = np.divide(components, total, out=np.zeros_like(components), where=total > 0)
    lo, hi = np.clip(np.quantile(shares, [(1 - opt.level) / 2, (1 + opt.level) / 2], axis=0), 0.0, 1.0)
    mean = np.maximum(components.mean(0), 0.0)
    mean_total = mean.sum(-1, keepdims=True)
    point = np.divide(mean, mean_total, out=np.zeros_like(mean), where=mean_total > 0)
    coords = {"gene": np.asarray(data.var_names, dtype=str), "term": names}
    ds = xr.Dataset({"share": (("gene", "term"), point), "lower": (("gene", "term"), np.minimum(lo, point)),
                     "upper": (("gene", "term"), np.maximum(hi, point)),
                     "total_variance": (("gene",), total[..., 0].mean(0))}, coords=coords)
    ds.attrs = {"formula": fit.spec.formula, "story": fit.spec.story, "likelihood": fit.spec.likelihood,
                "library": fit.spec.library, "scale": f"log1p(counts per {opt.scale:g} of the library size)",
                "level": opt.level, "n_draws": opt.n_draws, "n_counts": opt.n_counts,
                "n_latent": R if fit.spec.latent is not None else 0, "n_obs": int(data.n_obs),
                "method": "law of total variance over simulated log1p CP10k; formula terms by Shapley values of "
                          "projections of the per-observation mean (probgex.diagnostics.partition)"}
    return ds
