"""Analyses and post-partition passes on loops (docs/IR.md "Loops"): a
collective in a loop body counts once per trip (`comm_analysis`,
`process_analysis`, `mtfc inspect`), `fuse-collectives` fuses inside a body
without crossing its boundary (results checked against the unsharded run and
NumPy), the memory liveness handles a while and bounds the straight-line
figure of one trip, and `layout_cost.predict` predicts a global loop module's
collectives, checked against hand-computed expectations.

The per-device inputs are written by hand (until the explicit partitioner
partitions loops): lit_tests/fuse-collectives/in-loop-body.mlir, a 3-layer
residual MLP partitioned on rows:2,cols:4 with batch:rows,d_ff:cols, its
global program beside it, and `NESTED` below, collectives only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close
from mtfc import ir as mir
from mtfc.mesh import Mesh
from mtfc.passes import comm_analysis, layout_cost, memory_analysis, process_analysis
from mtfc.passes.manager import run_passes
from mtfc.runtime.execute import Program
from mtfc.tools import report as report_tool

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "lit_tests" / "fuse-collectives" / "in-loop-body.mlir"
CONTRACT = Path("/work/contract/loop-mlp.mlir")

_SUM = """({
      ^bb0(%lhs: tensor<f32>, %rhs: tensor<f32>):
        %s = stablehlo.add %lhs, %rhs : tensor<f32>
        stablehlo.return %s : tensor<f32>
      })"""

# Collectives only: one all_reduce before an outer loop of 3 trips whose body
# gathers, permutes and reduce-scatters over `cols`, around an inner loop of
# 2 trips that all_reduces over `rows`.
NESTED = f"""
module @nested attributes {{mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"}} {{
  func.func @main(%arg0: tensor<4x8xf32> {{mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}}) -> (tensor<4x8xf32> {{mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}}) {{
    %pre = "stablehlo.all_reduce"(%arg0) <{{replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]> : tensor<1x8xi64>}}> {_SUM} {{mtfc.dims = ["batch", "d"]}} : (tensor<4x8xf32>) -> tensor<4x8xf32>
    %c0 = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
    %r:2 = stablehlo.while(%i = %c0, %h = %pre) : tensor<i32>, tensor<4x8xf32>
      attributes {{mtfc.dims = [[], ["batch", "d"]], mtfc.classes = ["activation", "activation"], mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}}
    cond {{
      %n = stablehlo.constant {{mtfc.dims = []}} dense<3> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {{mtfc.dims = []}} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    }} do {{
      %g = "stablehlo.all_gather"(%h) <{{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}}> {{mtfc.dims = ["batch", "d"]}} : (tensor<4x8xf32>) -> tensor<4x32xf32>
      %p = "stablehlo.collective_permute"(%h) <{{source_target_pairs = dense<[[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4]]> : tensor<8x2xi64>}}> {{mtfc.dims = ["batch", "d"]}} : (tensor<4x8xf32>) -> tensor<4x8xf32>
      %rs = "stablehlo.reduce_scatter"(%g) <{{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, scatter_dimension = 1 : i64}}> {_SUM} {{mtfc.dims = ["batch", "d"]}} : (tensor<4x32xf32>) -> tensor<4x8xf32>
      %z = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
      %w:2 = stablehlo.while(%j = %z, %q = %p) : tensor<i32>, tensor<4x8xf32>
        attributes {{mtfc.dims = [[], ["batch", "d"]], mtfc.classes = ["activation", "activation"], mtfc.loop_dim = "heads", mtfc.trip_count = 2 : i64}}
      cond {{
        %m = stablehlo.constant {{mtfc.dims = []}} dense<2> : tensor<i32>
        %lt2 = stablehlo.compare LT, %j, %m {{mtfc.dims = []}} : (tensor<i32>, tensor<i32>) -> tensor<i1>
        stablehlo.return %lt2 : tensor<i1>
      }} do {{
        %ar = "stablehlo.all_reduce"(%q) <{{replica_groups = dense<[[0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>}}> {_SUM} {{mtfc.dims = ["batch", "d"]}} : (tensor<4x8xf32>) -> tensor<4x8xf32>
        %one2 = stablehlo.constant {{mtfc.dims = []}} dense<1> : tensor<i32>
        %j2 = stablehlo.add %j, %one2 {{mtfc.dims = []}} : tensor<i32>
        stablehlo.return %j2, %ar : tensor<i32>, tensor<4x8xf32>
      }}
      %h2 = stablehlo.add %rs, %w#1 {{mtfc.dims = ["batch", "d"]}} : tensor<4x8xf32>
      %one = stablehlo.constant {{mtfc.dims = []}} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {{mtfc.dims = []}} : tensor<i32>
      stablehlo.return %i2, %h2 : tensor<i32>, tensor<4x8xf32>
    }}
    return %r#1 : tensor<4x8xf32>
  }}
}}
"""


def _parse(text: str):
    return mir.parse_module(text, mir.new_context())


# ------------------------------------------------------------ comm_analysis


def test_nested_loop_collectives_count_once_per_trip():
    """Records keep one execution's S and bus bytes, with trips = the product
    of the enclosing trip counts; the totals multiply by it (hand-computed)."""
    module = _parse(NESTED)
    found = comm_analysis.module_collectives(module)
    assert [(c.kind, c.axes, c.n, c.bytes, c.bus_bytes, c.trips) for c in found] == [
        ("all_reduce", ["rows", "cols"], 8, 128, 224.0, 1),       # 4x8 f32, 2*7/8*S
        ("all_gather", ["cols"], 4, 512, 384.0, 3),               # the gathered 4x32 f32, 3/4*S
        ("collective_permute", ["cols"], 4, 128, 128.0, 3),
        ("reduce_scatter", ["cols"], 4, 512, 384.0, 3),
        ("all_reduce", ["rows"], 2, 128, 128.0, 6),               # 3 outer x 2 inner trips
    ]
    summary = comm_analysis.summarize(found)
    assert summary["total"] == {"count": 16, "bytes": 4352, "bus_bytes": 3680}
    assert summary["by_kind"]["all_reduce"] == {"count": 7, "bytes": 896, "bus_bytes": 992}
    assert summary["by_kind"]["all_gather"] == {"count": 3, "bytes": 1536, "bus_bytes": 1152}


def test_process_totals_count_loop_collectives_per_trip():
    """With 2 processes (rows spans them) only the all_reduces over rows cross:
    the inner loop's once per trip (6 x: 128 B from the busiest device, 2 x
    128 B per group, 4 groups), the one before the loops once (224, 2 x 224)."""
    module = _parse(NESTED)
    with module.context:
        mesh = mir.module_mesh(module)
    found = comm_analysis.module_collectives(module)
    placed = process_analysis.process_report(found, mesh, 2, "explicit")
    assert placed["total"] == {"count": 16, "crossing": 7, "unknown": 0,
                               "bytes_per_device": 6 * 128 + 224, "bytes_total": 6 * 1024 + 448}
    assert placed["by_axes"]["rows"] == {"count": 6, "crossing": 6, "bytes_per_device": 768, "bytes_total": 6144}
    assert placed["by_axes"]["cols"]["crossing"] == 0


def test_inspect_counts_the_loop_body_per_trip():
    """`mtfc inspect` of the per-device MLP: 1 all_reduce before the loop
    (4x16 f32), 2 in the body x 3 trips (4x16 and 4 f32), 1 after (4 f32)."""
    module = _parse(MLP.read_text())
    report = report_tool.inspect_module(module, xla=False)
    ops = report["collectives"]["ops"]
    assert [(op["kind"], op["bytes"], op["trips"]) for op in ops] == [
        ("all_reduce", 256, 1), ("all_reduce", 256, 3), ("all_reduce", 16, 3), ("all_reduce", 16, 1)]
    assert report["collectives"]["total"] == {"count": 8, "bytes": 256 + 3 * 256 + 3 * 16 + 16,
                                              "bus_bytes": 1.5 * 1088}
    text = report_tool.render_text(report)
    rows = [line for line in text.splitlines() if line[:1].isdigit() and "all_reduce" in line]
    assert [("in loop (×3)" in r, "  once  " in r) for r in rows] == [(False, True), (True, False),
                                                                      (True, False), (False, True)]


# ------------------------------------------------------ fuse-collectives


def _run(module) -> tuple[dict, dict, dict]:
    program = Program(module)
    data = program.synthesize_inputs(0)
    return program.run(data).outputs, Program(module, unsharded=True).run(data).outputs, data


def _mlp_reference(data) -> np.ndarray:
    """NumPy float64: h = x.wp; 3 x (h += tanh(h.wi).wo + sum_dff tanh(h.wi)); y = sum_dff tanh(h.wout)."""
    x = data["x"].astype(np.float64)
    h = x @ data["params/in/w"].astype(np.float64)
    for layer in range(3):
        t = np.tanh(h @ data["params/blocks/wi"][layer].astype(np.float64))
        h = h + t @ data["params/blocks/wo"][layer].astype(np.float64) + t.sum(axis=1, keepdims=True)
    return np.tanh(h @ data["params/out/w"].astype(np.float64)).sum(axis=1)


def test_fuse_in_loop_body_keeps_results_and_merges_per_trip():
    """Fusion merges the body's two all_reduces into one variadic op (5
    collective executions per step instead of 8, the same bytes) and leaves
    the results equal to the unfused program's, the unsharded run's and NumPy's."""
    unfused = _parse(MLP.read_text())
    fused = _parse(MLP.read_text())
    run_passes(fused, ["fuse-collectives"])
    found = comm_analysis.module_collectives(fused)
    assert [(c.kind, c.bytes, c.trips) for c in found] == [
        ("all_reduce", 256, 1), ("all_reduce", 256 + 16, 3), ("all_reduce", 16, 1)]
    assert comm_analysis.summarize(found)["total"]["count"] == 5
    out_fused, out_unsharded, data = _run(fused)
    out_unfused, _, _ = _run(unfused)
    want = _mlp_reference(data)
    assert_close(out_fused["y"], want)
    assert_close(out_unfused["y"], want)
    assert_close(out_unsharded["y"], want)
    assert_close(out_fused["y"], out_unfused["y"])


