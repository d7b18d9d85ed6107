"""The state of the SVI loop a periodic checkpoint holds, so that a fit can continue from it.

Besides the best parameters and the loss history (the model part of the file), continuing needs the
optimizer state (the current parameters, Adam's moments and step counts, the learning rate as lowered
on plateaus), the number of epochs done and the early-stopping counters. Random state needs no saving:
epoch e's minibatch order and SVI step keys are pure functions of (seed, e) (`probgex.rng`). The
optimizer state is stored as named arrays (one per leaf, by tree path), never pickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import numpy as np

from probgex.errors import ModelFileError

PREFIX = "resume$"  # arrays of the snapshot in a model file
OPT = PREFIX + "opt"  # ... of the optimizer state, followed by the leaf's tree path


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The loop after `epoch` completed epochs (and that epoch's plateau / stopping decision)."""

    epoch: int
    best_loss: float  # the best held-out loss; inf: none yet (or no held-out split)
    stale: int  # epochs since it
    reductions_left: int  # learning-rate cuts still allowed on a plateau
    opt_state: dict[str, np.ndarray]  # optimizer state leaves by tree path (`flatten_opt_state`)
    # what a resumed fit must match (options, data fingerprint); written by the caller of the loop
    context: dict = field(default_factory=dict)
    context_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_file(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(the header entry, the arrays) of a model file."""
        header = {"epoch": int(self.epoch), "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
                  "stale": int(self.stale), "reductions_left": int(self.reductions_left), "context": self.context}
        arrays = {OPT + k: v for k, v in self.opt_state.items()}
        arrays |= {PREFIX + k: v for k, v in self.context_arrays.items()}
        return header, arrays

    @classmethod
    def pop_from_file(cls, header: dict, arrays: dict[str, np.ndarray]) -> Snapshot | None:
        """The snapshot of a model file's header and arrays (its arrays are removed from `arrays`), or None
        when the file holds none (a finished model, or a checkpoint written before resuming existed)."""
        own = {k: arrays.pop(k) for k in [k for k in arrays if k.startswith(PREFIX)]}
        h = header.get("resume")
        if h is None:
            return None
        try:
            best = h["best_loss"]
            return cls(epoch=int(h["epoch"]), best_loss=math.inf if best is None else float(best),
                       stale=int(h["stale"]), reductions_left=int(h["reductions_left"]),
                       opt_state={k[len(OPT):]: v for k, v in own.items() if k.startswith(OPT)},
                       context=dict(h.get("context", {})),
                       context_arrays={k[len(PREFIX):]: v for k, v in own.items() if not k.startswith(OPT)})
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"the resume state in the model file is incomplete or invalid ({e}); fit anew "
                                 "without resuming") from e


def flatten_opt_state(opt_state) -> dict[str, np.ndarray]:
    """Optimizer state pytree -> {tree path: array} (on the host)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(opt_state))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def restore_opt_state(template, arrays: dict[str, np.ndarray]):
    """The structure of `template` (a freshly initialised optimizer state) filled with the saved leaves,
    each checked against the template's shape and dtype, on the device."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(leaves) != len(arrays):
        raise ModelFileError(f"the checkpoint's optimizer state has {len(arrays)} arrays, this model's has "
                             f"{len(leaves)}: it was written for another model; fit anew without resuming")
    out = []
    for path, leaf in leaves:
        key = jax.tree_util.keystr(path)
        saved = arrays.get(key)
        if saved is None or saved.shape != np.shape(leaf) or saved.dtype != np.asarray(leaf).dtype:
            raise ModelFileError(f"the checkpoint's optimizer state does not fit this model at {key}: it was "
                                 "written for another model; fit anew without resuming")
        out.append(jax.device_put(saved))
    return jax.tree_util.tree_unflatten(treedef, out)
