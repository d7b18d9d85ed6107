"""Prediction and scoring of a `Fit`: draws of the count distribution's parameters over blocks of rows,
predictive samples and intervals for new metadata, the reconstruction predictive, calibration of
observed counts and the log predictive density. Draws x observations x genes is bounded per block."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import pandas as pd
import xarray as xr

from probgex import _memory, library
from probgex import rng as streams
from probgex._checks import check_levels, check_n_samples
from probgex.data import CountData, group_codes
from probgex.errors import DataError, SpecError
from probgex.inference.minibatch import make_batch
from probgex.inference.predictive import (
    Draws,
    deciles,
    empirical_intervals,
    narrow_counts,
    pit_coverage,
)

LEVELS = (0.5, 0.8, 0.9, 0.95)
BLOCK = 256  # most rows per prediction block; fixed per (draws, genes), so prediction compiles once
DENSITY_ROUND = 32  # the log predictive density's block is a multiple of this many rows (`density_block`)
BLOCK_ENTRIES = 2**24  # draws x rows x genes held at once on the host in prediction
# the draws in a predict file: 32-bit counts (half of int64; a draw above 2^31 - 1 is refused as an overflow),
# byte-shuffled and deflated per chunk (mostly zeros and small counts: the high bytes vanish)
COUNTS_DTYPE = np.dtype(np.int32)
COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}


def block_size(n_draws: int, n_genes: int) -> int:
    """Rows per prediction block: a power of two in [8, BLOCK] keeping draws x rows x genes bounded."""
    rows = BLOCK_ENTRIES // max(1, n_draws * n_genes)
    return int(min(BLOCK, max(8, 2 ** int(np.log2(max(rows, 1))))))


def density_block(n_obs: int) -> int:
    """Rows per block of the log predictive density: the observations' even share of the fewest blocks of
    at most BLOCK rows, rounded up to a multiple of DENSITY_ROUND (so at most BLOCK / DENSITY_ROUND shapes
    compile; the blocks fill in order, under DENSITY_ROUND padding rows per block). A block's padding rows
    are computed in full, and a learned prior scores every one through its ODE: 50 cells in a block of
    256 cost the flow 5x their own work."""
    n_blocks = max(1, -(-n_obs // BLOCK))
    per_block = -(-n_obs // n_blocks)
    return int(min(BLOCK, max(DENSITY_ROUND, DENSITY_ROUND * -(-per_block // DENSITY_ROUND))))


def metadata(fit, obs: pd.DataFrame, library_size) -> CountData:
    """A CountData without counts (zero-width) for prediction from metadata alone."""
    design = fit.encoding.transform(obs)
    groups = None
    if fit.spec.dispersion_key is not None:
        groups, _ = group_codes(obs, fit.spec.dispersion_key, fit.group_levels)
    lib = np.ones(len(obs))
    if library_size is not None:
        lib = np.asarray(library_size, np.float64).ravel()
        if lib.size not in (1, len(obs)):
            raise DataError(f"library_size has {lib.size} values for {len(obs)} observations; pass one "
                            "number or one per observation")
        lib = np.broadcast_to(lib, (len(obs),)).copy()
        if not np.all(np.isfinite(lib)) or np.any(lib <= 0):
            raise DataError("library_size must be positive and finite for every observation")
    data = CountData(counts=np.zeros((len(obs), 0), np.float32), library_size=lib, design=design,
                     encoding=fit.encoding, obs=obs, var_names=pd.Index([]), groups=groups,
                     group_levels=fit.group_levels)
    return fit.with_offset(data, None if library_size is None else lib)


def predictive_blocks(fit, data: CountData, n: int, key, *, from_data: bool = False
                      ) -> Iterator[tuple[np.ndarray, Draws]]:
    """(rows, Draws) over blocks of `data`'s rows: n draws of the count distribution's parameters,
    latents from the conditional prior (or, with `from_data`, from the encoder)."""
    if not isinstance(n, int | np.integer) or n < 1:
        raise SpecError(f"the number of predictive draws must be a positive integer, got {n!r}")
    size = block_size(n, len(fit.var_names))
    for i, start in enumerate(range(0, data.n_obs, size)):
        rows = np.arange(start, min(start + size, data.n_obs))
        batch = make_batch(data, rows, size, 1.0, with_counts=from_data)
        p = fit._predictive(fit.params, jax.random.fold_in(key, i), batch, n=n, from_data=from_data)
        m = len(rows)
        yield rows, Draws.of(fit.spec.likelihood, {k: _rows(v, m, size) for k, v in p.items()})


def predict(fit, obs, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
            library_size=None, seed: int | jax.Array = 0) -> xr.Dataset:
    """Draw count profiles from p(x | c) for new metadata `obs` (a DataFrame or an AnnData's obs).

    Latents come from the conditional prior and parameters from the fitted guide. Library sizes:
    `library_size` (a number or one per observation) if given; otherwise, for a latent library,
    the model's prior; otherwise drawn from the log-normal of the training library sizes.
    Returns `counts` (sample, obs, gene), predictive `mean` and `sd`, and central intervals
    `lower`/`upper` (level, obs, gene) taken from the predictive samples. `seed`: an int or a JAX key.
    """
    obs = getattr(obs, "obs", obs)
    if not isinstance(obs, pd.DataFrame):
        raise DataError(f"obs must be a pandas DataFrame or an AnnData, got {type(obs).__name__}")
    n_samples = check_n_samples(n_samples)
    levels = check_levels(levels)
    _memory.require(_memory.draws_bytes(n_samples, len(obs), len(fit.var_names), len(levels), True),
                    f"predicting {n_samples} draws for {len(obs)} observations x {len(fit.var_names)} genes",
                    "lower the number of draws (--n-samples / n_samples=) or predict fewer observations at a time")
    data = metadata(fit, obs, library_size)
    rng, key = streams.host_rng(seed, "sampling"), streams.stream(seed, "predictive")
    draw_lib = library_size is None and fit.spec.library != "latent"
    pred = assemble(fit, data, predictive_blocks(fit, data, n_samples, key, from_data=False), rng, levels,
                    n_samples, draw_lib)
    bad = nonfinite(pred)
    if bad:
        warnings.warn(f"the prediction has non-finite values ({bad}): the metadata or library sizes lie where "
                      "the fitted model overflows; check them against the training data", RuntimeWarning,
                      stacklevel=3)
    return pred


def reconstruct(fit, adata, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
                seed: int | jax.Array = 0) -> xr.Dataset:
    """The reconstruction predictive of observed cells: latents from the encoder q(z | x, c)."""
    data = fit.data(adata)
    levels = check_levels(levels)
    rng = streams.host_rng(seed, "sampling")
    draws = predictive_blocks(fit, data, n_samples, streams.stream(seed, "predictive"), from_data=True)
    return assemble(fit, data, draws, rng, levels, n_samples, False)


def summarize(fit, draws, rng, levels, n_samples, draw_lib) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(rows, {"counts", "mean", "sd", "lower", "upper"}) per block of draws: predictive samples, moments
    and empirical central intervals; with `draw_lib` each sample's library size drawn from the log-normal
    of the training library sizes."""
    for rows, d in draws:
        if draw_lib:
            d = d.scaled(library.draw_training(rng, fit.dims.lib_loc, fit.dims.lib_scale, (n_samples, len(rows), 1)))
        counts = narrow_counts(d.sample(rng))  # int32 where they fit: sorted once for the intervals
        mean, sd = d.moments()
        lower, upper = empirical_intervals(counts, levels)
        yield rows, {"counts": counts, "mean": mean, "sd": sd, "lower": lower, "upper": upper}


DIMS = {"counts": ("sample", "obs", "gene"), "mean": ("obs", "gene"), "sd": ("obs", "gene"),
        "lower": ("level", "obs", "gene"), "upper": ("level", "obs", "gene")}


def assemble(fit, data, draws, rng, levels, n_samples, draw_lib) -> xr.Dataset:
    """The prediction as one in-memory Dataset (`summarize` over every block)."""
    n, G = data.n_obs, len(fit.var_names)
    out = {"counts": np.empty((n_samples, n, G), np.int64), "mean": np.empty((n, G)), "sd": np.empty((n, G)),
           "lower": np.empty((len(levels), n, G)), "upper": np.empty((len(levels), n, G))}
    for rows, block in summarize(fit, draws, rng, levels, n_samples, draw_lib):
        for k, v in block.items():
            out[k][..., rows, :] = v
    return xr.Dataset({k: (DIMS[k], v) for k, v in out.items()}, coords=_coords(fit, data, levels),
                      attrs=_attrs(fit))


def _coords(fit, data, levels) -> dict:
    return {"obs": np.asarray(data.obs.index, dtype=str), "gene": np.asarray(fit.var_names, dtype=str),
            "level": list(levels)}


def _attrs(fit) -> dict:
    return {"likelihood": fit.spec.likelihood, "story": fit.spec.story, "formula": fit.spec.formula}


def predict_to_file(fit, obs: pd.DataFrame, path, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
                    library_size=None, seed: int | jax.Array = 0) -> dict[str, int]:
    """`predict`, written block by block to a netCDF file at `path` (never samples x obs x genes in
    memory); the same values as `predict(...).to_netcdf(path)`, the draws stored as int32 (COUNTS_DTYPE),
    compressed (COMPRESSION). A block with non-finite means or sds
    stops it with a DataError (the caller's file is then not complete: write to a temporary one)."""
    import h5netcdf
    import h5py

    n_samples = check_n_samples(n_samples)
    levels = check_levels(levels)
    G = len(fit.var_names)
    rows = min(len(obs), block_size(n_samples, G))  # one block is in memory at a time
    _memory.require(_memory.draws_bytes(n_samples, rows, G, len(levels), True),
                    f"predicting {n_samples} draws for blocks of {rows} observations x {G} genes",
                    "lower the number of draws (--n-samples / n_samples=)")
    data = metadata(fit, obs, library_size)
    rng, key = streams.host_rng(seed, "sampling"), streams.stream(seed, "predictive")
    draw_lib = library_size is None and fit.spec.library != "latent"
    sizes = {"sample": n_samples, "obs": data.n_obs, "gene": len(fit.var_names), "level": len(levels)}
    coords = _coords(fit, data, levels)
    # chunks of one block's observations: a chunk larger than the block was read back, decompressed and
    # recompressed by every block inside it (HDF5's 1 MiB chunk cache holds none of them), ~55% of the CPU
    # time at 200 draws x 2,000 genes (benchmarks/README.md, "Where predict's time goes")
    with h5netcdf.File(path, "w") as f:
        f.dimensions = sizes
        for name, values in coords.items():
            values = np.asarray(values)
            text = values.dtype.kind == "U"
            f.create_variable(name, (name,), data=values.astype(object) if text else values,
                              dtype=h5py.string_dtype() if text else values.dtype)
        f.attrs.update(_attrs(fit))
        out = {k: f.create_variable(k, DIMS[k], dtype=COUNTS_DTYPE if k == "counts" else "f8",
                                    chunks=tuple(1 if d == "sample" else min(sizes[d], rows if d == "obs" else G)
                                                 for d in DIMS[k]),
                                    **(COMPRESSION if k == "counts" else {}))
               for k in DIMS}
        draws = predictive_blocks(fit, data, n_samples, key, from_data=False)
        for rows, block in summarize(fit, draws, rng, levels, n_samples, draw_lib):
            bad = _nonfinite({k: block[k] for k in ("mean", "sd")}, coords["gene"])
            if bad:
                raise DataError(f"the prediction has non-finite values ({bad}; observations {rows[0]}..{rows[-1]}), "
                                "so nothing was written: the metadata or library sizes lie where the fitted model "
                                "overflows; predict within the training range of the covariates and with library "
                                "sizes like the training ones")
            counts = block["counts"]  # narrowed to int32 by `summarize` where every draw fits
            if counts.size and counts.dtype != COUNTS_DTYPE and counts.max() > np.iinfo(COUNTS_DTYPE).max:
                raise DataError(f"a predictive draw exceeds {np.iinfo(COUNTS_DTYPE).max} counts (observations "
                                f"{rows[0]}..{rows[-1]}), so nothing was written: the fitted model overflows for "
                                "this metadata; predict within the training range of the covariates and with "
                                "library sizes like the training ones")
            sl = slice(int(rows[0]), int(rows[-1]) + 1)
            for k, v in block.items():
                out[k][..., sl, :] = v
    return sizes


def evaluate(fit, adata, *, n_samples: int = 100, levels: Sequence[float] = LEVELS,
             seed: int | jax.Array = 0) -> xr.Dataset:
    """Calibration on observed counts, predicting from their metadata (and library sizes) only.

    Returns the randomized PIT per entry, the PIT coverage of central intervals pooled and by
    decile of the genes' predicted mean, the tail probabilities per entry, and the log predictive
    density per observation.
    """
    levels = check_levels(levels)
    data = fit.data(adata)
    rng, key = streams.host_rng(seed, "sampling"), streams.stream(seed, "predictive")
    n, G = data.n_obs, data.n_genes
    pit, p_low, p_high, mean = (np.empty((n, G)) for _ in range(4))
    for rows, d in predictive_blocks(fit, data, n_samples, key, from_data=False):
        y = data.rows(rows).astype(np.float64)
        parts = d.below_and_at(y)
        pit[rows] = d.randomized_pit(y, rng, parts)
        p_low[rows], p_high[rows] = d.tail_probabilities(y, parts)
        mean[rows] = d.moments()[0]
    decile = deciles(mean.mean(0))
    by_decile = np.array([pit_coverage(pit[:, decile == k], levels) for k in range(10)])
    lpd = log_predictive_density(fit, data, n_samples=n_samples, seed=seed)
    coords = {"obs": np.asarray(data.obs.index, dtype=str), "gene": np.asarray(fit.var_names, dtype=str),
              "level": list(levels), "decile": np.arange(1, 11)}
    ds = xr.Dataset(
        {"pit": (("obs", "gene"), pit), "p_lower": (("obs", "gene"), p_low),
         "p_upper": (("obs", "gene"), p_high), "predicted_mean": (("obs", "gene"), mean),
         "coverage": (("level",), pit_coverage(pit, levels)),
         "coverage_by_decile": (("decile", "level"), by_decile),
         "gene_decile": (("gene",), decile + 1), "log_predictive_density": lpd.rename(None).variable},
        coords=coords)
    ds.attrs["mean_log_predictive_density"] = float(lpd.mean())
    return ds


def log_predictive_density(fit, adata_or_data, *, n_samples: int = 100,
                           seed: int | jax.Array = 0) -> xr.DataArray:
    """log p(x_n | c_n) per observation: for the GLM averaged over posterior draws; for the cVAE
    by importance sampling with the encoder as proposal and the conditional prior."""
    data = adata_or_data if isinstance(adata_or_data, CountData) else fit.data(adata_or_data)
    key = streams.stream(seed, "log_density")
    out = np.empty(data.n_obs)
    size = density_block(data.n_obs)
    for i, start in enumerate(range(0, data.n_obs, size)):
        rows = np.arange(start, min(start + size, data.n_obs))
        batch = make_batch(data, rows, size, 1.0)
        out[rows] = np.asarray(fit._log_marginal(fit.params, jax.random.fold_in(key, i), batch,
                                                 n=n_samples))[: len(rows)]
    return xr.DataArray(out, dims="obs", coords={"obs": np.asarray(data.obs.index, dtype=str)},
                        name="log_predictive_density")


def nonfinite(pred: xr.Dataset) -> str:
    """'' when every mean and sd of a prediction is finite, else a short account of where they are not."""
    return _nonfinite({v: pred[v].values for v in ("mean", "sd") if v in pred}, np.asarray(pred["gene"]))


def _nonfinite(arrays: dict[str, np.ndarray], genes: np.ndarray) -> str:
    parts = []
    for v, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            hit = np.asarray(genes)[bad.any(0)]
            parts.append(f"{v}: {int(bad.sum())} entries, {len(hit)} genes, e.g. {[str(g) for g in hit[:3]]}")
    return "; ".join(parts)


def _rows(a, m: int, size: int) -> np.ndarray | None:
    """The first m rows (axis -2) of a (..., size, G) array; arrays broadcast over rows pass as they are."""
    if a is None:
        return None
    a = np.asarray(a)
    return a[..., :m, :] if a.ndim >= 2 and a.shape[-2] == size else a
