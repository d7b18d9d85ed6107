"""The pieces every training loop of probgex shares (the SVI fit, the learned prior's stage, the stage-1
MLP): one early-stopping rule with learning-rate cuts on a plateau, the learning-rate cut itself on
optax's own state (`optax.tree_utils`, not by unpacking the optimizer state by position), and an
injected progress reporter. The loops keep their own jitted steps; what decides when to stop is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import optax


@dataclass
class EarlyStopping:
    """Held-out early stopping: a loss below the best by more than `min_delta` is an improvement;
    after `patience` evaluations without one the loop stops, but first, `reductions` times, a plateau
    of patience // 2 stale evaluations cuts the learning rate instead (and the count restarts)."""

    patience: int
    reductions: int = 0  # learning-rate cuts left
    min_delta: float = 0.0
    best: float = np.inf
    stale: int = 0

    def observe(self, loss: float) -> str:
        """"improved", "cut" (lower the learning rate now), "stop", or "stale"."""
        if loss < self.best - self.min_delta:
            self.best, self.stale = float(loss), 0
            return "improved"
        self.stale += 1
        if self.reductions and self.stale >= max(1, self.patience // 2):
            self.reductions -= 1
            self.stale = 0
            return "cut"
        if self.stale >= self.patience:
            return "stop"
        return "stale"


def scale_learning_rate(opt_state, factor: float):
    """The optimizer state with its injected learning rate (`optax.inject_hyperparams`) times `factor`."""
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate")
    return optax.tree_utils.tree_set(opt_state, learning_rate=lr * factor)


class Reporter(Protocol):
    """Progress of a loop: a context manager told the units done so far and a short message."""

    def __enter__(self) -> Reporter: ...

    def __exit__(self, *exc) -> None: ...

    def update(self, completed: int, msg: str = "") -> None: ...


class RichReporter:
    """A rich progress bar ("label unit n/total, bar, message, elapsed"); disabled shows nothing."""

    def __init__(self, label: str, total: int, completed: int = 0, *, unit: str = "epoch", enabled: bool = True):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn(f"[bold]{label}[/] {unit} {{task.completed}}/{{task.total}}"), BarColumn(),
                             TextColumn("{task.fields[msg]}"), TimeElapsedColumn(), disable=not enabled)
        self._task = self._bar.add_task(label, total=total, completed=completed, msg="")

    def __enter__(self) -> RichReporter:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def update(self, completed: int, msg: str = "") -> None:
        self._bar.update(self._task, completed=completed, msg=msg)


def reporter(progress, label: str, total: int, completed: int = 0, *, unit: str = "epoch") -> Reporter:
    """The reporter a loop uses: a rich bar for True / False (hidden), or a factory the caller injected,
    called as progress(label, total, completed, unit=unit)."""
    if isinstance(progress, bool):
        return RichReporter(label, total, completed, unit=unit, enabled=progress)
    return progress(label, total, completed, unit=unit)
