"""Export to ArviZ: an `xarray.DataTree` with posterior, posterior_predictive, observed_data and
log_likelihood groups and named dims (chain, draw, obs, gene), for a selection of genes."""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import numpy as np
import xarray as xr

from probgex import rng as streams

MAX_ENTRIES = 2**26  # draws x obs x genes allowed in one export


def to_datatree(fit, heldout, *, genes: Sequence[str] | None = None, n_samples: int = 100,
                seed=0) -> xr.DataTree:
    """Predictive draws of the held-out counts from their metadata, as ArviZ expects them.

    `genes` defaults to the 20 most expressed genes; a selection larger than MAX_ENTRIES
    (draws x obs x genes) is refused with a hint to subset, rather than exhausting memory.
    SVI draws are independent: one chain.
    """
    data = fit.data(heldout)
    if genes is None:
        mean = np.zeros(data.n_genes)
        for s in range(0, data.n_obs, 4096):
            mean += data.rows(np.arange(s, min(s + 4096, data.n_obs))).sum(0)
        idx = np.sort(np.argsort(-mean)[:20])
    else:
        missing = [g for g in genes if g not in fit.var_names]
        if missing:
            raise ValueError(f"genes not in the model: {missing[:5]}; pick from fit.var_names")
        idx = np.array([fit.var_names.get_loc(g) for g in genes])
    if n_samples * data.n_obs * len(idx) > MAX_ENTRIES:
        raise ValueError(f"{n_samples} draws x {data.n_obs} obs x {len(idx)} genes is too large to export "
                         "at once; pass fewer genes, fewer draws or a subset of the observations")
    rng = streams.host_rng(seed, "sampling")
    S, n, k = n_samples, data.n_obs, len(idx)
    pp, ll, mu = np.empty((S, n, k), np.int64), np.empty((S, n, k)), np.empty((S, n, k))
    y = np.empty((n, k), np.int64)
    for rows, d in fit.predictive_blocks(data, S, streams.stream(seed, "predictive")):
        sub = d.genes(idx)
        yy = data.rows(rows)[:, idx].astype(np.float64)
        y[rows] = yy
        pp[:, rows] = sub.sample(rng)
        ll[:, rows] = sub.log_prob(yy)
        mu[:, rows] = sub.mu
    obs = np.asarray(data.obs.index, dtype=str)
    names = np.asarray(fit.var_names[idx], dtype=str)
    coords = {"obs": obs, "gene": names}
    dims = {"x": ["obs", "gene"], "mu": ["obs", "gene"]}
    return az.from_dict(
        {"posterior": {"mu": mu[None]}, "posterior_predictive": {"x": pp[None]},
         "log_likelihood": {"x": ll[None]}, "observed_data": {"x": y}},
        coords=coords, dims=dims)
