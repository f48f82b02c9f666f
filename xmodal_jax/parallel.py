"""Meshes, sharding rules and host↔device data movement (no pmap anywhere).

We use an **auto-sharding** mesh (``jax.sharding.Mesh`` with the default ``AxisType.Auto``): params
and batches get ``NamedSharding`` annotations at the jit boundary and XLA's partitioner propagates
them through the step. ``jax.make_mesh`` would build an *explicit*-sharding mesh, where every op's
output sharding is part of its type and FSDP weights would need hand-written resharding inside
the models; auto sharding keeps the models free of sharding code.

Mesh axes: ``data`` (pure data parallelism) and ``fsdp`` (batch *and* the largest divisible
dimension of big weights are split). Batches are split over both axes.

Activations: every body block's input and output is pinned batch-sharded over both axes
(:func:`constrain_batch`, called by ``layers.call_block`` and the ResNet stages) when a mesh is in
context (``jax.set_mesh``; the trainer sets the run's mesh). Why: with only the params and the
batch annotated, the partitioner is free to carry an FSDP kernel's feature sharding into the
activations (feature-sharded activations plus all-to-alls) instead of all-gathering the kernel;
pinning block boundaries makes every block FSDP proper: batch-parallel compute, weights gathered
per block (maxtext's activation constraints, with one logical rule).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xmodal_jax import paths

BATCH_AXES = ("data", "fsdp")
TACTICS = ("replicate", "fsdp")


def maybe_initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Calls ``jax.distributed.initialize`` for a multi-process run, once.

    Arguments win over the environment (``XMODAL_COORDINATOR``, ``XMODAL_NUM_PROCESSES``,
    ``XMODAL_PROCESS_ID``); with neither, JAX's own cluster auto-detection (TPU pods, Slurm,
    Open MPI) is used only if ``XMODAL_DISTRIBUTED=auto``. A single-process run does nothing.
    """
    env = os.environ
    coordinator = coordinator or env.get("XMODAL_COORDINATOR")
    num_processes = num_processes or int(env.get("XMODAL_NUM_PROCESSES", "0") or 0)
    if process_id is None and env.get("XMODAL_PROCESS_ID") is not None:
        process_id = int(env["XMODAL_PROCESS_ID"])
    if jax.distributed.is_initialized():
        return
    if coordinator and num_processes and num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif env.get("XMODAL_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def make_mesh(
    data: int = -1, fsdp: int = 1, num_devices: int = 0, devices: Sequence[Any] | None = None
) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all, or the first ``num_devices``).

    ``-1`` fills the remaining axis.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"mesh.num_devices={num_devices} but only {len(devices)} devices")
        devices = devices[:num_devices]
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ValueError(f"mesh: data={data} × fsdp={fsdp} does not use the {n} devices exactly")
    return Mesh(np.asarray(devices).reshape(data, fsdp), ("data", "fsdp"))


def constrain_batch(x: jax.Array) -> jax.Array:
    """``x`` with its leading (batch) dim pinned to the batch axes of the mesh in context.

    The identity when no mesh is set (``jax.set_mesh``), when the mesh lacks the batch axes or
    has one device on them, or when the leading dim does not divide evenly (e.g. inside a
    per-example ``vmap`` or on an odd-sized probe batch); so models call it unconditionally and
    stay usable from plain single-device JAX code. Values are unchanged; only the layout the
    partitioner must produce at this point is fixed (see the module docstring).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    n = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if n == 1 or x.ndim == 0 or x.shape[0] % n:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over every mesh axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated placement."""
    return NamedSharding(mesh, PartitionSpec())


def _spec_for(shape: tuple[int, ...], tactic: str, fsdp_size: int) -> PartitionSpec:
    if tactic == "replicate" or fsdp_size == 1 or not shape:
        return PartitionSpec()
    # Largest dim divisible by the fsdp axis; ties → the later dim (a kernel's output features).
    best = None
    for i, d in enumerate(shape):
        if d % fsdp_size == 0 and (best is None or d >= shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[best] = "fsdp"
    return PartitionSpec(*spec)


def param_shardings(abstract_params: Any, mesh: Mesh, rules: Sequence[tuple[str, str]]) -> Any:
    """Maps each param through the first ``(regex, tactic)`` that fullmatches its path
    (``body/…``, the :mod:`xmodal_jax.paths` convention).

    Tactics: ``replicate``, or ``fsdp`` (shard the largest dimension divisible by the fsdp axis
    size; replicate if none is). Unmatched params are replicated.
    """
    compiled = []
    for pattern, tactic in rules:
        if tactic not in TACTICS:
            raise ValueError(f"sharding rule {pattern!r}: tactic {tactic!r} not in {TACTICS}")
        compiled.append((re.compile(pattern), tactic))
    fsdp_size = mesh.shape["fsdp"]

    def sharding(path: str, leaf: Any) -> NamedSharding:
        tactic = next(
            (t for rx, t in compiled if paths.matches(rx, path, "fullmatch")), "replicate"
        )
        return NamedSharding(mesh, _spec_for(tuple(leaf.shape), tactic, fsdp_size))

    return paths.map_paths(sharding, abstract_params)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Assembles this process's rows of each array into one global, batch-sharded ``jax.Array``."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def process_slice(global_batch: int) -> slice:
    """The rows of a global batch this process feeds (contiguous, equal per process)."""
    n, p = jax.process_count(), jax.process_index()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by {n} processes")
    per = global_batch // n
    return slice(p * per, (p + 1) * per)


def to_host(tree: Any) -> Any:
    """Fetches a (possibly multi-process sharded) pytree as full numpy arrays on every host."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
