"""`hlo_sharding` checked against jax: for random meshes and layouts, the
HloSharding string mtfc writes places every index of a tensor on the same
devices as the equivalent `jax.sharding.NamedSharding`.

Three independent readings of mtfc's string are compared with jax's:
our own decoding of the iota text (below), XLA's parser
(`HloSharding.from_string`), and mtfc's runtime slicing
(`TensorLayout.shard_slices`).  An end-to-end test runs a compiled module and
compares its per-device shards with what `jax.device_put` places.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax._src.lib import xla_client as xc
from jax.sharding import Mesh as JaxMesh
from jax.sharding import NamedSharding, PartitionSpec

import mtfc as mtf
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules, Mesh, tensor_layout
from mtfc.passes.hlo_sharding import hlo_sharding
from mtfc.runtime.execute import Program
from mtfc.runtime.host_data import shard_to_devices

AXIS_NAMES = ("rows", "cols", "depth")
DEVICES = jax.devices()[:8]


# ----------------------------------------------------------------- strategies


@st.composite
def meshes(draw):
    """(mesh text, Mesh): 1-3 axes of sizes 1, 2 or 4, at most 8 devices."""
    count = draw(st.integers(1, 3))
    names = draw(st.permutations(AXIS_NAMES))[:count]
    sizes = draw(st.lists(st.sampled_from([1, 2, 4]), min_size=count, max_size=count).filter(lambda s: math.prod(s) <= 8))
    sep = draw(st.sampled_from([",", ";"]))
    text = sep.join(f"{n}:{s}" for n, s in zip(names, sizes))
    return text, Mesh.parse(text)


@st.composite
def layouts(draw, ndim=None, max_multiple=3):
    """A mesh, a tensor (dim names and sizes) and rules giving it a valid layout.

    Every mesh axis goes to one tensor dim or to none; a dim with several
    axes lists them in a random order.  Sizes are divisible by construction.
    A rule for a dim the tensor lacks may reuse any axis (it must not matter).
    """
    mesh_text, mesh = draw(meshes())
    if ndim is None:
        ndim = draw(st.integers(0, 3))
    dims = [f"d{i}" for i in range(ndim)]
    per_dim: list[list[str]] = [[] for _ in dims]
    for axis in mesh.names:
        owner = draw(st.integers(-1, ndim - 1))
        if owner >= 0:
            per_dim[owner].append(axis)
    per_dim = [list(draw(st.permutations(axes))) if axes else [] for axes in per_dim]
    sizes = [
        math.prod(mesh.axis_size(a) for a in axes) * draw(st.integers(1, max_multiple))
        for axes in per_dim
    ]
    rules = [f"{d}:{'+'.join(axes)}" for d, axes in zip(dims, per_dim) if axes]
    if draw(st.booleans()):
        rules.append(f"other:{draw(st.sampled_from(mesh.names))}")
    rules = draw(st.permutations(rules))
    return mesh_text, mesh, dims, sizes, per_dim, ",".join(rules)


# ----------------------------------------------------------------- readings


def jax_named_sharding(mesh: Mesh, per_dim) -> NamedSharding:
    """The NamedSharding equivalent to a layout: a dim with several axes -> a tuple."""
    jmesh = JaxMesh(np.array(DEVICES[: mesh.size]).reshape(mesh.shape), mesh.names)
    spec = PartitionSpec(*[None if not axes else axes[0] if len(axes) == 1 else tuple(axes) for axes in per_dim])
    return NamedSharding(jmesh, spec)


def jax_index_map(sharding: NamedSharding, shape) -> dict[int, tuple]:
    """Device position -> ((start, stop), ...) per dim, from jax."""
    position = {d: i for i, d in enumerate(DEVICES)}
    out = {}
    for device, index in sharding.devices_indices_map(tuple(shape)).items():
        out[position[device]] = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
    return out


def index_map_from_tiles(grid: np.ndarray | None, replicate_last: bool, shape, num_devices: int) -> dict[int, tuple]:
    """Device -> index ranges for a tile assignment (`grid` of device ids, or
    None for a replicated sharding)."""
    full = tuple((0, n) for n in shape)
    if grid is None:
        return {d: full for d in range(num_devices)}
    tiles = grid.shape[:-1] if replicate_last else grid.shape
    assert len(tiles) == len(shape), (grid.shape, shape)
    assert sorted(grid.ravel().tolist()) == list(range(num_devices)), f"not every device once: {grid}"
    out = {}
    for position, device in np.ndenumerate(grid):
        ranges = []
        for i, n in enumerate(shape):
            assert n % tiles[i] == 0, (shape, tiles)
            chunk = n // tiles[i]
            ranges.append((position[i] * chunk, (position[i] + 1) * chunk))
        out[int(device)] = tuple(ranges)
    return out


_TILED = re.compile(
    r"^\{devices=\[(?P<tiles>[0-9,]+)\]"
    r"(?:<=\[(?P<reshape>[0-9,]+)\](?:T\((?P<perm>[0-9,]+)\))?|(?P<list>[0-9,]+))"
    r"(?P<rep> last_tile_dim_replicate)?\}$"
)


def decode_hlo_text(text: str, shape, num_devices: int) -> dict[int, tuple]:
    """Our own reading of an HloSharding string (replicated, iota or explicit)."""
    if text == "{replicated}":
        return index_map_from_tiles(None, False, shape, num_devices)
    m = _TILED.match(text)
    assert m, f"unexpected sharding text {text!r}"
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    tiles = ints(m["tiles"])
    if m["list"] is not None:
        grid = np.array(ints(m["list"])).reshape(tiles)
    else:
        reshape = ints(m["reshape"])
        perm = ints(m["perm"]) if m["perm"] else list(range(len(reshape)))
        grid = np.arange(math.prod(reshape)).reshape(reshape).transpose(perm).reshape(tiles)
    return index_map_from_tiles(grid, m["rep"] is not None, shape, num_devices)


def decode_xla(sharding, shape, num_devices: int) -> dict[int, tuple]:
    """Reading of an `xla_client.HloSharding` object through its accessors."""
    if sharding.is_replicated():
        return index_map_from_tiles(None, False, shape, num_devices)
    assert sharding.is_tiled() and not sharding.subgroup_types(), sharding
    grid = np.array(sharding.tile_assignment_devices()).reshape(sharding.tile_assignment_dimensions())
    return index_map_from_tiles(grid, sharding.replicate_on_last_tile_dim(), shape, num_devices)


def mtfc_runtime_map(layout) -> dict[int, tuple]:
    """How mtfc's runtime slices host arrays for this layout."""
    return {
        d: tuple(s.indices(n)[:2] for s, n in zip(layout.shard_slices(d), layout.sizes))
        for d in range(layout.mesh.size)
    }


