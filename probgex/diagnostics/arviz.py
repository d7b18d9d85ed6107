"""Export to ArviZ: an `xarray.DataTree` with posterior, posterior_predictive, observed_data and
log_likelihood groups, one variable per gene with dims (chain, draw, obs), for a selection of genes.

One variable per gene (not one variable with a gene dim) because ArviZ's count plots want
one-dimensional observations: with this layout `plot_ppc_pit(dt)` and `plot_ppc_rootogram(dt)` work
on the export as it is and draw one panel per gene, and `loo_pit(dt)` gives one PIT vector per gene."""

from __future__ import annotations

from collections.abc import Sequence

from probgex import _numpyro

_numpyro.load()  # numpyro whole before arviz stubs it (`probgex._numpyro`)
import arviz as az  # noqa: E402
import numpy as np
import xarray as xr

from probgex import rng as streams
from probgex.errors import DataError

MAX_ENTRIES = 2**26  # draws x obs x genes allowed in one export


def variable_names(genes: Sequence[str]) -> list[str]:
    """The DataTree variable name of each gene: the gene name, with '/' (which DataTree forbids in
    variable names) replaced by '_'. Names that collide after the replacement are refused."""
    names = [str(g).replace("/", "_") for g in genes]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"genes {dup[:5]} have the same name once '/' is replaced by '_' (DataTree variable "
                        "names cannot hold '/'); export them in separate calls")
    return names


def to_datatree(fit, heldout, *, genes: Sequence[str] | None = None, n_samples: int = 100,
                seed=0) -> xr.DataTree:
    """Predictive draws of the held-out counts from their metadata, as ArviZ expects them.

    `genes` defaults to the 20 most expressed genes; a selection larger than MAX_ENTRIES
    (draws x obs x genes) is refused with a hint to subset, rather than exhausting memory.
    SVI draws are independent: one chain. Each gene is a variable (see `variable_names`) in every
    group: posterior (the predictive mean `mu` of each draw), posterior_predictive (count draws),
    log_likelihood (log p(x | draw)) and observed_data; `dt.attrs["genes"]` lists the gene names in order.
    """
    data = fit.data(heldout)
    if genes is None:
        mean = np.zeros(data.n_genes)
        for s in range(0, data.n_obs, 4096):
            mean += data.rows(np.arange(s, min(s + 4096, data.n_obs))).sum(0)
        idx = np.sort(np.argsort(-mean)[:20])
    else:
        if isinstance(genes, str):
            genes = [genes]
        missing = [g for g in genes if g not in fit.var_names]
        if missing:
            raise DataError(f"genes not in the model: {missing[:5]}; pick from fit.var_names")
        idx = np.array([fit.var_names.get_loc(g) for g in genes])
    names = [str(g) for g in fit.var_names[idx]]
    keys = variable_names(names)
    if n_samples < 5:
        raise DataError(f"n_samples={n_samples}: ArviZ's PIT needs at least 5 draws (100 is the default)")
    if n_samples * data.n_obs * len(idx) > MAX_ENTRIES:
        raise DataError(f"{n_samples} draws x {data.n_obs} obs x {len(idx)} genes is too large to export "
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

    def per_gene(a):
        return {key: a[..., j] for j, key in enumerate(keys)}

    dt = az.from_dict(
        {"posterior": per_gene(mu[None]), "posterior_predictive": per_gene(pp[None]),
         "log_likelihood": per_gene(ll[None]), "observed_data": per_gene(y)},
        coords={"obs": np.asarray(data.obs.index, dtype=str)}, dims={key: ["obs"] for key in keys})
    dt.attrs["genes"] = names
    return dt
