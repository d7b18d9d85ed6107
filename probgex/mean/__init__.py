"""Stage-1 mean predictors for the residual story (`pg.Model(..., latent=10, mean=...)`)."""

from __future__ import annotations

from probgex.errors import ModelFileError
from probgex.mean.base import SCALES, MeanPredictor
from probgex.mean.external import External
from probgex.mean.glm import GLMMean
from probgex.mean.mlp import MLPMean

__all__ = ["SCALES", "External", "GLMMean", "MLPMean", "MeanPredictor", "from_state"]


def from_state(header: dict, arrays: dict, fn=None) -> MeanPredictor:
    """Rebuild a predictor from `MeanPredictor.state()` (a model file's stage-1 part)."""
    kind = header.get("kind")
    if kind == "glm":
        return GLMMean.from_state(header, arrays)
    if kind == "mlp":
        return MLPMean.from_state(header, arrays)
    if kind == "external":
        return External.from_state(header, arrays, fn)
    raise ModelFileError(f"unknown stage-1 predictor kind {kind!r} in the model file; refit and save")
