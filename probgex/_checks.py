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


def check_seed(seed) -> bool:
    """True for an int seed in [0, 2**31) (SpecError for an int outside), False for anything else (a key)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        return False
    if not 0 <= int(seed) < 2**31:
        raise SpecError(f"seed must be an int in [0, 2**31) or a JAX PRNG key, got {seed!r}")
    return True


def check_choice(name: str, value, allowed: tuple) -> None:
    """`value` one of `allowed` (a tuple from probgex.choices)."""
    if value not in allowed:
        raise SpecError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_grid(n_per_group) -> list[int]:
    """Replicates per group of a power curve: integers >= 2, sorted and unique."""
    raw = np.atleast_1d(np.asarray(n_per_group, dtype=object))
    try:
        ok = raw.size > 0 and all(float(n) == int(n) and int(n) >= 2 for n in raw)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SpecError(f"n_per_group must be integers >= 2 (replicates per group), got {n_per_group!r}")
    return sorted({int(n) for n in raw})


def check_power_options(*, n_per_group=None, fdr=0.05, level=0.9, target=0.8, n_draws=None, n_rep=1, depth=None,
                        depth_sd=None, lfc=None, de_fraction=0.1, effects=None, reference_n=None, min_abs_lfc=(),
                        nested=False) -> None:
    """The options of a power curve (`power.curve`, `power.power_grid`, `probgex power`), refused (SpecError)
    before any model is read; None skips an option that the caller does not take."""
    from probgex.choices import EFFECTS

    ns = None if n_per_group is None else check_grid(n_per_group)
    if not 0 < fdr < 1 or not 0 < level < 1 or not 0 < target <= 1:
        raise SpecError(f"fdr, level and target must lie in (0, 1): got {fdr}, {level}, {target}")
    if n_draws is not None and (not isinstance(n_draws, int | np.integer) or isinstance(n_draws, bool) or n_draws < 2):
        raise SpecError(f"n_draws must be an integer >= 2 (posterior draws), got {n_draws!r}")
    if n_rep < 1:
        raise SpecError("n_rep and the number of draws must be at least 1")
    if (depth is not None and not depth > 0) or (depth_sd is not None and not depth_sd >= 0):
        raise SpecError(f"depth must be positive and depth_sd non-negative, got {depth}, {depth_sd}")
    if lfc is not None and np.ndim(lfc) == 0 and not (np.isfinite(lfc) and lfc > 0):
        raise SpecError(f"lfc must be a positive log2 fold change (e.g. 0.585 for 1.5-fold) or one per gene, got {lfc!r}")
    if lfc is not None and np.ndim(lfc) == 0 and not 0 < de_fraction <= 1:
        raise SpecError(f"de_fraction must lie in (0, 1], got {de_fraction!r}")
    if effects is not None:
        check_choice("effects", effects, EFFECTS)
        if reference_n is None:
            raise SpecError("with effects from the fit every gene has some fold change: pass reference_n, the "
                            "replicates per group of the reference experiment that calls each draw's DE genes")
    if reference_n is not None and (isinstance(reference_n, bool) or not isinstance(reference_n, int | np.integer)
                                    or reference_n < 2):
        raise SpecError(f"reference_n must be an integer >= 2 (replicates per group), got {reference_n!r}")
    try:
        thr = np.atleast_1d(np.asarray(min_abs_lfc, dtype=float))
    except (TypeError, ValueError):
        thr = np.array([np.nan])
    if thr.ndim != 1 or not np.all(np.isfinite(thr)) or np.any(thr < 0):
        raise SpecError(f"min_abs_lfc must be non-negative log2 fold changes, got {min_abs_lfc!r}")
    if nested and ns is not None and (reference_n is None or reference_n < max(ns)):
        raise SpecError(f"nested experiments are drawn from the reference experiment: reference_n "
                        f"({reference_n}) must be at least the largest n ({max(ns)})")


def check_explain_options(*, n_draws=50, n_counts=None, n_latent=2, level=0.9, max_obs=2000, scale=1e4) -> None:
    """The options of the variance decomposition (`pg.explain`, `probgex explain`); n_counts None = by size."""
    def whole(name, v, least):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < least:
            raise SpecError(f"{name} must be an integer >= {least}, got {v!r}")

    whole("n_draws", n_draws, 2)
    whole("n_latent", n_latent, 2)
    whole("max_obs", max_obs, 3)
    if n_counts is not None:
        whole("n_counts", n_counts, 2)
    if isinstance(level, bool) or not isinstance(level, float | int) or not 0 < level < 1:
        raise SpecError(f"level must lie strictly between 0 and 1, got {level!r}")
    if isinstance(scale, bool) or not isinstance(scale, float | int) or not np.isfinite(scale) or scale <= 0:
        raise SpecError(f"scale must be a positive number (1e4 for CP10k), got {scale!r}")
