"""The cVAE training objective's count split (issue 3): the NB log-pmf's lgamma terms
r(x, theta) = lgamma(x + theta) - lgamma(theta) - x log theta summed over the entries x >= 2 only must
give the same objective, the same gradients and the same fit as the dense log-pmf."""

from __future__ import annotations

import math
from pathlib import Path

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import Trace_ELBO

from probgex.data import from_anndata
from probgex.inference import svi as svi_mod
from probgex.inference.minibatch import (Minibatches, high_bound, high_per_row, high_typical, host_high,
                                         make_batch)
from probgex.inference.svi import TrainConfig, _to_device, device_high, fit_svi, make_svi
from probgex.models import likelihoods as lk
from probgex.models.distributions import count_term_sum
from probgex.models.story import Dims, build_story
from probgex.spec import ModelSpec

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def kang():
    return ad.read_h5ad(DATA / "kang_muscat.h5ad")


def _story(adata, kind: str, groups: bool, **spec_kw):
    extra = dict(dispersion="gene-group", dispersion_key="cluster_id") if groups else {}
    spec = ModelSpec.create("~ group_id", kind, 4, encoder=(32,), decoder=(32,), **extra, **spec_kw)
    data = from_anndata(adata, spec.formula, likelihood=kind, empty="keep", group_key=spec.dispersion_key)
    lib = np.log(data.library_size)
    n_groups = 1 if data.group_levels is None else len(data.group_levels)
    dims = Dims(data.n_design, data.n_genes, n_groups, 0, float(lib.mean()), float(lib.std()), 0)
    return build_story(spec, dims, np.zeros(data.n_genes, np.float32)), data


# ----------------------------------------------------------------------------- the term itself
def test_count_term_is_the_log1p_sum_and_zero_below_two():
    """r(x, theta) = sum_{j<x} log1p(j / theta) (float64 reference) in both branches (theta < 10 and
    Stirling's for theta >= 10); exactly 0 with a zero gradient at x = 0, ~0 at x = 1; the NB log-pmf is
    count term + mean term - lgamma(x + 1)."""
    thetas = np.array([0.05, 0.7, 3.0, 9.99, 10.0, 250.0, 1e5], np.float32)
    for x in (2, 3, 7, 40, 300):
        ref = np.array([math.fsum(np.log1p(np.arange(x) / float(t))) for t in thetas])
        got = np.asarray(lk.nb_count_term(jnp.full(thetas.shape, float(x)), jnp.asarray(thetas)))
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * x)
    grad = jax.grad(lambda t: lk.nb_count_term(jnp.zeros_like(t), t).sum())(jnp.asarray(thetas))
    assert np.all(np.asarray(lk.nb_count_term(jnp.zeros_like(thetas), thetas)) == 0) and np.all(grad == 0)
    np.testing.assert_allclose(lk.nb_count_term(jnp.ones_like(thetas), thetas), 0, atol=2e-6)
    x, mu = jnp.asarray([0.0, 1.0, 5.0, 80.0]), jnp.asarray([0.3, 2.0, 4.0, 60.0])
    for t in (0.5, 30.0):
        full = lk.nb_log_prob(x, mu, t)
        parts = lk.nb_count_term(x, t) + lk.nb_mean_term(x, mu, t) - jax.scipy.special.gammaln(x + 1)
        np.testing.assert_allclose(full, parts, rtol=1e-6, atol=3e-5)  # lgamma(81) ~ 273 in float32
        np.testing.assert_allclose(full, lk.nb_log_prob(np.asarray(x), np.asarray(mu), t, count_term=False)
                                   + lk.nb_count_term(x, t), rtol=1e-6, atol=3e-5)


# ----------------------------------------------------------------------------- the lists
def test_device_list_equals_host_list_and_holds_every_entry(kang):
    """The list built on the device from per-row CSR pointers (masked rows count none) is the host's
    np.nonzero list; it holds every entry >= 2 and nothing else; too short a list is refused."""
    story, data = _story(kang, "nb", False)
    rows = np.random.default_rng(0).choice(data.n_obs, 100, replace=False)
    n_high = high_per_row(data, np.arange(data.n_obs))
    assert np.array_equal(n_high, (data.rows(np.arange(data.n_obs)) >= 2).sum(1))
    size = high_bound(n_high, 128)
    assert high_typical(n_high, 128) <= size
    batch = make_batch(data, rows, 128, 1.0, high_size=size)
    x = np.asarray(batch.x)
    h = batch.high
    row, gene, count = (np.asarray(a) for a in h)
    real = count > 0
    assert real.sum() == (x >= 2).sum() and np.all(count[real] == x[row[real], gene[real]]) and np.all(count[real] >= 2)
    assert np.all(np.diff(row) >= 0)  # sorted by row (the segment sum relies on it)
    dev = _to_device(data, np.arange(data.n_obs), chunk=500, high=True)  # several chunks
    idx = np.zeros(128, np.int32)
    idx[:100] = rows  # padded rows repeat row 0 as in `epoch_blocks`, masked out
    d = device_high(dev, jnp.asarray(idx), jnp.asarray(np.arange(128) < 100), size)
    for a, b in zip(d, h, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="do not fit"):
        host_high(x, int((x >= 2).sum()) - 1)
    # data without any entry >= 2 (binary counts): a one-entry list of padding, r = 0
    zeros = np.zeros(50, np.int64)
    assert high_bound(zeros, 128) == high_typical(zeros, 128) == 1
    binary = dev._replace(high_ptr=jnp.zeros_like(dev.high_ptr))
    empty = device_high(binary, jnp.asarray(idx), jnp.asarray(np.arange(128) < 100), 1)
    assert [np.asarray(a).tolist() for a in empty] == [[127], [0], [0.0]]


