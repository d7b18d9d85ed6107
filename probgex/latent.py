"""Latent-variable priors for the conditional VAE story.

Plain data only (no JAX): a latent prior is a small frozen dataclass that
``probgex.spec.ModelSpec`` carries and that round-trips through a dict/TOML.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from probgex.errors import SpecError

__all__ = ["Gaussian", "LATENT_KINDS", "latent_from_dict"]


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
        if not isinstance(d, Mapping):
            raise SpecError(f"a Gaussian latent must be given as a mapping; got {d!r}")
        allowed = ["kind"] + [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in allowed]
        if unknown:
            raise SpecError(_unknown_keys_message("latent", unknown, allowed))
        kind = d.get("kind", cls.kind)
        if kind != cls.kind:
            raise SpecError(
                f"latent kind {kind!r} does not match Gaussian; use kind = {cls.kind!r}"
            )
        return cls(**{k: v for k, v in d.items() if k != "kind"})


LATENT_KINDS: dict[str, type[Gaussian]] = {Gaussian.kind: Gaussian}


def latent_from_dict(d: Mapping[str, Any]) -> Gaussian:
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