# ----------------------------------------------------------------- memory


# One trip of the MLP's body as straight-line code (layer 0), with the same
# values before and after: the loop's figure must not be below it.
STRAIGHT = MLP.read_text().split("  module @mtfc.reference")[0]


def _straight_line() -> str:
    head, rest = STRAIGHT.split("    %c0 = stablehlo.constant", 1)
    body = rest.split("} do {\n", 1)[1].split("      stablehlo.return %i2", 1)[0]
    tail = rest.split("    %e = stablehlo.dot_general", 1)[1]
    body = body.replace("%a,", "%arg2,").replace("%b,", "%arg3,").replace("%h,", "%1,").replace("%i,", "%z,")
    body = body.replace("%i2 = stablehlo.add %z, %one {mtfc.dims = []} : tensor<i32>\n", "")
    return head + body + "    %e = stablehlo.dot_general" + tail.replace("%r#1", "%h2", 1) + "}\n"


def test_memory_of_a_loop_bounds_one_straight_line_trip():
    loop = memory_analysis.liveness(_parse(MLP.read_text()))
    straight = memory_analysis.liveness(_parse(_straight_line()))
    assert straight.peak_bytes > 0 and loop.peak_op == "stablehlo.while"
    assert loop.peak_bytes >= straight.peak_bytes
    # by hand: at the loop, @main's live values are the all_reduce's 4x16 f32
    # (256, the loop's operand), the counter's init (4) and the loop's state
    # (its results: counter 4, h 256; the stacked weights come back unchanged,
    # so they are the parameters' buffers: 0); in the body, at b2's reshape,
    # a2, b1 and b2 (3 x 512 bytes) are live
    assert (loop.peak_bytes, loop.peak_loop_bytes) == (256 + 4 + 4 + 256 + 1536, 1536)
    assert [(v.op, v.bytes) for v in loop.live_at_peak] == [
        ("stablehlo.all_reduce", 256), ("stablehlo.while", 256), ("stablehlo.constant", 4), ("stablehlo.while", 4)]


