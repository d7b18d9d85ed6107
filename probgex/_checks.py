"""Checks of the options of fitting, prediction and scoring, with no JAX (but for counting the local devices
when more than one is asked for): the shell and the API refuse bad values (SpecError) before any data are
read or any model is built."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from probgex.errors import SpecError


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Central-interval levels as floats strictly between 0 and 1 (SpecError otherwise)."""
    try:
        levels = tuple(float(a) for a in levels)
    except (TypeError, ValueError):
        raise SpecError(f"interval levels must be numbers strictly between 0 and 1, got {levels!r}") from None
    if not levels or any(not 0 < a < 1 for a in levels):
        hint = " (as fractions: 0.9 for a 90% interval)" if any(1 < a <= 100 for a in levels) else ""
        raise SpecError(f"interval levels must lie strictly between 0 and 1{hint}, got {levels}")
    return levels


def check_fit_options(*, max_epochs=None, batch_size=128, patience=None, checkpoint_every=10, learning_rate=None,
                      holdout=None, devices=None, count_devices=True) -> None:
    """Refuse bad fitting options (SpecError) before any data are read. `devices`: None (all local
    devices) or a whole number from 1 to the local devices; with `count_devices` False (a run of several
    processes not yet joined: JAX must not start before `jax.distributed.initialize`) only its type."""
    def positive_int(name, v, allow_none=True, allow_zero=False):
        if v is None and allow_none:
            return
        if not (isinstance(v, int | np.integer) and not isinstance(v, bool)) or v < (0 if allow_zero else 1):
            raise SpecError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")

    positive_int("max_epochs", max_epochs)
    positive_int("batch_size", batch_size, allow_none=False)
    positive_int("patience", patience)
    positive_int("checkpoint_every", checkpoint_every, allow_none=False, allow_zero=True)
    if learning_rate is not None and not (isinstance(learning_rate, numbers.Real) and 0 < learning_rate < np.inf):
        raise SpecError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if holdout is not None and not (isinstance(holdout, numbers.Real) and 0 <= holdout < 1):
        raise SpecError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    positive_int("devices", devices)
    if count_devices and devices is not None and devices > 1:
        check_devices(devices)


def check_devices(devices: int) -> None:
    """`devices` local devices exist (SpecError otherwise); starts JAX's backend to count them."""
    import jax

    have = jax.local_devices()
    if devices > len(have):
        raise SpecError(f"devices={devices}: this process sees {len(have)} local device(s) ({have[0].platform}); "
                        f"pass a number from 1 to {len(have)}")


def check_n_samples(n, name: str = "n_samples") -> int:
    """A number of predictive draws: a positive integer (SpecError otherwise)."""
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not (isinstance(n, int | np.integer) and not isinstance(n, bool)) or n < 1:
        raise SpecError(f"{name} must be a positive integer (the number of predictive draws), got {n!r}")
    return int(n)
