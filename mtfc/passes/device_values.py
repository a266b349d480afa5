"""Evaluate the device-dependent index arithmetic of a per-device program.

Per-device programs compute where a device's block starts from its replica or
partition id (mtfc: a table indexed by ``replica_id``; Shardy: arithmetic on
``partition_id``).  `per_device_value` evaluates such a scalar for every
device of the mesh, so rewrites can recognise "this device's own block"
semantically, whichever partitioner wrote it.
"""

from __future__ import annotations

import numpy as np
from jax.extend.mlir import ir

# Not an op list: each entry is an op's integer semantics in NumPy (this is an
# interpreter, and op_rules holds no semantics); every key is an elementwise
# op of op_rules (tests/test_op_rules.py checks it).
_BINARY = {
    "stablehlo.add": np.add,
    "stablehlo.subtract": np.subtract,
    "stablehlo.multiply": np.multiply,
    "stablehlo.divide": lambda a, b: np.trunc(a / b).astype(a.dtype) if a.dtype.kind in "iu" else a / b,
    "stablehlo.remainder": np.fmod,
    "stablehlo.maximum": np.maximum,
    "stablehlo.minimum": np.minimum,
}


def per_device_value(value: ir.Value, num_devices: int, _depth: int = 0) -> np.ndarray | None:
    """`value` on each device (leading axis = device), or None when it depends
    on anything but constants and the device id (or is too deep to bother)."""
    if _depth > 16 or isinstance(value, ir.BlockArgument):
        return None
    op = ir.OpResult(value).owner.operation
    name = op.name
    devices = np.arange(num_devices)
    if name == "stablehlo.constant":
        data = np.array(ir.DenseElementsAttr(op.attributes["value"]))
        t = ir.RankedTensorType(value.type)
        data = np.broadcast_to(data, tuple(t.shape)) if data.size == 1 else data.reshape(tuple(t.shape))
        return np.broadcast_to(data, (num_devices,) + data.shape).astype(np.int64)
    if name in ("stablehlo.replica_id", "stablehlo.partition_id"):
        return devices.astype(np.int64)
    args = []
    for operand in op.operands:
        v = per_device_value(operand, num_devices, _depth + 1)
        if v is None:
            return None
        args.append(v)
    if name in ("stablehlo.convert", "stablehlo.reshape"):
        shape = tuple(ir.RankedTensorType(value.type).shape)
        return args[0].reshape((num_devices,) + shape)
    if name in _BINARY:
        return _BINARY[name](args[0], args[1])
    if name == "stablehlo.dynamic_slice":
        sizes = list(ir.DenseI64ArrayAttr(op.attributes["slice_sizes"]))
        operand, starts = args[0], args[1:]
        out = []
        for d in range(num_devices):
            index = []
            for k, s in enumerate(starts):
                start = int(np.clip(s[d], 0, operand.shape[k + 1] - sizes[k]))
                index.append(slice(start, start + sizes[k]))
            out.append(operand[d][tuple(index)])
        return np.stack(out)
    return None