# ----------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_hlo_sharding_places_indices_like_jax_named_sharding(case):
    mesh_text, mesh, dims, sizes, per_dim, rules_text = case
    rules = LayoutRules.parse(rules_text)
    rules.validate(mesh)
    layout = tensor_layout(dims, sizes, rules, mesh)
    assert [list(a) for a in layout.axes] == per_dim
    text = hlo_sharding(layout)
    named = jax_named_sharding(mesh, per_dim)
    expected = jax_index_map(named, sizes)

    note = f"mesh {mesh_text!r} layout {rules_text!r} dims {dims} sizes {sizes}: {text}"
    assert decode_hlo_text(text, sizes, mesh.size) == expected, note
    parsed = xc.HloSharding.from_string(text)
    assert decode_xla(parsed, sizes, mesh.size) == expected, note
    assert decode_xla(named._to_xla_hlo_sharding(len(dims)), sizes, mesh.size) == expected, note
    assert mtfc_runtime_map(layout) == expected, note


@settings(max_examples=60, deadline=None)
@given(layouts(ndim=2), st.data())
def test_impossible_layouts_are_errors_never_replication(case, data):
    mesh_text, mesh, dims, sizes, per_dim, rules_text = case
    split = [i for i, axes in enumerate(per_dim) if math.prod(mesh.axis_size(a) for a in axes) > 1]
    if split:  # a size not divisible by its axes' product
        i = data.draw(st.sampled_from(split))
        bad = list(sizes)
        bad[i] = sizes[i] - 1 if sizes[i] > 2 else sizes[i] + 1
        factor = math.prod(mesh.axis_size(a) for a in per_dim[i])
        if bad[i] % factor:
            with pytest.raises(MtfcError, match=f"dim 'd{i}' of size {bad[i]} is not divisible"):
                tensor_layout(dims, bad, LayoutRules.parse(rules_text), mesh)
    # both dims on one axis
    axis = data.draw(st.sampled_from(mesh.names))
    with pytest.raises(MtfcError, match=f"mesh axis '{axis}' is used by both dim 'd0' and dim 'd1'"):
        tensor_layout(dims, [mesh.size, mesh.size], LayoutRules.parse(f"d0:{axis},d1:{axis}"), mesh)


