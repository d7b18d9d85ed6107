"""Shared fixtures: one small count dataset and the models fitted on it once per session
(fits are dominated by JAX compile time, so tests share them)."""

import shutil
import tempfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest

_JAX_CACHE: str | None = None


def pytest_configure(config):
    """A per-session persistent XLA cache: refits of the same model on the same data (same seed,
    same shapes) reuse the compiled step instead of compiling it again (about 3 s each on 2 cores)."""
    global _JAX_CACHE
    import jax

    _JAX_CACHE = tempfile.mkdtemp(prefix="probgex-test-xla-")
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _JAX_CACHE is not None:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


def _small_adata(n_obs: int = 150, n_genes: int = 24, seed: int = 0) -> ad.AnnData:
    """NB counts from log mu = log l + b0_g + b_group,g (3 groups); a 2-level `batch` column and
    a numeric `age`; library sizes vary log-normally; every gene has counts (no empty genes)."""
    rng = np.random.default_rng(seed)
    group = np.array(["a", "b", "c"])[np.arange(n_obs) % 3]
    batch = np.array(["x", "y"])[rng.integers(0, 2, n_obs)]
    codes = np.searchsorted(["a", "b", "c"], group)
    beta0 = np.log(rng.uniform(0.02, 0.08, n_genes))
    effect = np.vstack([np.zeros(n_genes), rng.normal(0, 0.7, (2, n_genes))])
    lib = np.exp(rng.normal(np.log(500), 0.3, n_obs))
    mu = lib[:, None] * np.exp(beta0 + effect[codes])
    theta = 10.0
    x = rng.poisson(rng.gamma(theta, mu / theta))
    obs = pd.DataFrame({"group": group, "batch": batch, "age": rng.uniform(20, 60, n_obs)},
                       index=[f"cell{i}" for i in range(n_obs)])
    adata = ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
    assert (x.sum(0) > 0).all() and (x.sum(1) > 0).all()
    return adata


@pytest.fixture(scope="session")
def small_adata() -> ad.AnnData:
    return _small_adata()


@pytest.fixture(scope="session")
def glm_options() -> dict:
    """Fitting options of the shared GLM: a short, early-stopped fit (patience 5 epochs), checkpointed."""
    return dict(seed=0, max_epochs=300, patience=5, checkpoint_every=5, progress=False)


@pytest.fixture(scope="session")
def glm_ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("glm") / "glm.npz"


@pytest.fixture(scope="session")
def glm_fit(small_adata, glm_ckpt, glm_options):
    from probgex.fit import Model

    return Model("~ group", likelihood="nb").fit(small_adata, checkpoint_path=glm_ckpt, **glm_options)


@pytest.fixture(scope="session")
def cvae_fit(small_adata):
    """A tiny cVAE with a dispersion per gene and batch (so the group levels travel with the model)."""
    from probgex.fit import Model
    from probgex.latent import Gaussian

    model = Model("~ group", likelihood="nb", latent=Gaussian(dim=2), encoder=(16,), decoder=(16,),
                  dispersion="gene-group", dispersion_key="batch")
    return model.fit(small_adata, seed=0, max_epochs=6, progress=False)


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    """240 cells (both groups) x 60 genes of the shipped kang_muscat subset, counts as CSR: the streaming
    tests write it to .h5ad / .zarr stores and compare what is read back with these rows."""
    import scipy.sparse as sp
    from pathlib import Path

    a = ad.read_h5ad(Path(__file__).parent / "data" / "kang_muscat.h5ad")
    rows = np.sort(np.random.default_rng(1).choice(a.n_obs, 240, replace=False))
    a = a[rows, :60].copy()
    a.X = sp.csr_matrix(a.X)
    return a
