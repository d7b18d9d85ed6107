"""Count families: the registry of the laws a model's counts can follow.

A family (`base.CountFamily`) owns everything that depends on the law: its parameter layout, the JAX
log-pmf and NumPyro distribution the stories fit with, and the host-side (NumPy / SciPy, float64)
pmf, cdf, zero probability, sampling and moments that prediction and calibration use. Stories and
prediction look a family up here by the spec's `likelihood` string, which is the registry name.

This module loads no JAX: the names are plain data (a spec validates against them), and a family's
module is imported on first `family(name)`. Adding a family is one module in this package and one
row below; `tests/test_families.py` checks every row against SciPy.
"""

from __future__ import annotations

from importlib import import_module

from probgex.errors import SpecError

# name -> "module:object" inside this package (imported on first use)
_REGISTRY = {
    "poisson": "poisson:POISSON",
    "nb": "nb:NB",
    "zinb": "zinb:ZINB",
    "hurdle_nb": "hurdle_nb:HURDLE_NB",
}
NAMES: tuple[str, ...] = tuple(_REGISTRY)


def family(name):
    """The count family registered as `name` (a family object passes through unchanged)."""
    if not isinstance(name, str):
        return name
    try:
        module, attr = _REGISTRY[name].split(":")
    except KeyError:
        raise SpecError(f"unknown likelihood {name!r}; choose one of {', '.join(map(repr, NAMES))}") from None
    return getattr(import_module(f"{__name__}.{module}"), attr)


__all__ = ["NAMES", "family"]