# ----------------------------------------------------------------------------- the objective
@pytest.mark.parametrize("kind,groups,quality", [("nb", False, "off"), ("zinb", False, "off"), ("nb", True, "off"),
                                                  ("zinb", True, "off"), ("nb", True, "on")])
def test_split_objective_and_gradients_equal_dense(kang, kind, groups, quality):
    """On real kang counts, the ELBO with the split count term equals the dense one (value and the
    gradient w.r.t. every parameter, float32 rounding), with one or several dispersion groups and with
    per-cell dispersion scales (sample_quality "on"); theta is spread over both branches (theta < 10
    and >= 10)."""
    story, data = _story(kang, kind, groups, sample_quality=quality)
    rows = np.random.default_rng(1).choice(data.n_obs, 120, replace=False)
    size = high_bound(high_per_row(data, np.arange(data.n_obs)), 128)
    dense, split = make_batch(data, rows, 128, 9.0), make_batch(data, rows, 128, 9.0, high_size=size)
    assert dense.high is None and int((np.asarray(dense.x) >= 2).sum()) > 1000
    svi = make_svi(story, TrainConfig())
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), dense))
    log_theta = jax.random.normal(jax.random.PRNGKey(3), params["log_theta"].shape) * 2.5 + 1.0
    params = dict(params, log_theta=log_theta)
    assert float(jnp.mean(log_theta < np.log(10.0))) > 0.3 and float(jnp.mean(log_theta > np.log(10.0))) > 0.3
    elbo = Trace_ELBO()
    f = jax.value_and_grad(lambda p, b: elbo.loss(jax.random.PRNGKey(5), p, story.model, story.guide, b))  # eager: no compile
    (v0, g0), (v1, g1) = f(params, dense), f(params, split)
    np.testing.assert_allclose(float(v1), float(v0), rtol=2e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max(), err_msg=jax.tree_util.keystr(path))
    if quality == "on":  # the per-cell scales shift theta per row: the factor below would need the guide's w
        return
    # the factor site carries the whole count term: hiding it removes scale * sum of r over the real rows
    hidden = numpyro.handlers.block(story.model, hide=["x_count_term"])
    v2 = elbo.loss(jax.random.PRNGKey(5), params, hidden, story.guide, split)
    r = count_term_sum(split.high, log_theta, split.group, 128)
    expected = 9.0 * float(jnp.sum(jnp.where(split.mask, r, 0.0)))
    assert expected > 1e-2 * abs(float(v0))
    np.testing.assert_allclose(float(v2) - float(v1), expected, rtol=1e-4)


# ----------------------------------------------------------------------------- the fit
@pytest.mark.parametrize("device_data,fallback", [
    ("always", False), pytest.param("always", True, marks=pytest.mark.slow),
    pytest.param("never", False, marks=pytest.mark.slow)])
def test_fit_with_split_matches_dense_fit(kang, monkeypatch, device_data, fallback):
    """Three epochs with the split objective follow the dense fit's loss history (train and held out):
    device-resident data with the typical list length, with every epoch falling back to the exact
    bound (a typical length of 1 fits no batch), and the host path."""
    # 600 cells with both stimulation levels (the first 600 are all one level: a single-level factor)
    adata = kang[np.sort(np.random.default_rng(0).choice(kang.n_obs, 600, replace=False))].copy()
    story, data = _story(adata, "nb", True)
    rng = np.random.default_rng(0)
    order = rng.permutation(data.n_obs)
    train, held = order[:520], order[520:]
    hist = {}
    for split in (False, True):
        if fallback:
            monkeypatch.setattr(svi_mod, "high_typical", lambda n, b: 1)
        cfg = TrainConfig(max_epochs=3, batch_size=128, patience=10, progress=False, checkpoint_every=0,
                          device_data=device_data, count_split=split)
        hist[split] = fit_svi(story, data, train, held, cfg, seed=0)[1]
    np.testing.assert_allclose(hist[True].train, hist[False].train, rtol=2e-4)
    np.testing.assert_allclose(hist[True].heldout, hist[False].heldout, rtol=2e-4)
    assert hist[True].train[-1] < hist[True].train[0]  # it trained