# ------------------------------------------------------------ layout cost


def _contract(layout: str, param_layout: str | None = None, x_role: str = "input"):
    text = CONTRACT.read_text().replace('mtfc.layout = "batch:rows,d_ff:cols"', f'mtfc.layout = "{layout}"')
    if param_layout is not None:
        text = text.replace("mtfc.mesh =", f'mtfc.param_layout = "{param_layout}", mtfc.mesh =')
    text = text.replace('mtfc.name = "x", mtfc.role = "input"', f'mtfc.name = "x", mtfc.role = "{x_role}"')
    return _parse(text)


def _size1_lead_gathers() -> bool:
    """Whether `partition.local.reshape_plan` gathers a split dim behind a
    leading size-1 dim (one layer's weight sliced from its stack, [1, d_ff,
    d_model] -> [d_ff, d_model], d_ff split): main's did, the explicit loops
    branch's keeps the split.  The prediction follows the partitioner's
    reshape rule either way; the expectations below say what each gives."""
    from mtfc.passes.partition.local import reshape_plan

    target, _ = reshape_plan([1, 32, 16], [32, 16], [("cols",), ()], lambda axes: 4 if axes else 1)
    return target[1] != ("cols",)


def _slice_gather(axes) -> list:
    """The per-trip gather of the second weight's slice (32 x 16 f32) where `reshape_plan` makes one."""
    return [("all_gather", axes, 2048, 3)] if _size1_lead_gathers() else []


