"""The stage-1 interface: a point predictor of expression from metadata, frozen during stage 2.

Every predictor answers one question, `log_fraction(obs, genes, library_size)`: the log of the
expected share of an observation's counts that each gene takes (expected count / library size), an
(n, G) float32 array. Predictions in other units are converted here, once (`to_log_fraction`).
Predictors serialise to a JSON header plus named arrays (the model file; no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probgex.choices import SCALES
from probgex.errors import DataError

FRACTION_FLOOR = 1e-9  # a predicted mean of exactly 0 becomes this share of the library (stage 2 can move it)
CP = 1e4  # counts per 10k: the usual normalisation of log1p targets


class MeanPredictor:
    """Base class of stage-1 mean predictors (`GLMMean`, `MLPMean`, `External`)."""

    kind: str = ""

    def log_fraction(self, obs: pd.DataFrame, genes: Sequence[str],
                     library_size: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able header, named arrays) that `from_state` turns back into the predictor."""
        raise NotImplementedError


def gene_positions(available: pd.Index, genes: Sequence[str], who: str) -> np.ndarray:
    """Positions of `genes` among the predictor's genes; all must be there."""
    genes = list(map(str, genes))
    pos = pd.Index(available.astype(str)).get_indexer(genes)
    if (pos < 0).any():
        missing = [g for g, p in zip(genes, pos, strict=True) if p < 0]
        raise DataError(f"the {who} has no prediction for {len(missing)} of the model's genes (e.g. "
                        f"{missing[:5]}); predict every gene of the data or subset the data to its genes")
    return pos


def to_log_fraction(values, scale: str, library_size: np.ndarray | None, who: str) -> np.ndarray:
    """Predictions in `scale` units -> log expected fraction of the library, validated, float32."""
    if scale not in SCALES:
        raise DataError(f"unknown prediction scale {scale!r}; use one of {', '.join(SCALES)}")
    v = np.asarray(values, np.float64)
    if v.ndim != 2:
        raise DataError(f"the {who} returned an array of shape {v.shape}; it must be (observations, genes)")
    if not np.all(np.isfinite(v)):
        raise DataError(f"the {who} returned NaN or infinite predictions ({int((~np.isfinite(v)).sum())} "
                        "entries); fix the predictor or drop those observations")
    if scale == "log_fraction":
        return np.maximum(v, np.log(FRACTION_FLOOR)).astype(np.float32)
    if scale == "log1p_cp10k":
        v = np.expm1(np.maximum(v, 0.0)) / CP
    elif np.any(v < 0):
        raise DataError(f"the {who} returned negative predictions in {scale!r} units (min {v.min():.3g}); "
                        "expected counts and fractions must be >= 0")
    if scale == "counts":
        if library_size is None:
            raise DataError(f"the {who} gives expected counts, which need the observations' library sizes "
                            "to become fractions; pass library_size=... (or predictions as 'fraction')")
        v = v / np.asarray(library_size, np.float64).reshape(-1, 1)
    return np.log(np.maximum(v, FRACTION_FLOOR)).astype(np.float32)
