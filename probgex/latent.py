"""Latent-variable priors for the conditional VAE story.

Plain data only (no JAX): a latent prior is a small frozen dataclass that
``probgex.spec.ModelSpec`` carries and that round-trips through a dict/TOML.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from probgex.choices import PARAMETRIZATIONS, SAMPLERS, SDE_SOLVERS
from probgex.errors import SpecError

__all__ = ["Diffusion", "Flow", "Gaussian", "LATENT_KINDS", "LATENT_TYPES", "latent_from_dict"]


def _is_int(value: Any) -> bool:
    """True for Python/NumPy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_sizes(value: Any, field: str, owner: str) -> tuple[int, ...]:
    """Validate a sequence of layer widths; return it as a tuple of plain ints."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SpecError(
            f"{owner}.{field} must be a sequence of positive ints (e.g. (128,) or () for none); "
            f"got {value!r}"
        )
    sizes = tuple(value)
    for size in sizes:
        if not _is_int(size) or size < 1:
            raise SpecError(
                f"{owner}.{field} must contain positive ints (layer widths >= 1); "
                f"got {size!r} in {value!r}"
            )
    return tuple(int(s) for s in sizes)


def _unknown_keys_message(where: str, unknown: list[str], allowed: list[str]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return (
        f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(parts)}; "
        f"allowed keys: {', '.join(allowed)}"
    )


@dataclass(frozen=True)
class Gaussian:
    """Gaussian conditional prior p(z | c) = N(m(c), diag s(c)^2) from a prior network over the design."""

    dim: int = 10
    hidden: tuple[int, ...] = ()  # prior-network hidden sizes; () = linear map from design to (mean, log scale)
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        if not _is_int(self.dim) or self.dim < 1:
            raise SpecError(
                f"Gaussian.dim must be an int >= 1 (the latent dimension, e.g. 10); got {self.dim!r}"
            )
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "hidden", _check_sizes(self.hidden, "hidden", "Gaussian"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: ``{"kind": "gaussian", "dim": ..., "hidden": [...]}``."""
        return {"kind": self.kind, "dim": self.dim, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Gaussian:
        """Inverse of :meth:`to_dict`; ``kind`` may be omitted but must be "gaussian" if given."""
        return _from_mapping(cls, d)


def _check_number(owner: str, field: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if math.isfinite(hi) else "")
        raise SpecError(f"{owner}.{field} must be a number {bound}; got {value!r}")
    return float(value)


def _check_count(owner: str, field: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise SpecError(f"{owner}.{field} must be a positive int; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class _Learned:
    """Fields shared by the learned priors (Flow, Diffusion). During the VAE fit the Gaussian prior
    network (`hidden`) is used; afterwards the learned prior, trained on the encoder means of the training
    cells, replaces it for prediction, diagnostics and log p(x | c)."""

    dim: int = 10
    hidden: tuple[int, ...] = ()  # the VAE-stage Gaussian prior network, as in Gaussian
    net: tuple[int, ...] = (128, 128, 128)  # hidden sizes of the vector-field network
    max_steps: int = 20_000  # optimizer steps of the prior (held-out early stopping may end it sooner)
    batch_size: int = 256
    learning_rate: float = 2e-3
    cond_dropout: float = 0.1  # probability of dropping the condition in training (classifier-free guidance)
    guidance: float = 0.0  # guidance weight w at sampling: (1 + w) v(z, t, c) - w v(z, t, null)
    rtol: float = 1e-4  # ODE tolerances (Tsit5 + PID controller) for sampling and log p(z | c)
    atol: float = 1e-4
    kind: ClassVar[str] = "learned"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not _is_int(self.dim) or self.dim < 1:
            raise SpecError(f"{name}.dim must be an int >= 1 (the latent dimension, e.g. 10); got {self.dim!r}")
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "hidden", _check_sizes(self.hidden, "hidden", name))
        net = _check_sizes(self.net, "net", name)
        if not net:
            raise SpecError(f"{name}.net needs at least one hidden layer, e.g. (128, 128, 128); got {self.net!r}")
        object.__setattr__(self, "net", net)
        for f in ("max_steps", "batch_size"):
            object.__setattr__(self, f, _check_count(name, f, getattr(self, f)))
        object.__setattr__(self, "learning_rate", _check_number(name, "learning_rate", self.learning_rate, 0, 1,
                                                                lo_open=True))
        object.__setattr__(self, "cond_dropout", _check_number(name, "cond_dropout", self.cond_dropout, 0, 0.9))
        object.__setattr__(self, "guidance", _check_number(name, "guidance", self.guidance, 0, math.inf))
        if self.guidance > 0 and self.cond_dropout == 0:
            raise SpecError(f"{name}.guidance > 0 needs cond_dropout > 0 (the unconditional model is learned by "
                            "dropping the condition in training); set cond_dropout=0.1 or guidance=0")
        for f in ("rtol", "atol"):
            object.__setattr__(self, f, _check_number(name, f, getattr(self, f), 0, 1, lo_open=True))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        return _from_mapping(cls, d)


@dataclass(frozen=True)
class Flow(_Learned):
    """A learned conditional prior: a continuous normalizing flow trained by flow matching (conditional
    optimal-transport path; no ODE solve in training), sampled and scored through a diffrax ODE
    (Tsit5 + PID controller with tolerances `rtol`, `atol`). Fields as in :class:`Diffusion`."""

    kind: ClassVar[str] = "flow"




@dataclass(frozen=True)
class Diffusion(_Learned):
    """A learned conditional prior: a VP-SDE score model s(z, t, c) trained by denoising score matching
    on the encoder means of the training cells after the VAE is fitted (latent diffusion).

    `sampler = "ode"` draws by the probability-flow ODE (adaptive, `rtol`/`atol`); `"sde"` by the
    reverse-time SDE with `sde_solver` ("euler" or "heun") in `sde_steps` steps. log p(z | c) always
    goes through the ODE. `parametrization`: what the network predicts, "v" (v-prediction: the noise
    predictor is sigma_t z_t + alpha_t v_hat; the default, more accurate log p through the ODE) or "eps"
    (the noise itself; model files written before the option existed are read as "eps").
    """

    sampler: str = "ode"
    sde_solver: str = "euler"
    sde_steps: int = 500
    parametrization: str = "v"
    kind: ClassVar[str] = "diffusion"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampler not in SAMPLERS:
            raise SpecError(f"Diffusion.sampler must be one of {SAMPLERS}; got {self.sampler!r}")
        if self.sde_solver not in SDE_SOLVERS:
            raise SpecError(f"Diffusion.sde_solver must be one of {SDE_SOLVERS}; got {self.sde_solver!r}")
        object.__setattr__(self, "sde_steps", _check_count("Diffusion", "sde_steps", self.sde_steps))
        if self.parametrization not in PARAMETRIZATIONS:
            raise SpecError(f"Diffusion.parametrization must be one of {PARAMETRIZATIONS}; got "
                            f"{self.parametrization!r}")


LATENT_KINDS: dict[str, type] = {Gaussian.kind: Gaussian, Diffusion.kind: Diffusion, Flow.kind: Flow}
LATENT_TYPES = (Gaussian, Diffusion, Flow)


def latent_from_dict(d: Mapping[str, Any]) -> Gaussian | Diffusion | Flow:
    """Build a latent prior from a dict carrying a ``kind`` key (e.g. a ``[latent]`` TOML table)."""
    if not isinstance(d, Mapping):
        raise SpecError(
            f"latent must be a table/mapping like {{kind = 'gaussian', dim = 10}}; got {d!r}"
        )
    if "kind" not in d:
        raise SpecError(
            "the latent table needs a 'kind' key; allowed kinds: "
            + ", ".join(repr(k) for k in LATENT_KINDS)
            + " (e.g. kind = \"gaussian\")"
        )
    kind = d["kind"]
    if not isinstance(kind, str) or kind not in LATENT_KINDS:
        raise SpecError(
            f"unknown latent kind {kind!r}; allowed kinds: "
            + ", ".join(repr(k) for k in LATENT_KINDS)
        )
    return LATENT_KINDS[kind].from_dict(d)


def _from_mapping(cls, d: Mapping[str, Any]):
    """A latent dataclass from its dict form; ``kind`` may be omitted but must match if given."""
    if not isinstance(d, Mapping):
        raise SpecError(f"a {cls.__name__} latent must be given as a mapping; got {d!r}")
    allowed = ["kind"] + [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SpecError(_unknown_keys_message("latent", unknown, allowed))
    kind = d.get("kind", cls.kind)
    if kind != cls.kind:
        raise SpecError(f"latent kind {kind!r} does not match {cls.__name__}; use kind = {cls.kind!r}")
    return cls(**{k: v for k, v in d.items() if k != "kind"})
