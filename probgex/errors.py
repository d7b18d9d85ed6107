"""Exceptions raised for bad input, before any JAX code runs.

Every message names the problem and the fix.
"""


class ProbgexError(Exception):
    """Base class of probgex's input errors."""


class DataError(ProbgexError, ValueError):
    """The counts or the metadata cannot be used as given."""


class SpecError(ProbgexError, ValueError):
    """A model specification is invalid."""


class ModelFileError(ProbgexError, ValueError):
    """A saved model file is missing, truncated, tampered with or of an unknown version."""


class IncompleteFitWarning(UserWarning):
    """A model file holds a fit stopped before its last stage (a VAE-stage checkpoint of a cVAE with a
    learned prior): it is valid, but predicts with the VAE-stage Gaussian prior."""


class OutputError(ProbgexError, ValueError):
    """An output path cannot be written safely: it is one of the inputs, it exists (without overwrite),
    or its folder is missing, not a folder or not writable."""


class ExtrapolationWarning(UserWarning):
    """A numeric covariate lies outside the range the model was fitted on: the prediction extrapolates."""


class DispersionPriorWarning(UserWarning):
    """The genes' dispersions scatter around the mean-dispersion trend as widely as the prior sd may go:
    the formula likely leaves out a term the samples differ by (an interaction, a batch)."""