@pytest.mark.parametrize("layout, expected", [
    # batch/2 x d_model f32 = 4 x 16 x 4 B summed over d_ff per trip
    ("batch:rows,d_ff:cols", lambda: _slice_gather(["cols"]) + [("all_reduce", ["cols"], 256, 3)]),
    # d_ff over all 8 devices: the whole 8 x 16 f32 summed per trip
    ("d_ff:rows+cols", lambda: _slice_gather(["rows", "cols"]) + [("all_reduce", ["rows", "cols"], 512, 3)]),
    # data parallel only: nothing to communicate
    ("batch:rows+cols", lambda: []),
])
def test_layout_cost_of_the_contract_loop(layout, expected):
    expected = expected()
    prediction = layout_cost.predict(_contract(layout))
    assert [(c.kind, c.axes, c.bytes, c.trips) for c in prediction.collectives] == expected
    assert prediction.summary()["total"]["count"] == sum(e[3] for e in expected)
    assert prediction.summary()["total"]["bytes"] == sum(e[2] * e[3] for e in expected)
    assert all(line.endswith(", in loop (×3)") for line in prediction.lines())


def test_layout_cost_reshards_a_returned_value_per_trip():
    """Parameters replicated (empty parameter rules), activations
    d_ff:cols: the body's `a + a` is an activation, split over cols, returned
    into the replicated carried parameter -- one all_gather of its
    3 x 16 x 32 f32 per trip, at the body's return."""
    text = CONTRACT.read_text().replace('mtfc.layout = "batch:rows,d_ff:cols"',
                                        'mtfc.layout = "d_ff:cols", mtfc.param_layout = ""')
    text = text.replace("      stablehlo.return %i2, %h2, %a, %b",
                        '      %a3 = stablehlo.add %a, %a {mtfc.dims = ["layers", "d_model", "d_ff"]} : tensor<3x16x32xf32>\n'
                        "      stablehlo.return %i2, %h2, %a3, %b")
    prediction = layout_cost.predict(_parse(text))
    assert [(c.kind, c.axes, c.bytes, c.trips, c.op) for c in prediction.collectives] == [
        (*g, "stablehlo.reshape") for g in _slice_gather(["cols"])  # b's slice, as above
    ] + [
        ("all_reduce", ["cols"], 512, 3, "stablehlo.dot_general"),   # 8 x 16 f32 summed over d_ff
        ("all_gather", ["cols"], 6144, 3, "stablehlo.return"),       # a + a back to the carried layout
    ]


def test_layout_cost_reshards_a_carried_value_once_at_entry():
    """x as a parameter is laid out by the parameter rules (batch:cols) but
    carried as an activation (batch:rows): one all_gather of x's 2 x 16 f32
    blocks over cols at the loop's entry, not per trip."""
    prediction = layout_cost.predict(_contract("batch:rows", "batch:cols", x_role="parameter"))
    assert [(c.kind, c.axes, c.bytes, c.trips, c.op) for c in prediction.collectives] == [
        ("all_gather", ["cols"], 512, 1, "stablehlo.while")]


def test_layout_cost_matches_the_hand_partitioned_mlp():
    """The prediction from the MLP's global program equals, record by record,
    the collectives of the hand-partitioned program (with the same b2 gather:
    the hand-written program slices its weights locally)."""
    module = _parse(MLP.read_text())
    with module.context:
        glob = mir.reference_module(module)
    prediction = layout_cost.predict(glob)
    got = [(c.kind, c.axes, c.bytes, c.trips) for c in prediction.collectives if c.kind == "all_reduce"]
    measured = [(c.kind, c.axes, c.bytes, c.trips) for c in comm_analysis.module_collectives(module)]
    assert got == measured


# ---------------------------------------------------------------- XLA's HLO


def test_hlo_collectives_count_xla_loops_per_trip():
    """The HLO reader (gspmd modules) multiplies by XLA's known trip counts:
    a psum over cols in a 3-trip fori_loop runs 3 times, a psum over rows in a
    2-trip loop inside it 6 times."""
    import inspect

    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh as JaxMesh, PartitionSpec as P

    try:
        from jax import shard_map
    except ImportError:  # older JAX
        from jax.experimental.shard_map import shard_map
    check = {"check_vma": False} if "check_vma" in inspect.signature(shard_map).parameters else {"check_rep": False}
    mesh = JaxMesh(np.array(jax.devices()[:8]).reshape(2, 4), ("rows", "cols"))

    def f(x, w):
        def layer(i, h):
            h = jax.lax.psum(h @ w[i], "cols")
            return jax.lax.fori_loop(0, 2, lambda j, g: jax.lax.psum(g, "rows"), h)
        return jax.lax.fori_loop(0, 3, layer, x)

    g = shard_map(f, mesh=mesh, in_specs=(P("rows", "cols"), P(None, "cols", None)), out_specs=P("rows", "cols"),
                  **check)
    text = jax.jit(g).lower(jnp.ones((8, 16)), jnp.ones((3, 16, 4))).compile().as_text()
    found = comm_analysis.hlo_collectives(text, Mesh.parse("rows:2,cols:4"))
    assert sorted((c.kind, tuple(c.axes), c.bytes, c.trips) for c in found) == [
        ("all_reduce", ("cols",), 64, 3), ("all_reduce", ("rows",), 64, 6)]
    assert comm_analysis.summarize(found)["total"] == {"count": 9, "bytes": 9 * 64, "bus_bytes": 3 * 96 + 6 * 64}


