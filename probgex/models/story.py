"""Build the generative story a spec names, from the data summaries a fit records."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from probgex.models.cvae import CVAE
from probgex.models.glm import GLM, GLMInit
from probgex.models.residual import Residual
from probgex.spec import ModelSpec


@dataclass(frozen=True)
class Dims:
    """Sizes and data summaries a story needs besides its spec; saved with the model."""

    n_design: int
    n_genes: int
    n_groups: int
    intercept: int | None  # design column of the intercept, if any
    lib_loc: float  # mean of log library size on the training observations
    lib_scale: float  # its standard deviation
    seed: int
    n_obs: int = 0  # observations of the fitted data (the GLM's per-sample quality has one latent each)

    def to_dict(self) -> dict:
        return asdict(self)


def build_story(spec: ModelSpec, dims: Dims, log_mean: np.ndarray, beta_init: np.ndarray | None = None,
                beta_tril: np.ndarray | None = None, *, trend: tuple[float, float, float] | None = None,
                fixed_trend: bool = False):
    """The NumPyro model/guide pair of `spec`. `beta_init` and `beta_tril` only start the GLM guide."""
    if spec.latent is None:  # the GLM, around a stage-1 offset for "residual_glm"
        beta = np.zeros((dims.n_design, dims.n_genes), np.float32) if beta_init is None else beta_init
        return GLM(spec, dims.n_design, dims.n_genes, dims.n_groups, dims.intercept,
                   GLMInit(beta=beta.astype(np.float32), log_mean=log_mean.astype(np.float32),
                           beta_tril=beta_tril, trend=trend,
                           fixed_trend=fixed_trend and trend is not None, n_obs=dims.n_obs))
    cls = Residual if spec.story == "residual" else CVAE
    return cls(spec, dims.n_design, dims.n_genes, dims.n_groups, seed=dims.seed,
               lib_loc=dims.lib_loc, lib_scale=dims.lib_scale)
