"""Learned latent priors p(z | c): a VP-SDE score model (latent diffusion) and a continuous normalizing
flow trained by flow matching, both sampled and scored through diffrax ODEs (and the diffusion also by
reverse-time SDE). Internal package: the public entry points are `probgex.latent.Diffusion` / `Flow`.

Names are resolved lazily (PEP 562), so `probgex.prior.options` (the option objects, plain data) loads
no JAX."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"LearnedPrior": "probgex.prior.learned", "fit_learned_prior": "probgex.prior.learned",
            "Network": "probgex.prior.options", "ODE": "probgex.prior.options", "SDE": "probgex.prior.options",
            "Training": "probgex.prior.options"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probgex.prior' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
