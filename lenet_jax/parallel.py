"""Data parallelism (one process or several: jax.distributed): a 1-D `data` mesh, state replicated, each
batch sharded (XLA all-reduces the grads)."""

from __future__ import annotations

import socket
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lenet_jax.errors import ConfigError

DATA_AXIS = "data"


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Joins a multi-process run (all None: jax detects it), gloo on CPU; before any device is used."""
    if len({value is None for value in (coordinator, num_processes, process_id)}) > 1:  # some, not all
        raise ConfigError(
            "give all of --coordinator, --num-processes and --process-id, or --distributed alone"
        )
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"--coordinator must be HOST:PORT with a port in 1-65535, not {coordinator!r}")
        if num_processes < 1:
            raise ConfigError(f"--num-processes must be at least 1, not {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id must be in 0..{num_processes - 1}, not {process_id}")
        try:  # jax would retry an unknown host for minutes, then abort the process
            socket.getaddrinfo(host, int(port))
        except OSError as e:
            raise ConfigError(
                f"--coordinator host {host!r} cannot be resolved ({e.strerror or e}): pass process 0's "
                "host name or IP address"
            ) from None
    # The CPU backend needs one for cross-process reductions; it concerns the CPU client only.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    except Exception as e:  # noqa: BLE001 - jax raises ValueError/RuntimeError/XlaRuntimeError
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        how = "check --coordinator" if coordinator else (
            "outside a detected cluster (SLURM, Open MPI, ...), pass --coordinator, --num-processes "
            "and --process-id instead of --distributed")  # fmt: skip
        raise ConfigError(f"could not join the multi-process run ({reason}): {how}") from None


def is_main_process() -> bool:
    """Process 0 prints, writes TensorBoard, metrics.jsonl and config.json."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process got here (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def data_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, ndim: int = 1, axis: int | None = None) -> NamedSharding:
    """Sharded along the batch axis: `axis`, by default the last one ((B,) and (G, B) indices)."""
    spec = [None] * ndim
    spec[ndim - 1 if axis is None else axis] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = "--batch-size") -> None:
    devices = mesh.devices.size
    if batch_size % devices:
        raise ConfigError(
            f"{flag} {batch_size} does not divide over {devices} devices: use a multiple of {devices}"
        )


def _global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array of a host-identical x: each process puts only its own devices' shards."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """A host-identical pytree (same on every process) as replicated global arrays."""
    if jax.process_count() == 1:
        return jax.device_put(tree, replicated(mesh))
    return jax.tree_util.tree_map(lambda x: _global_array(np.asarray(x), replicated(mesh)), tree)


def global_batch(indices: np.ndarray, mesh: Mesh) -> Any:
    """The global index array of a step; with one process the numpy array itself (jit places it)."""
    return indices if jax.process_count() == 1 else _global_array(indices, batch_sharded(mesh, indices.ndim))


def with_sharding(abstract: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs carrying `sharding` (orbax restores each array onto it)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)


def host_value(x: Any) -> Any:
    """A replicated (or single-process) array's value on this host."""
    if jax.process_count() == 1:
        return jax.device_get(x)
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), x)
