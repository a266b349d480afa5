"""`mhlo.sharding` strings (XLA's HloSharding text) for mtfc tensor layouts."""

from __future__ import annotations

import math

from mtfc.mesh import TensorLayout


def hlo_sharding(layout: TensorLayout) -> str:
    """The HloSharding of `layout`, in the compact iota form.

    Tile dims are each tensor dim's split factor, plus a trailing replicated
    tile dim for mesh axes the tensor does not use.  The device order is the
    mesh's row-major order, permuted so the used axes come first (in dim
    order), then the unused ones.  E.g. on mesh rows:2,cols:4, dims split
    (cols, rows) give ``{devices=[4,2]<=[2,4]T(1,0)}``.
    """
    mesh = layout.mesh
    if mesh.size == 1 or layout.is_replicated:
        return "{replicated}"
    used = list(layout.used_axes)
    unused = [a for a in mesh.names if a not in used]
    tiles = [layout.split_factor(i) for i in range(len(layout.dims))]
    replicated = math.prod(mesh.axis_size(a) for a in unused)
    suffix = ""
    if replicated > 1:
        tiles.append(replicated)
        suffix = " last_tile_dim_replicate"
    perm = [mesh.names.index(a) for a in used + unused]
    if perm == sorted(perm):
        devices = f"<=[{mesh.size}]"
    else:
        devices = f"<=[{','.join(map(str, mesh.shape))}]T({','.join(map(str, perm))})"
    return f"{{devices=[{','.join(map(str, tiles))}]{devices}{suffix}}}"