@pytest.mark.parametrize(
    "mesh, rules, dims, expected",
    [
        ("rows:2,cols:4", "batch:rows", ["batch", "d"], "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"),
        ("rows:2,cols:4", "a:cols,b:rows", ["a", "b"], "{devices=[4,2]<=[2,4]T(1,0)}"),
        ("rows:2,cols:4", "batch:cols+rows", ["batch", "d"], "{devices=[8,1]<=[2,4]T(1,0)}"),
        ("rows:2,cols:4", "batch:rows+cols", ["batch", "d"], "{devices=[8,1]<=[8]}"),
        ("rows:2,cols:4", "d:cols", ["batch", "d"], "{devices=[1,4,2]<=[2,4]T(1,0) last_tile_dim_replicate}"),
        ("rows:2,cols:4", "", ["batch", "d"], "{replicated}"),
        ("x:1", "batch:x", ["batch"], "{replicated}"),
    ],
)
def test_known_strings(mesh, rules, dims, expected):
    layout = tensor_layout(dims, [8] * len(dims), LayoutRules.parse(rules), Mesh.parse(mesh))
    assert hlo_sharding(layout) == expected


# ----------------------------------------------------------------- end to end


def _device_shards(array: jax.Array) -> dict[int, np.ndarray]:
    position = {d: i for i, d in enumerate(DEVICES)}
    return {position[s.device]: np.asarray(s.data) for s in array.addressable_shards}


@settings(max_examples=25, deadline=None)
@given(layouts(ndim=3, max_multiple=2))
def test_compiled_module_shards_like_jax_device_put(case):
    """x [d0, d1, d2] -> y = 2x + 1 (same dims) and s = sum over d2: the runtime's
    per-device input shards and the executable's per-device output shards equal
    what `jax.device_put` places with the equivalent NamedSharding."""
    mesh_text, mesh, dims, sizes, per_dim, rules_text = case
    D0, D1, D2 = (mtf.Dim(n, s) for n, s in zip(dims, sizes))

    def model(x):
        return {"y": x * 2.0 + 1.0, "s": mtf.reduce_sum(x, reduced_dim=D2)}

    # The case may carry a rule for a dim the tensor lacks (`other`): allowed explicitly.
    module = compile_function(model, {"x": mtf.Input([D0, D1, D2])}, mesh=mesh_text, layout=rules_text,
                              allow_unused_rules=True)
    program = Program(module)
    assert [a.name for a in program.arguments] == ["x"]
    assert [r.name for r in program.results] == ["y", "s"]
    assert list(program.devices) == DEVICES[: mesh.size]

    x = np.random.default_rng(sum(sizes)).standard_normal(sizes).astype(np.float32)
    named_x = jax_named_sharding(mesh, per_dim)
    named_s = jax_named_sharding(mesh, per_dim[:2])
    placed = _device_shards(jax.device_put(x, named_x))
    assert len(placed) == mesh.size

    # The runtime cuts host arrays as jax places them.
    ours = _device_shards(shard_to_devices(x, program.arg_layouts[0], program.devices))
    assert ours.keys() == placed.keys()
    for d in placed:
        np.testing.assert_array_equal(ours[d], placed[d], err_msg=f"input shard on device {d}")

    # The executable, fed jax's placement, returns shards jax would place.
    outputs = program.executable.execute_sharded([jax.device_put(x, named_x)])
    y_shards, s_shards = outputs.disassemble_into_single_device_arrays()
    want_y = _device_shards(jax.device_put(2.0 * x + 1.0, named_x))
    want_s = _device_shards(jax.device_put(x.sum(axis=2), named_s))
    for d in range(mesh.size):
        got_y, got_s = np.asarray(y_shards[d]), np.asarray(s_shards[d])
        assert y_shards[d].devices() == {DEVICES[d]}
        np.testing.assert_array_equal(got_y, want_y[d], err_msg=f"y on device {d}")
        np.testing.assert_allclose(got_s, want_s[d], rtol=1e-5, atol=1e-5, err_msg=f"s on device {d}")
