"""The learned priors' option objects, defined and validated once (plain data, no JAX): the vector-field
network, the training schedule, the ODE solves and the reverse-SDE sampler. `probgex.latent.Diffusion` /
`Flow` carry them (and a model file stores them as nested tables); the prior package's code reads them
as they are. Every bad value raises a SpecError when the object is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from probgex._validate import check_choice, check_count, check_number, check_sizes, to_plain
from probgex.choices import ODE_SOLVERS, SDE_SOLVERS
from probgex.errors import SpecError

__all__ = ["Network", "ODE", "SDE", "Training"]


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True)
class Network:
    """The vector-field network v(z, t, c) (the diffusion's noise / v predictor, the flow's velocity).

    hidden: hidden-layer widths (at least one). cond_dropout: the fraction of training rows whose
    condition is dropped, so that the same network also learns the unconditional field that
    classifier-free guidance needs (0: never dropped; then the prior's guidance must be 0)."""

    hidden: tuple[int, ...] = (128, 128, 128)
    cond_dropout: float = 0.1

    def __post_init__(self) -> None:
        hidden = check_sizes(self.hidden, "hidden", "Network")
        if not hidden:
            raise SpecError(f"Network.hidden needs at least one hidden layer, e.g. (128, 128, 128); got {self.hidden!r}")
        _set(self, "hidden", hidden)
        _set(self, "cond_dropout", check_number("Network", "cond_dropout", self.cond_dropout, 0, 0.9))

    to_dict = to_plain


@dataclass(frozen=True, kw_only=True)
class Training:
    """The prior's training schedule: optax Adam with gradient clipping on random minibatches, an
    exponential moving average of the weights (the result), held-out early stopping every `eval_every`
    steps after `patience` evaluations without improvement (the held-out loss averages
    `n_eval_repeats` noise draws per latent)."""

    max_steps: int = 20_000
    batch_size: int = 256
    learning_rate: float = 2e-3
    clip_norm: float = 1.0
    ema: float = 0.995  # decay of the weight average that is returned
    eval_every: int = 250
    patience: int = 8
    n_eval_repeats: int = 8

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_every", "patience", "n_eval_repeats"):
            _set(self, name, check_count("Training", name, getattr(self, name)))
        _set(self, "learning_rate", check_number("Training", "learning_rate", self.learning_rate, 0, 1, lo_open=True))
        _set(self, "clip_norm", check_number("Training", "clip_norm", self.clip_norm, 0, math.inf, lo_open=True))
        _set(self, "ema", check_number("Training", "ema", self.ema, 0, 1, hi_open=True))

    to_dict = to_plain


@dataclass(frozen=True, kw_only=True)
class ODE:
    """The ODE solves (sampling and log p(z | c)): diffrax `solver` ("tsit5", "dopri5" with a PID
    controller of tolerances `rtol`, `atol`; "euler" with fixed steps), the first (or fixed) step `dt0`
    as a fraction of the time span, at most `max_steps` steps."""

    solver: str = "tsit5"
    rtol: float = 1e-4
    atol: float = 1e-4
    dt0: float = 0.02
    max_steps: int = 4096

    def __post_init__(self) -> None:
        check_choice("ODE", "solver", self.solver, ODE_SOLVERS)
        for name in ("rtol", "atol"):
            _set(self, name, check_number("ODE", name, getattr(self, name), 0, 1, lo_open=True))
        _set(self, "dt0", check_number("ODE", "dt0", self.dt0, 0, 1, lo_open=True))
        _set(self, "max_steps", check_count("ODE", "max_steps", self.max_steps))

    to_dict = to_plain


@dataclass(frozen=True, kw_only=True)
class SDE:
    """The reverse-time SDE sampler of the diffusion prior: `solver` ("euler" or "heun") in `n_steps`
    fixed steps from t = 1 to t = eps; `denoise`: a final Tweedie step E[z_0 | z_eps] removes the
    sigma_eps noise left at t = eps."""

    solver: str = "euler"
    n_steps: int = 500
    denoise: bool = True

    def __post_init__(self) -> None:
        check_choice("SDE", "solver", self.solver, SDE_SOLVERS)
        _set(self, "n_steps", check_count("SDE", "n_steps", self.n_steps))
        if not isinstance(self.denoise, bool):
            raise SpecError(f"SDE.denoise must be True or False; got {self.denoise!r}")

    @property
    def evals_per_step(self) -> int:
        return 1 if self.solver == "euler" else 2

    to_dict = to_plain
