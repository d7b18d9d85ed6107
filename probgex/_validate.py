"""Field checks shared by the plain-data option objects (model spec, latent priors, their options):
pure Python, no NumPy or JAX; every failure is a SpecError naming the owner, the field and the value."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from probgex.errors import SpecError


def is_int(value: Any) -> bool:
    """True for Python/NumPy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sizes(value: Any, field: str, owner: str) -> tuple[int, ...]:
    """Validate a sequence of layer widths; return it as a tuple of plain ints."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SpecError(
            f"{owner}.{field} must be a sequence of positive ints (e.g. (128,) or () for none); "
            f"got {value!r}"
        )
    sizes = tuple(value)
    for size in sizes:
        if not is_int(size) or size < 1:
            raise SpecError(
                f"{owner}.{field} must contain positive ints (layer widths >= 1); "
                f"got {size!r} in {value!r}"
            )
    return tuple(int(s) for s in sizes)


def check_number(owner: str, field: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    """A finite real number in [lo, hi] (open ends as asked), as a float."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}"
        if math.isfinite(hi):
            bound += f" and {'<' if hi_open else '<='} {hi}"
        raise SpecError(f"{owner}.{field} must be a number {bound}; got {value!r}")
    return float(value)


def check_count(owner: str, field: str, value: Any) -> int:
    """A positive int."""
    if not is_int(value) or value < 1:
        raise SpecError(f"{owner}.{field} must be a positive int; got {value!r}")
    return int(value)


def check_choice(owner: str, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (a tuple from probgex.choices)."""
    if not (isinstance(value, str) and value in allowed):
        raise SpecError(f"{owner}.{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def unknown_keys_message(where: str, unknown: list[str], allowed: list[str]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return (
        f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(parts)}; "
        f"allowed keys: {', '.join(allowed)}"
    )


def from_mapping(cls, d: Any, where: str):
    """A frozen option dataclass from its dict form (unknown keys refused with a hint)."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, Mapping):
        raise SpecError(f"{where} must be {cls.__name__}(...) or a table/mapping of its fields; got {d!r}")
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SpecError(unknown_keys_message(where, unknown, allowed))
    return cls(**d)


def to_plain(obj) -> dict[str, Any]:
    """A frozen option dataclass as plain Python (tuples as lists)."""
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)}
