"""A fitted model's per-observation and per-gene results written back into an AnnData, as scanpy and
scvi-tools users expect them: `annotate(fit, adata)` (also `Fit.annotate`), and the pieces it is built
from, `latent` (scvi's `get_latent_representation`), `normalized` (scvi's `get_normalized_expression`),
`dispersion`, `outlier_score`, and, for the latent stories, draws of the conditional prior p(z | c) and its
log density (`prior_samples`, `prior_log_prob`; the learned diffusion / flow priors included).

What `annotate` adds (with the default `key_added="probgex"`):

- `obsm["X_probgex"]`: the encoder means E[z | x, c] (latent stories only; the GLM has no latent);
- `obs["probgex_lpd"]`: log p(x_n | c_n), exactly `Fit.log_predictive_density` with the same seed;
- `obs["probgex_outlier"]`: `outlier_score`, the mean over genes of -log of each count's two-sided
  randomized-PIT tail probability under p(x | c_n) (see there; about 1 for an observation like the model's);
- `var["probgex_dispersion"]`: the NB dispersion alpha = 1 / theta (Var = mu + alpha mu^2) per gene (one
  column `probgex_dispersion_<level>` per level with a dispersion per gene and group; none for Poisson);
- on request (`layers=`), `layers["probgex_mean"]`, the predictive mean E[x_ng | x_n, c_n] of the
  reconstruction (latents from the encoder; the GLM's posterior mean), and `layers["probgex_normalized"]`,
  `normalized`;
- `uns["probgex"]`: the model's story, likelihood and formula and the settings used.

Counts (X and every existing layer), obs / var columns and obsm entries already there are not changed
(only the keys above are written, replacing earlier ones of the same names). Observations ingestion drops
(all-zero ones) get NaN; genes of `adata` the model was not fitted on get NaN in var and the layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probgex.choices import ANNOTATE_LAYERS
from probgex.errors import DataError, SpecError

KEY = "probgex"
# draws per observation by default: a whole dataset is annotated, and the outlier score's exact mixture CDF
# costs draws x observations x genes (bulk yeast, 96 x 6,887 genes: 74 s at 100 draws on 2 busy cores)
DRAWS = 30


def _check_adata(adata) -> None:
    if not hasattr(adata, "obs") or not hasattr(adata, "var") or not hasattr(adata, "obsm"):
        raise DataError(f"annotate needs an AnnData (counts and metadata), got {type(adata).__name__}")
    if not adata.obs_names.is_unique:
        raise DataError("the observation names of adata must be unique to put results back in their rows; "
                        "call adata.obs_names_make_unique() first")


def _layers(layers) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    bad = [v for v in layers if v not in ANNOTATE_LAYERS]
    if bad:
        raise SpecError(f"layers must be among {list(ANNOTATE_LAYERS)}, got {bad}")
    return layers


def _check_library_size(library_size) -> float:
    try:
        value = float(library_size)
    except (TypeError, ValueError):
        raise DataError(f"library_size must be a positive number (e.g. 1e4), got {library_size!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise DataError(f"library_size must be a positive number (e.g. 1e4), got {library_size!r}")
    return value


def _check_latent(fit) -> None:
    if fit.spec.latent is None:
        raise SpecError(f"the {fit.spec.story} story has no latent variable (latent=None): latent representations "
                        "exist for the cVAE and residual stories with a latent (pg.latent.Gaussian(dim=...), ...)")


def _data(fit, adata):
    from probgex.data import CountData

    return adata if isinstance(adata, CountData) else fit.data(adata)


def latent(fit, adata, *, batch_size: int = 256) -> np.ndarray:
    """Means of the encoder q(z | x_n, c_n), one row per observation kept by ingestion: (n_obs, dim).
    The GLM (no latent) is refused with a SpecError."""
    import jax

    from probgex.inference.minibatch import make_batch

    _check_latent(fit)
    data = _data(fit, adata)
    means = jax.jit(fit.story.encoder_means)
    out = np.empty((data.n_obs, fit.spec.latent.dim), np.float32)
    for start in range(0, data.n_obs, batch_size):
        rows = np.arange(start, min(start + batch_size, data.n_obs))
        out[rows] = np.asarray(means(fit.params, make_batch(data, rows, batch_size, 1.0)))[: len(rows)]
    return out


def _expected(fit, data, n_samples: int, seed):
    """Per block of rows, the reconstruction's predictive mean E[x] and expected frequencies
    E[mu / sum_g mu] over `n_samples` draws (latents from the encoder; the GLM's posterior draws)."""
    from probgex import rng as streams

    key = streams.stream(seed, "predictive")  # the stream `Fit.reconstruct` draws from
    for rows, d in fit.predictive_blocks(data, n_samples, key, from_data=True):
        mu = d.params["mu"]
        yield rows, d.mean(), (mu / mu.sum(-1, keepdims=True)).mean(0)


def normalized(fit, adata, *, library_size: float = 1e4, n_samples: int = DRAWS, seed=0,
               return_frame: bool = True):
    """Normalized expression as scvi's `get_normalized_expression`: the expected frequencies
    E[mu_ng / sum_g' mu_ng' | x_n, c_n] (the count family's mean head `mu`, averaged over `n_samples`
    draws of the reconstruction: latents from the encoder for the latent stories, posterior draws for
    the GLM) times `library_size`, so every row sums to `library_size` over the fitted genes. For the
    cVAE with observed library sizes this is the predicted mean / library size x `library_size`; for
    the GLM, whose means need not add up to the library size (size factors), the mean's composition.
    For ZINB / hurdle it is the NB part's mean (as scvi's `px_scale`), without the zero gate.
    A DataFrame (observations x fitted genes), or with `return_frame=False` an ndarray."""
    from probgex._checks import check_n_samples

    target = _check_library_size(library_size)
    n_samples = check_n_samples(n_samples)
    data = _data(fit, adata)
    out = np.empty((data.n_obs, len(fit.var_names)))
    for rows, _, freq in _expected(fit, data, n_samples, seed):
        out[rows] = freq * target
    if not return_frame:
        return out
    return pd.DataFrame(out, index=pd.Index(data.obs.index, name=None), columns=pd.Index(fit.var_names, name=None))


def outlier_score(fit, adata, *, n_samples: int = DRAWS, seed=0) -> pd.Series:
    """Per observation, the mean over genes of -log p_ng, with p_ng = 2 min(u_ng, 1 - u_ng) the two-sided
    tail probability of the randomized PIT u_ng of its count under p(x | c_n) (metadata only, as in
    `Fit.evaluate`, whose PIT values these are for the same seed and draws).

    Why this score: for an observation drawn from the model, each u_ng is exactly Uniform(0, 1) (counts
    included, by the randomization), so -log p_ng ~ Exp(1) and the score has expectation exactly 1 (sd
    1 / sqrt(G) if genes were independent); it rises when many of the observation's counts lie in the
    tails, and, unlike the log predictive density, it does not grow with sequencing depth or with the
    number of genes. Large values flag observations the model does not describe (doublets, damaged
    cells, mislabelled samples)."""
    from probgex import rng as streams
    from probgex._checks import check_n_samples

    n_samples = check_n_samples(n_samples)
    data = _data(fit, adata)
    rng, key = streams.host_rng(seed, "sampling"), streams.stream(seed, "predictive")
    score = np.empty(data.n_obs)
    for rows, d in fit.predictive_blocks(data, n_samples, key, from_data=False):
        y = data.rows(rows).astype(np.float64)
        u = d.randomized_pit(y, rng, d.below_and_at(y))
        p = np.clip(2 * np.minimum(u, 1 - u), np.finfo(float).tiny, 1.0)
        score[rows] = -np.log(p).mean(1)
    return pd.Series(score, index=pd.Index(data.obs.index, name=None), name="outlier_score")


def dispersion(fit) -> pd.DataFrame:
    """The NB dispersion alpha = 1 / theta per gene (columns: one per dispersion group, named by level,
    or "dispersion"): for the GLM the posterior median exp(E[log alpha]) of the fitted guide, for the
    latent stories the point estimate. Empty (no columns) for a family without dispersion (Poisson)."""
    from probgex.models.families import family
    from probgex.models.families.base import DISPERSION

    fam = family(fit.spec.likelihood)
    index = pd.Index(fit.var_names, name=None)
    if not fam.role(DISPERSION):
        return pd.DataFrame(index=index)
    K = fit.dims.n_groups
    if fit.spec.latent is None:  # theta at the guide's mean of log alpha: 1 / the posterior median of alpha
        import jax.numpy as jnp

        post = fit.posterior()
        _, extra = post.story.split(jnp.asarray(post.params["gp_loc"]))
        log_alpha = -np.log(np.asarray(extra[fam.role(DISPERSION)[0].name], np.float64))  # (K, G)
    else:
        log_alpha = -np.asarray(fit.params["log_theta"])  # (K, G)
    names = ["dispersion"] if K == 1 else [f"dispersion_{level}" for level in fit.group_levels]
    return pd.DataFrame(np.exp(log_alpha.astype(np.float64)).T, index=index, columns=names)


def _design(fit, obs):
    """The encoded design of metadata `obs` (a DataFrame or an AnnData) for a latent story."""
    import jax.numpy as jnp

    _check_latent(fit)
    obs = getattr(obs, "obs", obs)
    if not isinstance(obs, pd.DataFrame):
        raise DataError(f"obs must be a pandas DataFrame or an AnnData, got {type(obs).__name__}")
    return jnp.asarray(fit.encoding.transform(obs), jnp.float32)


def _prior_fns(fit):
    """Jitted draw and log density of the story's conditional prior (one compile per fit and shape)."""
    import jax

    cached = fit.__dict__.get("_annotate_prior_fns")
    if cached is None:
        story = fit.story

        def draw(params, key, design, n):
            return story.prior_for(params).draw(params, story._nets(params), key, design, n)

        def log_prob(params, key, design, z):
            return story.prior_for(params).log_prob(params, story._nets(params), key, design, z)

        cached = jax.jit(draw, static_argnames=("n",)), jax.jit(log_prob)
        fit.__dict__["_annotate_prior_fns"] = cached
    return cached


def prior_samples(fit, obs, *, n_samples: int = 1, seed=0) -> np.ndarray:
    """Draws of the latent from the conditional prior p(z | c_n) of the metadata `obs` (the learned
    diffusion / flow prior when trained, else the Gaussian one): (n_samples, n_obs, dim)."""
    from probgex import rng as streams
    from probgex._checks import check_n_samples

    n_samples = check_n_samples(n_samples)
    design = _design(fit, obs)
    draw, _ = _prior_fns(fit)
    return np.asarray(draw(fit.params, streams.stream(seed, "predictive"), design, n=n_samples))


def prior_log_prob(fit, obs, z, *, seed=0) -> np.ndarray:
    """log p(z | c_n) under the conditional prior, for latents z (..., n_obs, dim) and metadata `obs`
    (n_obs rows): (..., n_obs). Exact for the Gaussian prior and the flow; the diffusion prior's
    probability-flow ODE uses a Hutchinson trace estimate keyed by `seed`."""
    import jax.numpy as jnp

    from probgex import rng as streams

    design = _design(fit, obs)
    z = jnp.asarray(z, jnp.float32)
    if z.ndim < 2 or z.shape[-1] != fit.spec.latent.dim or z.shape[-2] != design.shape[0]:
        raise DataError(f"z must have shape (..., {design.shape[0]}, {fit.spec.latent.dim}) (one latent per "
                        f"observation of obs), got {tuple(z.shape)}")
    _, log_prob = _prior_fns(fit)
    return np.asarray(log_prob(fit.params, streams.stream(seed, "log_density"), design, z))


def annotate(fit, adata, *, layers: Sequence[str] | str = (), n_samples: int = DRAWS, library_size: float = 1e4,
             seed=0, copy: bool = False, key_added: str = KEY):
    """Write the model's results into `adata` (see the module docstring for the keys): in place,
    returning None, as scanpy / scvi-tools do, or with `copy=True` into a copy that is returned (`adata`
    is then left as it was). `layers`: any of "mean" (predictive mean) and "normalized" (expected
    frequencies x `library_size`). `n_samples` draws per observation for the log predictive density, the
    outlier score and the layers (the time grows in proportion; `DRAWS` by default); `seed` an int or a
    JAX key (the same seed, the same result)."""
    from probgex._checks import check_n_samples

    _check_adata(adata)
    layers = _layers(layers)
    n_samples = check_n_samples(n_samples)
    target = _check_library_size(library_size)
    if not isinstance(key_added, str) or not key_added:
        raise SpecError(f"key_added must be a non-empty string, got {key_added!r}")
    if adata.is_view and not copy:
        raise DataError("adata is a view (a subset of another AnnData): annotate it with copy=True, or pass "
                        "adata.copy()")
    if layers:
        from probgex import _memory

        _memory.require(4.0 * adata.n_obs * adata.n_vars * (len(layers) + (1 if copy else 0)),
                        f"{len(layers)} layer(s) of {adata.n_obs} x {adata.n_vars} float32 values",
                        "ask for fewer layers, or annotate a subset of the observations at a time")
    data = fit.data(adata)
    rows = adata.obs_names.get_indexer(data.obs.index)
    cols = adata.var_names.get_indexer(pd.Index(fit.var_names))
    n, G = adata.n_obs, adata.n_vars

    def per_obs(values: np.ndarray) -> np.ndarray:
        full = np.full((n, *values.shape[1:]), np.nan, dtype=np.float64 if values.ndim == 1 else values.dtype)
        full[rows] = values
        return full

    results = {}
    if fit.spec.latent is not None:
        results["obsm"] = per_obs(latent(fit, data))
    results["lpd"] = per_obs(fit.log_predictive_density(data, n_samples=n_samples, seed=seed).values)
    results["outlier"] = per_obs(outlier_score(fit, data, n_samples=n_samples, seed=seed).values)
    disp = dispersion(fit)
    if layers:  # float32 (n_obs, n_vars) each, filled block by block
        full = {name: np.full((n, G), np.nan, np.float32) for name in layers}
        for r, m, f in _expected(fit, data, n_samples, seed):
            where = np.ix_(rows[r], cols)
            if "mean" in full:
                full["mean"][where] = m
            if "normalized" in full:
                full["normalized"][where] = f * target
        results.update(full)
    out = adata.copy() if copy else adata
    if "obsm" in results:
        out.obsm[f"X_{key_added}"] = results["obsm"]
    out.obs[f"{key_added}_lpd"] = results["lpd"]
    out.obs[f"{key_added}_outlier"] = results["outlier"]
    for name in disp.columns:
        column = np.full(G, np.nan)
        column[cols] = disp[name].to_numpy()
        out.var[f"{key_added}_{name}"] = column
    for name in ("mean", "normalized"):
        if name in results:
            out.layers[f"{key_added}_{name}"] = results[name]
    out.uns[key_added] = {"story": fit.spec.story, "likelihood": fit.spec.likelihood, "formula": fit.spec.formula,
                          "n_samples": int(n_samples), "library_size": target,
                          "seed": int(seed) if isinstance(seed, int | np.integer) else "key",
                          "layers": ",".join(layers)}
    return out if copy else None
