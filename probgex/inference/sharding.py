"""Data parallelism over the local devices with JAX's own runtime: a one-axis `jax.sharding.Mesh`,
each minibatch split across the devices along its rows, the parameters and optimizer state replicated.
The step stays one jitted program (GSPMD inserts the gradient all-reduce), so the result is the
single-device computation up to the order of floating-point sums.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def start_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a fit run by several processes (one per host or per device group): JAX's own runtime
    (`jax.distributed.initialize`), with gloo collectives for CPU-only processes. Call before any
    JAX computation; process 0 is the coordinator and writes the model file."""
    from probgex.errors import SpecError

    if not (isinstance(num_processes, int) and num_processes >= 1 and 0 <= process_id < num_processes):
        raise SpecError(f"--num-processes {num_processes!r} and --process-id {process_id!r}: the id must be "
                        "0 .. num-processes - 1")
    if ":" not in coordinator:
        raise SpecError(f"--coordinator {coordinator!r} must be HOST:PORT (process 0's address), e.g. 10.0.0.1:1234")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def local_mesh(devices: int | None = None) -> Mesh | None:
    """A mesh over the first `devices` local devices (None: all of them); None for a single device.
    With several processes (`start_processes`), the mesh spans every process's devices."""
    if jax.process_count() > 1:
        return Mesh(jax.devices(), (AXIS,))
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


def global_batch(batch, mesh: Mesh | None, rows: int):
    """One global batch from every process's local part (`rows` rows each): the row leaves
    concatenated across processes in process order, the others (scalars, the same everywhere)
    replicated. With one process, `shard_rows`."""
    if mesh is None or jax.process_count() == 1:
        return shard_rows(batch, mesh, rows)
    split, whole = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())

    def put(leaf):
        if leaf is None:
            return None
        if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == rows:
            shape = (rows * jax.process_count(), *leaf.shape[1:])
            return jax.make_array_from_process_local_data(split, np.asarray(leaf), shape)
        return jax.make_array_from_process_local_data(whole, np.asarray(leaf), np.shape(leaf))

    return jax.tree.map(put, batch)


def fetch(tree):
    """Host numpy copies of (replicated) arrays, also those spanning other processes' devices."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)
