"""Sizes and data summaries a story needs besides its spec; saved with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    n_obs: int = 0  # observations of the fitted data (sample_quality "on" has one latent each)

    def to_dict(self) -> dict:
        return asdict(self)
