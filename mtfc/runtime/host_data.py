"""Host arrays <-> per-device shards, by mtfc tensor layouts (our own slicing),
and synthetic data from initializer strings."""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from jax.sharding import Mesh as JaxMesh
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from mtfc import initializers
from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout


def jax_sharding(layout: TensorLayout, devices: list):
    """The jax sharding describing `layout` (metadata for the global arrays)."""
    mesh = layout.mesh
    if mesh.size == 1:
        return SingleDeviceSharding(devices[0])
    jmesh = JaxMesh(np.array(devices, dtype=object).reshape(mesh.shape), mesh.names)
    spec = PartitionSpec(*[(axes if len(axes) > 1 else axes[0]) if axes else None for axes in layout.axes])
    return NamedSharding(jmesh, spec)


def shard_to_devices(array: np.ndarray, layout: TensorLayout, devices: list) -> jax.Array:
    """Cut `array` into the shards `layout` assigns and place each on its device."""
    if tuple(array.shape) != tuple(layout.sizes):
        raise MtfcError(f"array of shape {array.shape} does not match dims {list(layout.dims)} of sizes {layout.sizes}")
    # np.array, not np.ascontiguousarray: the latter turns a rank-0 array into shape (1,).
    shards = [jax.device_put(np.array(array[layout.shard_slices(d)], order="C"), dev) for d, dev in enumerate(devices)]
    return jax.make_array_from_single_device_arrays(array.shape, jax_sharding(layout, devices), shards)


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


def synthesize(sig: mir.Signature, seed: int, step: int | None = None) -> np.ndarray:
    """Host data for an argument from its initializer string, reproducible from
    (`seed`, argument name) and independent of the layout.  With `step` (the
    training loop's per-step batches) the key is (`seed`, `step`, name)."""
    key = f"{seed}/{sig.name}" if step is None else f"{seed}/{step}/{sig.name}"
    digest = hashlib.sha256(key.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    data = initializers.sample(sig.init, rng, sig.shape, f"argument {sig.name!r}")
    return data.astype(mir.numpy_dtype(sig.dtype))
