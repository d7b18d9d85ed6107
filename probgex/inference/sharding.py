"""Data parallelism over the local devices with JAX's own runtime: a one-axis `jax.sharding.Mesh`,
each minibatch split across the devices along its rows, the parameters and optimizer state replicated.
The step stays one jitted program (GSPMD inserts the gradient all-reduce), so the result is the
single-device computation up to the order of floating-point sums.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def local_mesh(devices: int | None = None) -> Mesh | None:
    """A mesh over the first `devices` local devices (None: all of them); None for a single device."""
    have = jax.local_devices()
    n = len(have) if devices is None else int(devices)
    if n < 1 or n > len(have):
        from probgex.errors import SpecError

        raise SpecError(f"devices={devices!r}: this process sees {len(have)} local device(s) "
                        f"({have[0].platform}); pass a number from 1 to {len(have)}")
    return None if n == 1 else Mesh(have[:n], (AXIS,))


def n_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def replicate(tree, mesh: Mesh | None):
    """Every leaf of `tree` on every device of the mesh (unchanged without one)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_rows(batch, mesh: Mesh | None, rows: int):
    """The leaves of `batch` whose first axis has `rows` entries split along it across the devices;
    the others (scalars, fixed-length lists) replicated."""
    if mesh is None:
        return batch
    split, whole = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())

    def put(leaf):
        return jax.device_put(leaf, split if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == rows else whole)

    return jax.tree.map(put, batch)
