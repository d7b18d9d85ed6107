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
    # coef_prior "learned": per design column, the formula term whose learned prior sd it takes (-1: the
    # intercept, at its fixed sd); () otherwise and in files written before the option
    coef_terms: tuple[int, ...] = ()
    # coef_prior "learned": design columns all zero in the training rows (an unseen combination's interaction):
    # their posterior is their term's learned prior, N(0, tau^2), set so exactly (`models.glm.GLM.guide_params`)
    coef_unseen: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # lists from a file
        object.__setattr__(self, "coef_terms", tuple(int(t) for t in self.coef_terms))
        object.__setattr__(self, "coef_unseen", tuple(int(t) for t in self.coef_unseen))

    def to_dict(self) -> dict:
        return asdict(self)
