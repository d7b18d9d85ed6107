"""The `Story` protocol every generative story implements, and the registry that builds the one a spec
names. A story is a NumPyro model / guide pair plus what prediction and the fit loop need of it; every
story is constructed the same way, `Story(spec, dims, log_mean, start)`, and declares its learned prior
(or None) and whether it takes count-split batches, so nothing probes it with `getattr` / `hasattr`.
Adding a story: one class implementing the protocol and one row of `STORIES`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from probgex import _numpyro
from probgex.models.batch import Batch
from probgex.models.cvae import CVAE
from probgex.models.dims import Dims
from probgex.models.glm import GLM
from probgex.models.residual import Residual
from probgex.spec import ModelSpec

__all__ = ["Dims", "STORIES", "Story", "build_story"]


@runtime_checkable
class Story(Protocol):
    """What the fit, prediction and model files use of a story."""

    spec: ModelSpec
    count_split: bool  # the loop may hand batches listing their entries >= 2 (`Batch.high`)
    learned: Any  # the learned latent prior trained after the SVI stage (`prior.learned`), or None

    def model(self, batch: Batch) -> None: ...

    def guide(self, batch: Batch) -> None: ...

    def predictive_params(self, params: dict, key: jax.Array, batch: Batch, n: int, *,
                          from_data: bool = False) -> dict[str, jax.Array]:
        """n draws of the count family's parameters for the batch's rows, by name."""

    def log_marginal(self, params: dict, key: jax.Array, batch: Batch, n: int) -> jax.Array:
        """log p(x_b | c_b) per row of the batch."""

    def prior_template(self) -> dict:
        """The parameter structure the prior stage adds ({} when it adds none)."""


# spec.story -> the class; "residual_glm" is the GLM around a stage-1 offset (it reads Batch.offset)
STORIES: dict[str, type] = {"glm": GLM, "residual_glm": GLM, "cvae": CVAE, "residual": Residual}


def build_story(spec: ModelSpec, dims: Dims, log_mean: np.ndarray, start: dict | None = None) -> Story:
    """The story `spec` names. `start` (`inference.start.glm_start`) starts the GLM's guide; a loaded
    model passes none (its parameters come from the file). numpyro is made whole first (`probgex._numpyro`:
    arviz, imported earlier, may have stubbed it), so every fit and every loaded model runs on it."""
    _numpyro.load()
    return STORIES[spec.story](spec, dims, log_mean, start)
