"""Counts simulated around a known mean function with a known residual structure (shared by tests)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

THETA = 20.0


def simulate(seed: int, n: int = 500, G: int = 60):
    """log mu_ng = log l_n + a_g + b_g [group B] + w_g z_n, z_n ~ N(0, 1); x ~ NB(mu, THETA).

    Returns the AnnData and the truth: log stage-1 fraction (n, G), loadings w (G,), groups (n,)."""
    rng = np.random.default_rng(seed)
    grp = rng.integers(0, 2, n)
    a, b = rng.normal(-3.5, 0.8, G), rng.normal(0, 1, G)
    w = rng.uniform(0.2, 0.8, G)
    z = rng.normal(size=n)
    lib = rng.integers(3000, 6000, n).astype(float)
    log_frac = a[None] + b[None] * grp[:, None]
    mu = np.exp(np.log(lib)[:, None] + log_frac + w[None] * z[:, None])
    x = rng.poisson(rng.gamma(THETA, mu / THETA))
    obs = pd.DataFrame({"g": pd.Categorical(np.where(grp, "B", "A"))}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))
    return adata, {"log_frac": log_frac, "w": w, "group": grp, "lib": lib}


def rate_cv2(var_log: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Squared CV of the Poisson rate lambda = mu e^{h} Gamma(theta)/theta with h ~ N(., var_log):
    Var(lambda) / E[lambda]^2 = (1 + 1/theta) e^{var_log} - 1 (what the counts identify)."""
    return (1 + 1 / theta) * np.exp(var_log) - 1
