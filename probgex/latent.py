"""Latent-variable priors for the conditional VAE story.

Plain data only (no JAX): a latent prior is a small frozen dataclass that
``probgex.spec.ModelSpec`` carries and that round-trips through a dict/TOML.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from probgex._validate import check_choice, check_number, check_sizes, from_mapping, is_int
from probgex._validate import unknown_keys_message as _unknown_keys_message
from probgex.choices import PARAMETRIZATIONS, SAMPLERS
from probgex.errors import SpecError
from probgex.prior.options import ODE, SDE, Network, Training

__all__ = ["Auto", "Diffusion", "Flow", "Gaussian", "LATENT_KINDS", "LATENT_TYPES", "Network", "ODE", "SDE", "Training",
           "latent_from_dict"]


@dataclass(frozen=True)
class Gaussian:
    """Gaussian conditional prior p(z | c) = N(m(c), diag s(c)^2) from a prior network over the design."""

    dim: int = 10
    hidden: tuple[int, ...] = ()  # prior-network hidden sizes; () = linear map from design to (mean, log scale)
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        if not is_int(self.dim) or self.dim < 1:
            raise SpecError(
                f"Gaussian.dim must be an int >= 1 (the latent dimension, e.g. 10); got {self.dim!r}"
            )
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "hidden", check_sizes(self.hidden, "hidden", "Gaussian"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: ``{"kind": "gaussian", "dim": ..., "hidden": [...]}``."""
        return {"kind": self.kind, "dim": self.dim, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Gaussian:
        """Inverse of :meth:`to_dict`; ``kind`` may be omitted but must be "gaussian" if given."""
        return _from_mapping(cls, d)


# the flat keyword arguments of the learned priors before the nested options (still read from model files
# and spec tables written then; a deprecated path in Python): flat name -> (option field, its field)
_FLAT = {"cond_dropout": ("net", "cond_dropout"), "max_steps": ("training", "max_steps"),
         "batch_size": ("training", "batch_size"), "learning_rate": ("training", "learning_rate"),
         "rtol": ("ode", "rtol"), "atol": ("ode", "atol"), "sde_solver": ("sde", "solver"),
         "sde_steps": ("sde", "n_steps")}
_OPTIONS = {"net": Network, "training": Training, "ode": ODE, "sde": SDE}


def _nest(cls, kw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments with the old flat names (and `net` as a tuple of widths) folded into the nested
    option objects; returns them with the flat names that were used."""
    kw, used = dict(kw), []
    if "net" in kw and not isinstance(kw["net"], (Network, Mapping)):
        used.append("net")
        kw["net"] = {"hidden": kw["net"]}
    nested: dict[str, dict[str, Any]] = {}
    for flat, (option, name) in _FLAT.items():
        if flat in kw and option in {f.name for f in fields(cls)}:
            used.append(flat)
            nested.setdefault(option, {})[name] = kw.pop(flat)
    for option, values in nested.items():
        given = kw.get(option)
        base = _OPTIONS[option]() if given is None else from_mapping(_OPTIONS[option], given, f"{cls.__name__}.{option}")
        kw[option] = replace(base, **values)
    return kw, used


@dataclass(frozen=True, init=False)
class _Learned:
    """Fields shared by the learned priors (Flow, Diffusion). During the VAE fit the Gaussian prior
    network (`hidden`) is used; afterwards the learned prior, trained on draws of the encoder's q(z | x, c) of the
    training cells (their aggregate posterior), replaces it for prediction, diagnostics and log p(x | c).

    net: the vector-field network (`Network`: hidden widths, condition dropout); training: its schedule
    (`Training`: steps, batch, learning rate, early stopping); ode: the ODE solves for sampling and
    log p(z | c) (`ODE`: solver, tolerances); guidance: the classifier-free guidance weight w at sampling,
    (1 + w) v(z, t, c) - w v(z, t, null). Each option may also be given as a mapping of its fields."""

    dim: int = 10
    hidden: tuple[int, ...] = ()  # the VAE-stage Gaussian prior network, as in Gaussian
    net: Network = Network()
    training: Training = Training()
    ode: ODE = ODE()
    guidance: float = 0.0
    kind: ClassVar[str] = "learned"
    sampler: ClassVar[str] = "ode"  # the Flow's; a field of the Diffusion
    sde: ClassVar[SDE | None] = None  # the Flow has no reverse SDE; a field of the Diffusion

    def __init__(self, dim: int = 10, **kw: Any) -> None:
        kw, used = _nest(type(self), kw)
        if used:
            warnings.warn(f"{type(self).__name__}({', '.join(f'{k}=' for k in used)}...): the flat options are "
                          "deprecated; pass the nested ones (net=Network(...), training=Training(...), "
                          "ode=ODE(...), sde=SDE(...) from probgex.latent)", DeprecationWarning, stacklevel=2)
        _init_fields(self, {"dim": dim, **kw})

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not is_int(self.dim) or self.dim < 1:
            raise SpecError(f"{name}.dim must be an int >= 1 (the latent dimension, e.g. 10); got {self.dim!r}")
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "hidden", check_sizes(self.hidden, "hidden", name))
        for option in fields(self):
            if option.name in _OPTIONS:
                object.__setattr__(self, option.name, from_mapping(_OPTIONS[option.name], getattr(self, option.name),
                                                                   f"{name}.{option.name}"))
        object.__setattr__(self, "guidance", check_number(name, "guidance", self.guidance, 0, math.inf))
        if self.guidance > 0 and self.net.cond_dropout == 0:
            raise SpecError(f"{name}.guidance > 0 needs net.cond_dropout > 0 (the unconditional model is learned "
                            "by dropping the condition in training); set Network(cond_dropout=0.1) or guidance=0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: the options as nested dicts."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if f.name in _OPTIONS else list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Inverse of :meth:`to_dict`; also reads the flat layout written before the nested options."""
        if isinstance(d, Mapping):
            d = _nest(cls, d)[0]
        return _from_mapping(cls, d)


def _init_fields(obj, kw: dict[str, Any]) -> None:
    """The dataclass __init__ of a class with init=False: defaults, then unknown keys refused, then checks."""
    names = [f.name for f in fields(obj)]
    unknown = [k for k in kw if k not in names]
    if unknown:
        raise SpecError(_unknown_keys_message(type(obj).__name__, unknown,
                                             names + [k for k, (o, _) in _FLAT.items() if o in names]))
    for f in fields(obj):
        object.__setattr__(obj, f.name, kw.get(f.name, f.default))
    obj.__post_init__()


@dataclass(frozen=True, init=False)
class Flow(_Learned):
    """A learned conditional prior: a continuous normalizing flow trained by flow matching (conditional
    optimal-transport path; no ODE solve in training), sampled and scored through a diffrax ODE
    (`ode`). Fields as in :class:`Diffusion` but the sampler (always the ODE)."""

    kind: ClassVar[str] = "flow"


@dataclass(frozen=True, init=False)
class Diffusion(_Learned):
    """A learned conditional prior: a VP-SDE score model s(z, t, c) trained by denoising score matching
    on draws of the training cells' q(z | x, c) after the VAE is fitted (latent diffusion).

    `sampler = "ode"` draws by the probability-flow ODE (`ode`: adaptive, tolerances); `"sde"` by the
    reverse-time SDE (`sde`: solver "euler" or "heun", steps). log p(z | c) always goes through the ODE.
    `parametrization`: what the network predicts, "v" (v-prediction: the noise predictor is
    sigma_t z_t + alpha_t v_hat; the default, more accurate log p through the ODE) or "eps" (the noise
    itself; model files written before the option existed are read as "eps").
    """

    sampler: str = "ode"  # type: ignore[misc]
    sde: SDE = SDE()  # type: ignore[misc]
    parametrization: str = "v"
    kind: ClassVar[str] = "diffusion"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Diffusion", "sampler", self.sampler, SAMPLERS)
        check_choice("Diffusion", "parametrization", self.parametrization, PARAMETRIZATIONS)


@dataclass(frozen=True)
class Auto:
    """The cVAE's default prior: the VAE stage is the Gaussian-network VAE that every prior shares; after
    it the fit decides from the training cells' encoder means (`probgex.inference.auto_prior`): a
    `Flow(dim, hidden, training=training)` prior, trained as an explicit Flow's, when there are enough
    training cells and some latent dimension is active, else the `Gaussian(dim, hidden)` prior. The
    fitted model's spec records the prior chosen and its `fit_info["latent_choice"]` why.

    `training`: the flow's schedule if it is chosen (`Training`); force a prior with `Gaussian(...)` /
    `Flow(...)`."""

    dim: int = 10
    hidden: tuple[int, ...] = ()  # the VAE-stage Gaussian prior network, as in Gaussian
    training: Training = Training()
    kind: ClassVar[str] = "auto"

    def __post_init__(self) -> None:
        if not is_int(self.dim) or self.dim < 1:
            raise SpecError(f"Auto.dim must be an int >= 1 (the latent dimension, e.g. 10); got {self.dim!r}")
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "hidden", check_sizes(self.hidden, "hidden", "Auto"))
        object.__setattr__(self, "training", from_mapping(Training, self.training, "Auto.training"))

    def resolve(self, kind: str) -> Gaussian | Flow:
        """The prior this spec becomes when the fit chooses `kind` ("gaussian" or "flow")."""
        if kind == Gaussian.kind:
            return Gaussian(dim=self.dim, hidden=self.hidden)
        if kind == Flow.kind:
            return Flow(dim=self.dim, hidden=self.hidden, training=self.training)
        raise SpecError(f"an auto prior resolves to 'gaussian' or 'flow'; got {kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: ``{"kind": "auto", "dim": ..., "hidden": [...], "training": {...}}``."""
        return {"kind": self.kind, "dim": self.dim, "hidden": list(self.hidden), "training": self.training.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Auto:
        """Inverse of :meth:`to_dict`; ``kind`` may be omitted but must be "auto" if given."""
        return _from_mapping(cls, d)


LATENT_KINDS: dict[str, type] = {Gaussian.kind: Gaussian, Diffusion.kind: Diffusion, Flow.kind: Flow,
                                 Auto.kind: Auto}
LATENT_TYPES = (Gaussian, Diffusion, Flow, Auto)


def latent_from_dict(d: Mapping[str, Any]) -> Gaussian | Diffusion | Flow | Auto:
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
