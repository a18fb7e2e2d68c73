"""Data parallelism with JAX's own sharding: one mesh axis ``batch``; the batch is split, the state replicated.

- :func:`use_devices` sets (``jax.set_mesh``) a 1-D :class:`jax.sharding.Mesh` over the first n visible devices (every
  host's devices after ``jax.distributed.initialize``), axis ``batch`` of type Auto, so that XLA's SPMD partitioner
  propagates shardings through the compiled step; with one device it sets nothing.
- :func:`shard_batch` constrains the leading (batch) axis of an array to be split over ``batch``; it is called
  where a batch is created (base-distribution samples, buffer minibatch slots, data minibatches, exact target
  samples in evaluation) and every per-sample computation downstream runs on the device holding its rows;
  reductions (the loss, ESS, the gradient) become all-reduces.
- :func:`replicated` constrains a pytree to live whole on every device: the training state (parameters, optimiser
  state, FAB's replay buffer, AIS step sizes, key). The buffer is replicated by choice: a minibatch is a Gumbel
  top-k over *all* its weights, which a sharded buffer would have to gather each step; a copy costs
  ``max_length x (dim + 2)`` floats per device, and writing an AIS batch into it all-gathers n x dim floats.

Without a mesh (one device) both constraints return their argument untouched: the program compiled is exactly the
one-device program. Random numbers: with ``jax_threefry_partitionable`` (the default of jax 0.10) a draw sharded
over devices gives the same bits as the same draw on one device, and keys stay replicated; so a sharded run
equals the one-device run up to the order of floating-point sums (all-reduced gradients and statistics).
"""

from __future__ import annotations

from contextlib import contextmanager

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, PartitionSpec

from boltzflow.errors import BoltzflowError

AXIS = "batch"


def _active() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and AXIS in mesh.axis_names


def writes_files() -> bool:
    """Whether this process writes the run's files: the only process of one host, process 0 of several (every
    process computes the same results; one writer keeps checkpoints, metrics and reports whole)."""
    return jax.process_index() == 0


def hosts_meet(name: str) -> None:
    """Every process waits here until all have arrived (a no-op for one process): after process 0 writes files the
    others read next (the final checkpoint, before the report's ``load_run``), and before it writes into a run
    directory the others are still reading."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def batch_devices() -> int:
    """Devices the batch is split over: the size of the mesh axis ``batch``, 1 without a mesh."""
    return jax.sharding.get_abstract_mesh().shape[AXIS] if _active() else 1


def device_chunk(chunk: int, n: int) -> int:
    """Samples drawn at a time to make n in chunks of at most ``chunk``: ``min(chunk, n)`` rounded up to a multiple
    of :func:`batch_devices`, so that every chunk splits evenly over the mesh."""
    d = batch_devices()
    return -(-min(chunk, n) // d) * d


def to_host(tree):
    """The arrays of ``tree`` in this process's memory (numpy), with several processes every process's rows
    (all-gathered along the leading axis): what a host keeps of a sharded batch."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


@contextmanager
def use_devices(n: int | None = None):
    """Run the enclosed training / evaluation data-parallel on the first ``n`` visible devices (None: all of them);
    yields the mesh, or None for one device. More devices than visible is a BoltzflowError."""
    visible = jax.devices()
    n = len(visible) if n is None else n
    if not 1 <= n <= len(visible):
        raise BoltzflowError(f"--devices {n}: {len(visible)} device(s) visible ({visible[0].platform})")
    if n == 1:
        yield None
        return
    mesh = jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=visible[:n])
    with jax.set_mesh(mesh):
        yield mesh


def shard_batch(x: jax.Array) -> jax.Array:
    """``x`` with its leading axis split over the mesh axis ``batch`` (a no-op without a mesh)."""
    if not _active():
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(AXIS))


def replicated(tree):
    """The arrays of ``tree`` whole on every device of the mesh (a no-op without a mesh); inside or outside jit."""
    if not _active():
        return tree
    spec = PartitionSpec()
    return jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a, spec) if isinstance(a, jax.Array) else a, tree)