def test_hlo_while_without_known_trip_count_counts_once():
    from mtfc.passes import hlo_text

    text = """HloModule m
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  %x = f32[4] get-tuple-element(%p), index=1
  %ar = f32[4] all-reduce(%x), replica_groups={{0,1}}, to_apply=%sum
  ROOT %t = (s32[], f32[4]) tuple(%i, %ar)
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%init), condition=%cond, body=%body
  %w2 = (s32[], f32[4]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %r = f32[4] all-reduce(%a), replica_groups={{0,1}}, to_apply=%sum
}
"""
    trips = hlo_text.instruction_trips(text)
    # the body is called by both loops, one of unknown trip count: its count is unknown (None in
    # hlo_text.execution_counts), and the instruction counts once -- never a guess
    assert hlo_text.execution_counts(text)["body"] is None
    assert trips["ar"] == 1
    assert trips["r"] == 1 and trips["w2"] == 1


# ------------------------------------------- the frontend's loops (mtf.layers.repeat)


def _repeat_mlp(unroll: bool):
    import mtfc as mtf

    d_model, d_ff = mtf.Dim("d_model", 16), mtf.Dim("d_ff", 32)

    def block(x):
        h = mtf.layers.dense(mtf.layers.layer_norm(x, d_model), d_ff, [d_model], activation=mtf.tanh, name="wi")
        return x + mtf.layers.dense(h, d_model, [d_ff], name="wo")

    def model(x, t):
        y = mtf.layers.repeat(block, x, 3, unroll=unroll)
        return {"y": y, "loss": mtf.reduce_mean(mtf.square(y - t))}

    return model


@pytest.mark.parametrize("layout, param_layout", [("batch:rows+cols", None), ("batch:rows,d_ff:cols", None),
                                                  ("batch:rows+cols", "d_model:rows+cols")])
def test_layout_cost_of_a_scan_equals_the_partitioned_unrolled_model(layout, param_layout):
    """`mtf.layers.repeat` lowered to one loop: its prediction (each body
    record x 3 trips) equals, kind by kind in count and bytes, what the
    explicit partitioner emits for the same model unrolled (`unroll=True`:
    the same stacked parameters, sliced per trip in straight-line code)."""
    import mtfc as mtf
    from mtfc.compiler import compile_function

    inputs = {"x": mtf.Input([mtf.Dim("batch", 8), mtf.Dim("d_model", 16)]),
              "t": mtf.Input([mtf.Dim("batch", 8), mtf.Dim("d_model", 16)])}
    kw = dict(mesh="rows:2,cols:4", mode="none", layout=layout, param_layout=param_layout)
    scanned = compile_function(_repeat_mlp(False), inputs, **kw)
    unrolled = compile_function(_repeat_mlp(True), inputs, **kw)
    assert any(op.name == "stablehlo.while" for op in mir.body_ops(mir.entry_function(scanned)))
    prediction = layout_cost.predict(scanned)
    run_passes(unrolled, ["partition"])
    measured = comm_analysis.module_collectives(unrolled)
    assert prediction.summary() == comm_analysis.summarize(measured)
    once = [c for c in prediction.collectives if c.trips == 1]
    in_loop = [c for c in prediction.collectives if c.trips != 1]
    assert [(c.kind, c.op) for c in once] == [("all_reduce", "stablehlo.reduce")]  # the loss's mean over batch
    assert all(c.trips == 3 for c in in_loop) and len(in_loop) * 3 + 1 == len(measured)
    # memory: the loop's figure bounds the unrolled forward's (whose values
    # of one trip are dead when the next begins), and the peak is in the loop
    loop, straight = memory_analysis.liveness(scanned), memory_analysis.liveness(
        compile_function(_repeat_mlp(True), inputs, **kw))
    assert loop.peak_bytes >= straight.peak_bytes > 0 and loop.peak_loop_bytes > 0
