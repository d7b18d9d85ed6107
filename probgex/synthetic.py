"""Synthetic count profiles from a fitted model, for augmenting real data: `pg.sample(fit, metadata, n)`.

For every row of `metadata`, `n` count profiles are drawn from the model's predictive p(x | c) given
that row's metadata, through the same path as `Fit.predict` (`Fit.predictive_blocks`: parameters from
the fitted guide, latents from the conditional prior: Gaussian, diffusion or flow; the residual story
around its stage-1 mean), streamed in blocks of rows and of draws so that the working memory stays
bounded whatever `n` is. The result is an AnnData ready for `anndata.concat` with real data:
raw integer counts in X (CSR int32 by default), the metadata rows repeated in obs (each source row's `n`
profiles consecutive) with `synthetic = True` and `synthetic_source` (the source row's name), and the
model's genes as var.

Library sizes (what sets each profile's depth):
- `library_size` given: a column of `metadata` (its name), one number, or one value per row; every
  profile of a row gets that row's library size (the model's expected total is the library times the
  sum of the predicted fractions over the model's genes);
- otherwise, for a model with observed or size-factor library sizes, each profile draws its own from
  what the model stored of its training library sizes: the log-normal of their logs' mean and sd (one
  distribution over all training observations; the model keeps no depth per metadata level, so pass a
  column to give a cell type its own depths), exactly as `Fit.predict` draws them;
- a latent library (`library="latent"`) is drawn from the model's library prior; a given `library_size`
  is refused there, as the model cannot set it.

Randomness: the streams "synthetic" (parameter and latent draws) and "synthetic_counts" (library sizes and
counts) of `probgex.rng`: the same seed gives the same counts.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from probgex.errors import DataError, SpecError

FLAG, SOURCE = "synthetic", "synthetic_source"  # the obs columns that mark synthetic profiles


def library_sizes(metadata: pd.DataFrame, library_size) -> np.ndarray | None:
    """Library sizes (one per row of `metadata`) from a column name, a number or an array; None stays
    None. Refuses (DataError) anything not positive and finite, with the offending value named."""
    if library_size is None:
        return None
    if isinstance(library_size, str):
        if library_size not in metadata.columns:
            raise DataError(f"library_size {library_size!r} is not a column of the metadata (columns: "
                            f"{list(map(str, metadata.columns))}); pass a column name, a number or one value per row")
        raw = metadata[library_size]
        values = pd.to_numeric(raw, errors="coerce")
        if values.isna().any():
            bad = raw[values.isna()]
            raise DataError(f"library_size column {library_size!r} must hold positive numbers; found "
                            f"{list(bad.astype(str).unique()[:3])} (e.g. at {str(bad.index[0])!r})")
        lib = values.to_numpy(np.float64)
    elif isinstance(library_size, numbers.Real) and not isinstance(library_size, bool):
        lib = np.full(len(metadata), float(library_size))
    else:
        try:
            lib = np.asarray(library_size, np.float64).ravel()
        except (TypeError, ValueError):
            raise DataError(f"library_size must be a column name, a number or one number per row, got "
                            f"{type(library_size).__name__}") from None
        if lib.size != len(metadata):
            raise DataError(f"library_size has {lib.size} values for {len(metadata)} metadata rows; pass one per row")
    bad = ~np.isfinite(lib) | (lib <= 0)
    if bad.any():
        raise DataError(f"library sizes must be positive and finite; row {str(metadata.index[int(np.flatnonzero(bad)[0])])!r} "
                        f"has {lib[bad][0]!r}")
    return lib


def _check(fit, metadata, n, library_size):
    """The metadata frame, n and the library sizes, checked before any JAX work."""
    from probgex._checks import check_n_samples

    metadata = getattr(metadata, "obs", metadata)
    if not isinstance(metadata, pd.DataFrame):
        raise DataError(f"metadata must be a pandas DataFrame or an AnnData, got {type(metadata).__name__}")
    if len(metadata) == 0:
        raise DataError("metadata has no rows: pass one row per kind of profile to draw")
    n = check_n_samples(n, "n")
    lib = library_sizes(metadata, library_size)
    if lib is not None and fit.spec.library == "latent":
        raise SpecError("this model's library sizes are latent (library='latent'): they are drawn from its prior "
                        "and cannot be set; leave library_size out")
    return metadata, n, lib


def sample(fit, metadata, n: int, *, seed=0, library_size=None, sparse: bool = True):
    """`n` synthetic count profiles per row of `metadata` (a DataFrame or an AnnData's obs) from the
    fitted model `fit`, as an AnnData (see the module's docstring). `seed`: an int or a JAX key.
    `library_size`: a column of `metadata`, a number or one value per row (default: drawn as the model
    learned them). `sparse`: X as CSR (default) or a dense array; int32 counts either way."""
    metadata, n, lib = _check(fit, metadata, n, library_size)  # before any JAX work
    import anndata as ad
    import jax
    from scipy import sparse as sp

    from probgex import _memory, library
    from probgex import rng as streams
    from probgex.inference.predict import BLOCK_ENTRIES

    R, G = len(metadata), len(fit.var_names)
    chunk = int(min(n, max(1, BLOCK_ENTRIES // (8 * G))))  # draws per pass: a block of >= 8 rows stays bounded
    _memory.require(4.0 * R * n * G + 3 * 8.0 * max(2**24, chunk * 8 * G),
                    f"{n} synthetic profiles for each of {R} metadata rows x {G} genes",
                    "draw fewer profiles (n) or fewer metadata rows at a time")
    data = fit.metadata(metadata, lib)
    draw_lib = lib is None and fit.spec.library != "latent"
    key = streams.stream(seed, "synthetic")
    pieces, perm = [], np.empty(R * n, np.int64)
    row = np.arange(R)[:, None]
    done = 0
    for c, start in enumerate(range(0, n, chunk)):
        k = min(chunk, n - start)
        # position in the stacked pieces of draw j (start <= j < start + k) of row r: done + r k + (j - start)
        perm.reshape(R, n)[:, start : start + k] = done + row * k + np.arange(k)[None]
        for i, (rows, d) in enumerate(fit.predictive_blocks(data, k, jax.random.fold_in(key, c))):
            rng = streams.host_rng(seed, "synthetic_counts", c, i)
            if draw_lib:
                d = d.scaled(library.draw_training(rng, fit.dims.lib_loc, fit.dims.lib_scale, (k, len(rows), 1)))
            if not np.all(np.isfinite(d.mu)):
                raise DataError("the model's predicted means are not finite for some metadata rows (e.g. "
                                f"{str(metadata.index[rows[0]])!r}): the metadata or library sizes lie where the "
                                "fitted model overflows; sample within the training range of the covariates")
            counts = d.sample(rng).transpose(1, 0, 2).reshape(len(rows) * k, G)
            if counts.size and counts.max() > np.iinfo(np.int32).max:
                raise DataError("a synthetic count exceeds the int32 range: the library sizes are far beyond the "
                                "training ones")
            counts = counts.astype(np.int32)
            pieces.append(sp.csr_matrix(counts) if sparse else counts)
        done += R * k
    # rows ordered by (source row, draw): output row r n + j is stacked row perm[r n + j]
    X = (sp.vstack(pieces, format="csr") if sparse else np.concatenate(pieces))[perm]
    obs = _obs(metadata, n)
    var = pd.DataFrame(index=pd.Index(np.asarray(fit.var_names, dtype=str)))
    how = ("given" if lib is not None else "latent prior" if fit.spec.library == "latent"
           else "drawn from the training log-normal")
    uns = {"probgex_sample": {"story": fit.spec.story, "likelihood": fit.spec.likelihood,
                              "formula": fit.spec.formula, "n_per_row": n, "library_size": how}}
    return ad.AnnData(X=X, obs=obs, var=var, uns=uns)


def _obs(metadata: pd.DataFrame, n: int) -> pd.DataFrame:
    """The metadata rows repeated n times each (dtypes and categories kept), flagged synthetic, with the
    source row's name and unique names `<source>-synthetic-<j>`."""
    idx = np.repeat(np.arange(len(metadata)), n)
    obs = metadata.iloc[idx].copy()
    source = np.asarray(metadata.index.astype(str))[idx]
    obs[FLAG] = True
    obs[SOURCE] = pd.Categorical(source)
    names = pd.Index([f"{s}-synthetic-{j}" for s, j in zip(source, np.tile(np.arange(n), len(metadata)), strict=True)])
    obs.index = names if names.is_unique else pd.Index(_make_unique(names))
    return obs


def _make_unique(names: pd.Index) -> list[str]:
    """Names made unique as anndata does (a suffix -1, -2, ... on repeats)."""
    from anndata.utils import make_index_unique

    return list(make_index_unique(names))
