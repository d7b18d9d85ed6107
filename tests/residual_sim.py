"""Counts simulated around a known mean function with a known residual structure (shared by tests)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

THETA = 20.0  # true NB concentration


def simulate(seed: int, n: int = 500, G: int = 30):
    """log mu_ng = log l_n + a_g + b_g [group B] + w_g z_n, z_n ~ N(0, 1); x ~ NB(mu, THETA).

    The last gene ("rest", w = 0) carries the rest of the library, so the G - 1 signal genes take ~15% of it
    and their latent loadings have both signs: the observed total count (probgex's library size) then
    stays close to l_n instead of absorbing the shared factor z_n.
    Returns the AnnData and the truth: log stage-1 fraction (n, G), loadings w (G,), groups (n,)."""
    rng = np.random.default_rng(seed)
    grp = rng.integers(0, 2, n)
    a, b = rng.normal(-5.0, 0.6, G), rng.normal(0, 0.7, G)
    w = rng.uniform(0.2, 0.8, G) * rng.choice([-1, 1], G)
    b[-1], w[-1] = 0.0, 0.0
    z = rng.normal(size=n)
    lib = rng.integers(3000, 6000, n).astype(float)
    log_frac = a[None] + b[None] * grp[:, None]
    log_frac[:, -1] = np.log1p(-np.exp(log_frac[:, :-1] + w[None, :-1] ** 2 / 2).sum(1))
    mu = np.exp(np.log(lib)[:, None] + log_frac + w[None] * z[:, None])
    x = rng.poisson(rng.gamma(THETA, mu / THETA))
    obs = pd.DataFrame({"g": pd.Categorical(np.where(grp, "B", "A"))}, index=[f"c{i}" for i in range(n)])
    genes = [f"g{j}" for j in range(G - 1)] + ["rest"]
    adata = ad.AnnData(x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    return adata, {"log_frac": log_frac, "w": w, "group": grp, "lib": lib}

