"""Host data <-> per-device shards, by mtfc tensor layouts (our own slicing).
(The data: `mtfc.runtime.sources`; synthesized, `mtfc.runtime.synthetic`.)

Feeding: each process builds only the shards of the devices it drives
(`shard_to_devices`).  Reading back: each process holds only its devices'
output shards; `all_shards` exchanges them so that every process (process
0 prints, checks and writes) can reassemble the global outputs with
`gather_from_shards`, which checks that replicas agree bit for bit."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh as JaxMesh
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout
from mtfc.runtime.devices import addressable
from mtfc.runtime.sources import as_source


def jax_sharding(layout: TensorLayout, devices: list):
    """The jax sharding describing `layout` (metadata for the global arrays)."""
    mesh = layout.mesh
    if mesh.size == 1:
        return SingleDeviceSharding(devices[0])
    jmesh = JaxMesh(np.array(devices, dtype=object).reshape(mesh.shape), mesh.names)
    spec = PartitionSpec(*[(axes if len(axes) > 1 else axes[0]) if axes else None for axes in layout.axes])
    return NamedSharding(jmesh, spec)


def shard_to_devices(data, layout: TensorLayout, devices: list, dtype=None) -> jax.Array:
    """The global array `data` (an ndarray or a `HostSource`) cut into the
    shards `layout` assigns to `devices` (the mesh, in mesh order).  Only the
    devices this process drives get a shard, and the source is asked only
    for their blocks (each distinct block once); in a multi-process run the
    result is a global array whose other shards live in the other processes.
    `dtype`: convert each block to it."""
    source = as_source(data)
    if tuple(source.shape) != tuple(layout.sizes):
        raise MtfcError(f"array of shape {tuple(source.shape)} does not match dims {list(layout.dims)} "
                        f"of sizes {layout.sizes}")
    blocks: dict[tuple, np.ndarray] = {}
    shards = []
    for d, dev in addressable(devices):
        index = layout.shard_slices(d)
        key = tuple((s.start, s.stop) for s in index)
        if key not in blocks:
            block = source.block(index)
            if dtype is not None and block.dtype != np.dtype(dtype):
                block = block.astype(dtype)
            blocks[key] = block
        shards.append(jax.device_put(blocks[key], dev))
    return jax.make_array_from_single_device_arrays(tuple(layout.sizes), jax_sharding(layout, devices), shards)


def local_shards(array: jax.Array, devices: list) -> list:
    """The shards of `array` on this process's devices, in mesh order."""
    position = {dev.id: d for d, dev in enumerate(devices)}
    return sorted((s.data for s in array.addressable_shards), key=lambda a: position[next(iter(a.devices())).id])


def all_shards(per_output: list[list], devices: list) -> list[list[np.ndarray]]:
    """Every device's shard of each output, in mesh order, on every process.

    `per_output` holds, for each output, this process's shards in mesh order
    (`local_shards`, or what ``disassemble_into_single_device_arrays``
    returns, sorted).  One process: they are all there already.  Several:
    each process's shards, as one byte string, are exchanged with
    ``jax.experimental.multihost_utils.process_allgather`` (jax's own
    engine; one collective for all outputs), and process p's k-th shard is
    mesh device ``p * K + k``'s because the mesh is process-major.
    A collective when `devices` span processes: every process calls it with
    outputs of the same shapes."""
    from jax.experimental import multihost_utils

    hosts = [[np.asarray(s) for s in shards] for shards in per_output]
    if len(addressable(devices)) == len(devices):  # one process, or a program on process 0's devices only
        return hosts
    # One collective for all outputs: each process's shards as one byte string.
    stacked = [np.ascontiguousarray(np.stack(shards)) for shards in hosts]  # (K, *local) each
    flat = np.concatenate([a.reshape(-1).view(np.uint8) for a in stacked]) if stacked else np.zeros(0, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(flat, tiled=False))  # (N, bytes)
    out, offset = [], 0
    for a in stacked:
        size = a.nbytes
        for_each = [gathered[p, offset:offset + size].view(a.dtype).reshape(a.shape) for p in range(gathered.shape[0])]
        out.append([block[k] for block in for_each for k in range(a.shape[0])])
        offset += size
    assert all(len(shards) == len(devices) for shards in out), "every device's shard gathered"
    return out


def gather_from_shards(shards: list, layout: TensorLayout, dtype) -> np.ndarray:
    """Reassemble a global array from per-device shards (device order), checking
    that replicas agree bit for bit."""
    out = np.empty(layout.sizes, dtype=dtype)
    filled = np.zeros(layout.sizes, dtype=bool) if not layout.is_replicated else None
    for d, shard in enumerate(shards):
        index = layout.shard_slices(d)
        local = np.asarray(shard)
        if tuple(local.shape) != tuple(layout.local_sizes):
            raise AssertionError(f"device {d} returned shape {local.shape}, layout says {layout.local_sizes}")
        if d == 0 or filled is not None and not filled[index].any():
            out[index] = local
            if filled is not None:
                filled[index] = True
        elif not np.array_equal(out[index], local, equal_nan=True):
            raise MtfcError(f"replicas of an output disagree on device {d}: the partitioned program is inconsistent")
    return out

