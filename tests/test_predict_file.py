"""`predict_to_file` stores the draws as compressed int32: the same values as the in-memory prediction,
and a draw too large for the stored type is refused rather than wrapped around."""

import h5py
import numpy as np
import pytest
import xarray as xr

from probgex.errors import DataError
from probgex.inference import predict as pred_mod


def test_draws_are_written_as_compressed_int32(glm_fit, small_adata, tmp_path):
    """(Equality with the in-memory prediction: tests/test_rowsource.py, slow.) The stored draws average to
    the stored predictive means: the total over all cells and genes within 5%."""
    obs = small_adata.obs.iloc[:30]
    pred_mod.predict_to_file(glm_fit, obs, tmp_path / "p.nc", n_samples=10, seed=3)
    with h5py.File(tmp_path / "p.nc", "r") as f:
        assert f["counts"].dtype == np.int32 and f["counts"].compression == "gzip" and f["counts"].shuffle
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as disk:
        counts, mean = disk["counts"].values, disk["mean"].values
    assert counts.shape == (10, 30, mean.shape[1]) and counts.min() >= 0
    assert abs(counts.mean(0).sum() / mean.sum() - 1) < 0.05


def test_a_draw_above_the_stored_type_is_refused(glm_fit, small_adata, tmp_path, monkeypatch):
    obs = small_adata.obs.iloc[:5]
    monkeypatch.setattr(pred_mod, "COUNTS_DTYPE", np.dtype(np.int8))  # max 127: library sizes of 1e6 exceed it
    with pytest.raises(DataError, match="exceeds 127 counts"):
        pred_mod.predict_to_file(glm_fit, obs, tmp_path / "q.nc", n_samples=4, library_size=1e6)


def test_intervals_of_int32_draws_equal_the_int64_path(glm_fit, small_adata, monkeypatch):
    """`summarize` sorts the draws as int32 where they fit: the same intervals and draws as sorting the int64
    draws (the path before, `narrow_counts` switched off); a draw beyond int32 keeps the draws int64."""
    from probgex.inference import predictive

    rng = np.random.default_rng(0)
    x = rng.negative_binomial(2, 0.01, size=(50, 7, 9)).astype(np.int64)  # many ties, values up to ~1,000
    assert predictive.narrow_counts(x).dtype == np.int32
    for a, b in zip(predictive.empirical_intervals(predictive.narrow_counts(x), pred_mod.LEVELS),
                    predictive.empirical_intervals(x, pred_mod.LEVELS), strict=True):
        np.testing.assert_array_equal(a, b)
    big = x.copy()
    big[3, 2, 1] = 2**31
    assert predictive.narrow_counts(big).dtype == np.int64
    big[3, 2, 1] = -(2**31) - 1  # (a non-finite mean cast to int64 is negative)
    assert predictive.narrow_counts(big).dtype == np.int64
    obs = small_adata.obs.iloc[:12]
    narrow = pred_mod.predict(glm_fit, obs, n_samples=20, seed=5)
    monkeypatch.setattr(pred_mod, "narrow_counts", lambda c: c)
    wide = pred_mod.predict(glm_fit, obs, n_samples=20, seed=5)
    for v in ("counts", "lower", "upper", "mean", "sd"):
        np.testing.assert_array_equal(narrow[v].values, wide[v].values)
    assert narrow["counts"].dtype == np.int64
