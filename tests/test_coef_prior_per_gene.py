"""The per-gene interaction prior (`coef_prior="learned-interactions-per-gene"`) against one sd per term
(`"learned-interactions"`), on counts with a known, heterogeneous interaction sd per gene: most genes barely
interact, a quarter respond differently in every cell type (as interferon genes do between PBMC types). The
stimulated cells of one type are left out (the unseen-combination benchmark's protocol); the predicted log fold
change of that pair (stimulation main effect + its never-seen interaction column) must cover the truth at about
the nominal rate on the strong responders, which one sd per term cannot: its sd sits between the two groups'."""

from __future__ import annotations

import warnings

import anndata as ad
import jax
import numpy as np
import pandas as pd
import pytest

from probgex.data import DesignWarning
from probgex.fit import Fit, Model

G, TYPES, PER_PAIR = 200, "abcde", 10
TAU = (0.05, 1.0)  # the true interaction sd of the quiet genes and of the responders
RESPONDERS = G // 4
LEVEL = 0.9


def simulate(seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Poisson counts (a quick fit) from log mu = b0 + type + stim * (gamma_g + delta_gk), delta_gk ~ N(0,
    tau_g^2) with tau_g = 1 for the first RESPONDERS genes, 0.05 for the rest; type e's stimulated cells left
    out. Returns the data and every gene's true log fold change of (e, stim) vs (e, ctrl): gamma_g + delta_ge."""
    rng = np.random.default_rng(seed)
    k = len(TYPES)
    c = np.repeat(np.array(list(TYPES)), 2 * PER_PAIR)
    s = np.tile(np.repeat([0.0, 1.0], PER_PAIR), k)
    keep = ~((c == "e") & (s == 1))
    c, s = c[keep], s[keep]
    ci = np.searchsorted(list(TYPES), c)
    tau = np.where(np.arange(G) < RESPONDERS, TAU[1], TAU[0])
    b_c = rng.normal(0, 0.5, (k, G))
    gamma = rng.normal(0, 0.5, G)
    delta = rng.normal(0, 1, (k, G)) * tau
    b0 = np.log(rng.uniform(0.005, 0.02, G))
    lib = np.exp(rng.normal(np.log(2000), 0.2, len(c)))
    x = rng.poisson(lib[:, None] * np.exp(b0 + b_c[ci] + s[:, None] * (gamma + delta[ci]))).astype(np.float32)
    obs = pd.DataFrame({"c": c, "g": np.where(s == 1, "stim", "ctrl"), "stim": s},
                       index=[f"cell{i}" for i in range(len(c))])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{i}" for i in range(G)])), gamma + delta[-1]


def lfc_intervals(fit, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Central LEVEL posterior interval of every gene's unseen log fold change, g[T.stim] + c[e]:stim, from
    joint posterior draws (the per-gene prior's unseen column is a scale mixture, not a normal)."""
    beta, _ = fit.posterior().draws(jax.random.PRNGKey(0), n)  # (n, P, G)
    cols = list(fit.encoding.columns)
    lfc = np.asarray(beta[:, cols.index("g[T.stim]")] + beta[:, cols.index("c[e]:stim")])
    return np.quantile(lfc, (1 - LEVEL) / 2, 0), np.quantile(lfc, (1 + LEVEL) / 2, 0)


@pytest.fixture(scope="module")
def fits():
    adata, truth = simulate()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DesignWarning)  # the unseen pair's all-zero column
        for prior in ("learned-interactions", "learned-interactions-per-gene"):
            out[prior] = Model("~ c + g + c:stim", likelihood="poisson", library="size_factors",
                               coef_prior=prior).fit(adata, seed=0, max_epochs=200, holdout=0, progress=False)
    return truth, out


def test_per_gene_covers_the_responders(fits):
    """90% intervals of the unseen pair's log fold change: the per-gene prior covers the strong responders near
    0.9 and keeps the quiet genes' intervals narrow; one sd per term (its sd ~0.5, between the groups' 0.05 and
    1.0) covers the responders at ~0.7 with every gene's interval alike, while its pooled coverage looks fine.
    Measured (200 epochs): one sd 0.68 / 1.00 (responders / quiet), widths 1.86 / 1.86; per gene 0.90 / 1.00,
    widths 3.44 / 0.82 (at 3,000 epochs: 0.90, 3.33 / 0.78)."""
    truth, fits = fits
    resp = np.arange(G) < RESPONDERS
    cover, width = {}, {}
    for prior, fit in fits.items():
        lo, hi = lfc_intervals(fit)
        inside = (lo <= truth) & (truth <= hi)
        cover[prior] = (inside[resp].mean(), inside[~resp].mean(), inside.mean())
        width[prior] = (np.median((hi - lo)[resp]), np.median((hi - lo)[~resp]))
    one, per = cover["learned-interactions"], cover["learned-interactions-per-gene"]
    assert one[0] < 0.75, (cover, width)  # one sd per term: over-confident on the responders
    assert per[0] >= 0.8, (cover, width)
    assert per[1] >= 0.8, (cover, width)  # the quiet genes still covered
    assert width["learned-interactions-per-gene"][1] < 0.5 * width["learned-interactions"][1], width
    assert width["learned-interactions-per-gene"][0] > 1.5 * width["learned-interactions"][0], width


def test_local_scales_separate_the_two_groups(fits):
    """The genes' posterior prior sds tau_t exp(loc) separate the responders (true 1.0) from the quiet genes
    (true 0.05, but their seen interactions carry estimation noise of ~0.1): the responders' median within a
    factor 1.5 of the truth, the quiet genes' median below a third of it."""
    _, fits = fits
    fit = fits["learned-interactions-per-gene"]
    sd = float(np.asarray(fit.params["coef_prior_sd"])[0]) * np.exp(np.asarray(fit.params["coef_gene_sd_loc"])[:, 0])
    resp = np.arange(G) < RESPONDERS
    assert abs(np.log(np.median(sd[resp]) / TAU[1])) < np.log(1.5), np.median(sd[resp])
    assert np.median(sd[~resp]) < np.median(sd[resp]) / 3, (np.median(sd[~resp]), np.median(sd[resp]))


def test_per_gene_prior_round_trips(fits, tmp_path):
    """The per-gene sds travel with the model file: the spec, the terms and the same posterior draws."""
    _, fits = fits
    fit = fits["learned-interactions-per-gene"]
    path = tmp_path / "m.npz"
    fit.save(path)
    back = Fit.load(path)
    assert back.spec.coef_prior == "learned-interactions-per-gene" and back.dims == fit.dims
    np.testing.assert_array_equal(np.asarray(back.params["coef_gene_sd_loc"]),
                                  np.asarray(fit.params["coef_gene_sd_loc"]))
    key = jax.random.PRNGKey(1)
    np.testing.assert_array_equal(np.asarray(back.posterior().draws(key, 4)[0]), np.asarray(fit.posterior().draws(key, 4)[0]))
