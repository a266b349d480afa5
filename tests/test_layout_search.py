"""The layout search (`mtfc layout`, `mtfc compile --layout auto`,
mtfc/layout/): it finds the layout where the answer is known -- data
parallel when parameters are tiny, Megatron-style (d_ff split; heads and
d_ff sharing one mesh axis in a transformer block) when activations are
small against the weights, FSDP when the memory budget
forbids replicated parameters, an error when nothing fits -- its cost
model's parts agree with independent counts, and bad input is one line.

The cost model's collectives are `layout_cost.predict`'s, which
tests/test_layout_cost.py (`test_prediction_equals_the_partitioned_program`)
checks record by record against the explicit partitioner's output; here the
features summed from them are checked against the partitioned program's
own collectives once more (`test_features_equal_the_partitioned_programs`).
No test asserts a time."""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_file
from mtfc.errors import MtfcError
from mtfc.layout import space
from mtfc.layout.cost import layouts_of, module_table, op_flops, per_device_flops, peak_memory
from mtfc.layout.network import PRESETS
from mtfc.layout.report import parse_size
from mtfc.layout.search import EXHAUSTIVE_LIMIT, best, evaluate, search_result
from mtfc.mesh import LayoutRules, Mesh, tensor_layout
from mtfc.passes import comm_analysis, memory_analysis, run_passes

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

MODEL = '''
import mtfc as mtf

batch = mtf.Dim("batch", {batch})
d_model = mtf.Dim("d_model", {d_model})
d_ff = mtf.Dim("d_ff", {d_ff})


@mtf.entry(inputs={{"x": mtf.Input([batch, d_model]), "y": mtf.Input([batch, d_model])}},
           mesh="{mesh}", layout="", optimizer="adamw:lr=1e-3")
def mlp(x, y):
    h = mtf.layers.dense(x, d_ff, name="fc1", activation=mtf.gelu)
    out = mtf.layers.dense(h, d_model, [d_ff], name="fc2")
    err = out - y
    return {{"loss": mtf.reduce_mean(err * err)}}
'''

BLOCK = '''
import mtfc as mtf

batch = mtf.Dim("batch", 2)
length = mtf.Dim("length", 8)
d_model = mtf.Dim("d_model", 256)
heads = mtf.Dim("heads", 8)
d_kv = mtf.Dim("d_kv", 64)
d_ff = mtf.Dim("d_ff", 1024)


@mtf.entry(inputs={"x": mtf.Input([batch, length, d_model]), "y": mtf.Input([batch, length, d_model])},
           mesh="model:4", layout="", optimizer="adamw:lr=1e-3")
def block(x, y):
    h = x + mtf.layers.attention(x, io_dim=d_model, heads_dim=heads, kv_dim=d_kv, length_dim=length, causal=True)
    out = h + mtf.layers.feed_forward(h, io_dim=d_model, hidden_dim=d_ff, activation=mtf.gelu)
    err = out - y
    return {"loss": mtf.reduce_mean(err * err)}
'''

DOT = '''
import mtfc as mtf

batch = mtf.Dim("batch", 16)
d_in = mtf.Dim("d_in", 24)
d_out = mtf.Dim("d_out", 40)


@mtf.entry(inputs={"x": mtf.Input([batch, d_in]), "w": mtf.Input([d_in, d_out])}, mesh="rows:2,cols:4", layout="")
def dot(x, w):
    return {"y": mtf.einsum([x, w], mtf.Shape([batch, d_out]))}
'''


def model_file(tmp_path, *, batch, d_model, d_ff, mesh, name="model.py"):
    path = tmp_path / name
    path.write_text(MODEL.format(batch=batch, d_model=d_model, d_ff=d_ff, mesh=mesh))
    return str(path)


def global_module(path, *, train=False, mesh=None, layout="", param_layout=""):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_file(path, mesh=mesh, layout=layout, param_layout=param_layout, mode="none", train=train)


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


# ------------------------------------------------------------ known answers


def test_data_parallel_when_parameters_are_tiny(tmp_path):
    path = model_file(tmp_path, batch=65536, d_model=8, d_ff=16, mesh="rows:2,cols:4")
    for train in (False, True):
        module = global_module(path, train=train)
        winner, result = best(module, Mesh.parse("rows:2,cols:4"), network=PRESETS["cpu"])
        assert (winner.rules, winner.param_rules) == ("batch:rows+cols", ""), (train, winner)
        assert result.method == "exhaustive" and result.searched == len(result.candidates) + sum(
            result.invalid.values())
        # ranked: fitting first (all fit without a budget), then by predicted time
        assert [c.total_s for c in result.candidates] == sorted(c.total_s for c in result.candidates)


def test_megatron_when_activations_are_small_against_the_weights(tmp_path):
    path = model_file(tmp_path, batch=8, d_model=256, d_ff=2048, mesh="model:4")
    module = global_module(path, train=True)
    winner, result = best(module, Mesh.parse("model:4"), network=PRESETS["cpu"])
    assert (winner.rules, winner.param_rules) == ("d_ff:model", "")
    dp = [c for c in result.candidates if (c.rules, c.param_rules) == ("batch:model", "")][0]
    # why: data parallelism all-reduces the weights' gradients, Megatron only [batch, d_model] activations
    assert dp.features.axis_bytes["model"] > 50 * winner.features.axis_bytes["model"]
    assert any(c["kind"] == "all_reduce" and c["dims"] == ["d_ff"] for c in winner.collectives)


def test_megatron_shares_the_model_axis_between_heads_and_d_ff(tmp_path):
    # a transformer block with tiny activations (2 x 8 tokens) against its weights: Megatron's layout splits
    # the attention heads AND the feed-forward hidden dim over the one model axis -- dims that never meet in
    # one tensor, so they may share it
    path = tmp_path / "block.py"
    path.write_text(BLOCK)
    mesh = Mesh.parse("model:4")
    for train in (False, True):
        module = global_module(str(path), train=train)
        winner, result = best(module, mesh, network=PRESETS["cpu"])
        assert (winner.rules, winner.param_rules) == ("heads:model,d_ff:model", ""), (train, winner.rules)
        by_rules = {(c.rules, c.param_rules): c for c in result.candidates}
        # each half alone leaves the other half's weights replicated: more compute and memory per device
        for half in ("heads:model", "d_ff:model"):
            c = by_rules[(half, "")]
            assert c.total_s > winner.total_s and c.peak_bytes > winner.peak_bytes, (train, half)


def test_fsdp_when_the_budget_forbids_replicated_parameters(tmp_path):
    path = model_file(tmp_path, batch=4096, d_model=64, d_ff=256, mesh="data:4")
    module = global_module(path, train=True)
    mesh = Mesh.parse("data:4")
    free, _ = best(module, mesh, network=PRESETS["cpu"])
    assert (free.rules, free.param_rules) == ("batch:data", "")  # unconstrained: data parallel
    fsdp = [evaluate(module, mesh, "batch:data", p, network=PRESETS["cpu"]) for p in ("d_model:data", "d_ff:data")]
    smallest_fsdp = min(c.peak_bytes for c in fsdp)
    assert smallest_fsdp < free.peak_bytes
    budget = (smallest_fsdp + free.peak_bytes) // 2  # FSDP fits, replicated parameters do not
    winner, result = best(module, mesh, network=PRESETS["cpu"], memory_budget=budget)
    assert winner.fits and winner.peak_bytes <= budget
    assert (winner.rules, winner.param_rules) in [("batch:data", "d_model:data"), ("batch:data", "d_ff:data")]
    assert not [c for c in result.candidates if (c.rules, c.param_rules) == ("batch:data", "")][0].fits
    # the stored state is what shrank (parameters and Adam's moments per device), not the activations
    assert winner.argument_bytes < free.argument_bytes and winner.activation_bytes == free.activation_bytes


def test_nothing_fits_is_one_line(tmp_path):
    path = model_file(tmp_path, batch=64, d_model=32, d_ff=64, mesh="rows:2,cols:4")
    module = global_module(path, train=True)
    with pytest.raises(MtfcError, match=r"^no layout fits the memory budget of 1\.0 KiB per device") as e:
        best(module, Mesh.parse("rows:2,cols:4"), network=PRESETS["cpu"], memory_budget=1024)
    assert "\n" not in str(e.value)
    out = tmp_path / "o.mlir"
    for command in (["layout", path], ["compile", path, "--layout", "auto", "-o", out]):
        result = run_cli(*command, "--train", "--memory-per-device", "1KiB")
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert result.output.startswith("error: no layout fits") and "Traceback" not in result.output
    assert not out.exists()


# -------------------------------------------------- the cost model's parts


def test_dot_flops_equal_the_formula(tmp_path):
    path = tmp_path / "dot.py"
    path.write_text(DOT)
    module = global_module(str(path))
    (dot,) = [op for op in mir.walk_ops(mir.entry_function(module)) if op.name == "stablehlo.dot_general"]
    B, I, O = 16, 24, 40
    assert op_flops(dot) == 2 * B * I * O
    table = module_table(module)
    mesh = Mesh.parse("rows:2,cols:4")
    for rules, split in [("", 1), ("batch:rows", 2), ("batch:rows,d_out:cols", 8), ("d_in:cols", 4),
                         ("batch:rows+cols", 8), ("d_in:rows,d_out:cols", 8)]:
        assert per_device_flops(table, layouts_of(mesh, rules, "")) == 2 * B * I * O / split, rules


def test_features_equal_the_partitioned_programs(tmp_path):
    # CostFeatures from predict() against the collectives `partition` emits (tests/test_layout_cost.py
    # checks the records themselves; this checks the per-axis sums the network prices)
    path = model_file(tmp_path, batch=16, d_model=32, d_ff=64, mesh="rows:2,cols:4")
    mesh = Mesh.parse("rows:2,cols:4")
    for rules, params in [("batch:rows,d_ff:cols", ""), ("batch:rows+cols", "d_model:rows+cols")]:
        c = evaluate(global_module(path, train=True), mesh, rules, params, network=PRESETS["cpu"])
        module = global_module(path, train=True, layout=rules, param_layout=params or None)
        run_passes(module, ["partition"])
        count, nbytes = {}, {}
        for col in comm_analysis.module_collectives(module):
            for a in col.axes:
                count[a] = count.get(a, 0) + col.trips
                nbytes[a] = nbytes.get(a, 0) + col.trips * col.bus_bytes
        assert dict(c.features.axis_count) == count and dict(c.features.axis_bytes) == pytest.approx(nbytes)
        assert count  # both layouts communicate


def test_peak_memory_is_the_liveness_of_the_candidates_shapes(tmp_path):
    path = model_file(tmp_path, batch=32, d_model=32, d_ff=64, mesh="rows:2,cols:4")
    bare = global_module(path, train=True)
    table = module_table(bare)
    mesh = Mesh.parse("rows:2,cols:4")
    for rules, params in [("", ""), ("batch:rows,d_ff:cols", ""), ("batch:rows+cols", "d_model:rows+cols")]:
        laid_out = global_module(path, train=True, layout=rules, param_layout=params or None)
        own = memory_analysis.liveness(laid_out)  # the module with that layout, sized by its own attributes
        assert memory_analysis.liveness(bare, layouts=layouts_of(mesh, rules, params)).peak_bytes == own.peak_bytes
        args, activations = peak_memory(table, layouts_of(mesh, rules, params))
        assert activations == own.peak_bytes
        expected_args = 0
        layouts = layouts_of(mesh, rules, params)
        for sig in mir.arguments(laid_out):
            expected_args += math.prod(layouts.of_signature(sig).local_sizes) * 4  # every argument is f32
        assert args == expected_args


def test_splat_constants_count_one_element():
    text = """module attributes {mtfc.mesh = "rows:2", mtfc.layout = ""} {
  func.func @main(%x: tensor<64x64xf32> {mtfc.dims = ["a", "b"], mtfc.name = "x", mtfc.role = "input"})
      -> (tensor<64x64xf32> {mtfc.dims = ["a", "b"], mtfc.name = "y", mtfc.role = "output"}) {
    %c = stablehlo.constant {mtfc.dims = ["a", "b"]} dense<1.0> : tensor<64x64xf32>
    %y = stablehlo.add %x, %c {mtfc.dims = ["a", "b"]} : tensor<64x64xf32>
    return %y : tensor<64x64xf32>
  }
}
"""
    live = memory_analysis.liveness(mir.parse_module(text, mir.new_context()))
    assert live.peak_bytes == 64 * 64 * 4 + 4  # the sum, and one element of the splat


def module_values(module):
    """(dims, shape) of every argument, result and op result (loop bodies included), read from the IR."""
    from jax.extend.mlir import ir

    out = []
    with module.context:
        for sig in list(mir.arguments(module)) + list(mir.results(module)):
            out.append((tuple(sig.dims), tuple(sig.shape)))
        for op in mir.walk_ops(mir.entry_function(module)):
            dims = mir.op_result_dims(op)
            for k, r in enumerate(op.results):
                if dims is not None and k < len(dims) and isinstance(r.type, ir.RankedTensorType):
                    out.append((tuple(dims[k]), tuple(ir.RankedTensorType(r.type).shape)))
    return sorted(set(out))


def accepted_everywhere(values, mesh, text):
    """The independent validity check: `mesh.tensor_layout` lays out every value under rules `text`."""
    rules = LayoutRules.parse(text)
    try:
        for dims, shape in values:
            tensor_layout(dims, shape, rules, mesh)
    except MtfcError:
        return False
    return True


def test_space_is_exactly_the_layouts_every_value_accepts(tmp_path):
    # brute force: every dim -> subset of mesh axes (mesh order), kept iff tensor_layout accepts every value
    path = model_file(tmp_path, batch=6, d_model=8, d_ff=12, mesh="rows:2,cols:4")
    mesh = Mesh.parse("rows:2,cols:4")
    for train in (False, True):
        module = global_module(path, train=train)
        info = space.space_info(module)
        values = module_values(module)
        acts = list(space.activation_space(info, mesh))
        texts = [space.rules_text(a) for a in acts]
        assert texts[0] == "" and len(set(texts)) == len(texts)
        subsets = [(), ("rows",), ("cols",), ("rows", "cols")]
        brute = set()
        for pick in itertools.product(subsets, repeat=len(info.dims)):
            text = space.rules_text(tuple((d, ax) for d, ax in zip(info.dims, pick) if ax))
            if accepted_everywhere(values, mesh, text):
                brute.add(text)
        assert set(texts) == brute, (train, sorted(brute ^ set(texts)))
        assert "batch:cols" not in texts and "batch:rows" in texts and "d_ff:cols" in texts  # 6 % 4, 6 % 2, 12 % 4
        for p in space.param_space(info, mesh, (("batch", ("rows",)),))[1:]:
            assert "batch" not in p  # FSDP splits the parameters' own dims


def test_negligible_dims_are_never_split_and_heavy_small_dims_are(tmp_path):
    # the train step's schedule_step (a few elements, no FLOPs) is never split; batch is small
    # against the weights here (8 x 2048 against 256 x 2048) but carries every matmul's FLOPs: kept
    module = global_module(model_file(tmp_path, batch=8, d_model=256, d_ff=2048, mesh="model:4"), train=True)
    info = space.space_info(module)
    values = module_values(module)
    largest = {d: max(math.prod(shape) for dims, shape in values if d in dims)
               for d in {d for dims, _ in values for d in dims}}
    assert "schedule_step" in largest and largest["schedule_step"] * space.NEGLIGIBLE_FRACTION <= max(largest.values())
    assert info.negligible == ("schedule_step",)
    assert largest["batch"] * space.NEGLIGIBLE_FRACTION <= max(largest.values())  # small, yet not negligible
    assert "batch" in info.dims and "schedule_step" not in info.dims
    mesh = Mesh.parse("model:4")
    for a in space.activation_space(info, mesh):
        assert "schedule_step" not in dict(a)
        for p in space.param_space(info, mesh, a):
            assert "schedule_step" not in p
    assert all("schedule_step" not in dict(m) for m in space.moves(info, mesh, ()))


def test_the_transformers_space_holds_megatron_and_only_valid_layouts():
    module = global_module(str(EXAMPLES / "transformer.py"), train=True)
    mesh = Mesh.parse("rows:2,cols:4")
    info = space.space_info(module)
    values = module_values(module)
    acts = [space.rules_text(a) for a in space.activation_space(info, mesh)]
    assert "batch:rows,heads:cols,d_ff:cols" in acts  # the example's own (Megatron) layout
    shared = [t for t in acts if len([x for r in LayoutRules.parse(t).rules for x in r[1]]) >
              len({x for r in LayoutRules.parse(t).rules for x in r[1]})]
    assert len(shared) > len(acts) // 2  # most layouts share an axis: the old space lacked them
    for text in acts:  # never two dims of one value on one axis, every split divides
        assert accepted_everywhere(values, mesh, text), text
    assert not accepted_everywhere(values, mesh, "batch:cols,d_ff:cols")  # they meet in the hidden activation
    for text in acts:  # and the parameter rules: stored state under each
        for p in space.param_space(info, mesh, LayoutRules.parse(text).rules)[1:]:
            assert accepted_everywhere([v for v in values if set(v[0]) <= set(info.param_sizes)], mesh, p), (text, p)


def test_candidates_the_search_emits_partition():
    # a sample of the transformer's candidates (train step), the winner and shared-axis ones among them,
    # compile in explicit mode without error, each argument at its candidate's per-device shape
    from jax.extend.mlir import ir

    path = str(EXAMPLES / "transformer.py")
    result = search_result(global_module(path, train=True), Mesh.parse("rows:2,cols:4"), network=PRESETS["cpu"])
    ranked = result.candidates
    sample = ranked[:2] + ranked[len(ranked) // 2:len(ranked) // 2 + 1] + ranked[-1:]
    sample += [c for c in ranked if c.param_rules][:1]
    sample += [c for c in ranked if "heads:cols" in c.rules and "d_ff:cols" in c.rules][:1]
    for c in sample:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = compile_file(path, mode="explicit", layout=c.rules, param_layout=c.param_rules or None,
                                  train=True)
        assert module.operation.attributes["mtfc.partitioning"].value == "explicit"
        layouts = layouts_of(Mesh.parse("rows:2,cols:4"), c.rules, c.param_rules)
        with module.context:
            local = [tuple(ir.RankedTensorType(a.type).shape) for a in mir.entry_function(module).regions[0].blocks[0].arguments]
            assert local == [tuple(layouts.of_signature(sig).local_sizes) for sig in mir.arguments(module)], c.rules


# ------------------------------------------------------------------ the CLI


def test_layout_command_table_and_json(tmp_path):
    path = model_file(tmp_path, batch=64, d_model=16, d_ff=32, mesh="rows:2,cols:4")
    out = tmp_path / "layouts.json"
    result = run_cli("layout", path, "--mesh", "rows:2,cols:4", "--train", "--top", "3", "--json", out,
                     "--network", "nvlink", "--memory-per-device", "64MiB")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("mesh rows:2,cols:4:") and "invalid" in lines[0]
    assert lines[1] == "network nvlink; budget 64.0 MiB per device"
    assert all(len(line) <= 100 for line in lines)
    data = json.loads(out.read_text())
    assert set(data) == {"mesh", "network", "budget", "candidates", "invalid", "searched", "method", "seconds"}
    assert data["budget"] == 64 * 2 ** 20 and data["network"] == "nvlink" and len(data["candidates"]) == 3
    assert data["method"] in ("exhaustive", "beam") and data["searched"] >= 3
    first = data["candidates"][0]
    assert first["total_s"] == pytest.approx(first["compute_s"] + first["comm_s"])
    assert lines[3].split()[:2] == ["1", first["rules"] or "(replicated)"]
    keys = [(not c["fits"], c["total_s"]) for c in data["candidates"]]
    assert keys == sorted(keys)


@pytest.mark.parametrize("mode", ["explicit", "gspmd", "shardy"])
def test_compile_layout_auto_records_the_choice(tmp_path, mode):
    path = model_file(tmp_path, batch=64, d_model=16, d_ff=32, mesh="rows:2,cols:4")
    out = tmp_path / f"auto-{mode}.mlir"
    result = run_cli("compile", path, "--layout", "auto", "--mode", mode, "--train", "-o", out)
    assert result.exit_code == 0, result.output
    module = global_module(path, train=True)
    winner, search = best(module, Mesh.parse("rows:2,cols:4"), network=PRESETS["cpu"])
    report = json.loads(run_cli("inspect", out, "--json", "--no-xla").output)
    choice = report["layout_search"]
    assert (choice["rules"], choice["param_rules"]) == (winner.rules, winner.param_rules)
    assert choice["predicted_s"] == pytest.approx(winner.total_s) and choice["peak_bytes"] == winner.peak_bytes
    assert choice["network"] == "cpu" and choice["searched"] == search.searched
    assert report["layout"] == winner.rules and report["partitioning"] == mode
    text = run_cli("inspect", out, "--no-xla").output
    assert "layout search:" in text and "predicted:" in text


def test_compile_layout_auto_runs_like_the_unsharded_module_and_numpy(tmp_path):
    model = tmp_path / "dot.py"
    model.write_text(DOT)
    out = tmp_path / "auto.mlir"
    assert run_cli("compile", model, "--layout", "auto", "-o", out).exit_code == 0
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((16, 24), np.float32), rng.standard_normal((24, 40), np.float32)
    np.savez(tmp_path / "in.npz", x=x, w=w)
    result = run_cli("run", out, "--check", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], x @ w, rtol=1e-5, atol=1e-5)
    report = json.loads(run_cli("inspect", out, "--json", "--no-xla").output)
    assert report["layout_search"]["rules"] == report["layout"] != ""  # 8 devices: something is split


@pytest.mark.parametrize("args, fragment", [
    (["--memory-per-device", "12QB"], "--memory-per-device '12QB' is not a size"),
    (["--memory-per-device", "-5GB"], "--memory-per-device '-5GB' is negative"),
    (["--memory-per-device", "0"], "below one byte"),
    (["--network", "warp"], "unknown network 'warp'"),
    (["--top", "0"], "--top 0"),
])
def test_bad_options_are_one_line(tmp_path, args, fragment):
    path = model_file(tmp_path, batch=16, d_model=8, d_ff=16, mesh="rows:2,cols:4")
    result = run_cli("layout", path, *args)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ") and fragment in result.output


def test_bad_network_files_are_one_line(tmp_path):
    path = model_file(tmp_path, batch=16, d_model=8, d_ff=16, mesh="rows:2,cols:4")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")
    missing_key = tmp_path / "missing.json"
    missing_key.write_text(json.dumps({"name": "x", "flops_per_s": 1e9, "latency_s": {"*": 1e-5}}))
    for f, fragment in [(bad_json, "invalid JSON"), (missing_key, "bandwidth_Bps"),
                        (tmp_path / "absent.json", "does not exist")]:
        for command in (["layout", path], ["compile", path, "--layout", "auto", "-o", tmp_path / "o.mlir"]):
            result = run_cli(*command, "--network", f)
            assert result.exit_code == 1, result.output
            assert result.output.count("\n") == 1 and fragment in result.output and str(f) in result.output
    assert not (tmp_path / "o.mlir").exists()


def test_compile_auto_option_mistakes(tmp_path):
    path = model_file(tmp_path, batch=16, d_model=8, d_ff=16, mesh="rows:2,cols:4")
    out = tmp_path / "o.mlir"
    r = run_cli("compile", path, "--layout", "auto", "--param-layout", "d_model:rows", "-o", out)
    assert r.exit_code == 1 and "drop --param-layout" in r.output
    r = run_cli("compile", path, "--network", "cpu", "-o", out)
    assert r.exit_code == 1 and "add --layout auto" in r.output


def test_parse_size():
    assert parse_size("16GiB") == 16 * 2 ** 30 and parse_size("512MB") == 512 * 10 ** 6
    assert parse_size("1e3") == 1000 and parse_size("2 kib") == 2048 and parse_size("7") == 7


# -------------------------------------------------------------------- scale


def test_a_three_axis_mesh_uses_the_beam():
    module = global_module(str(EXAMPLES / "transformer.py"), mesh="a:4,b:4,c:4")
    mesh = Mesh.parse("a:4,b:4,c:4")
    result = search_result(module, mesh, network=PRESETS["ici"])
    exhaustive = list(space.activation_space(space.space_info(module), mesh))
    assert len(exhaustive) > EXHAUSTIVE_LIMIT and result.method == "beam"
    assert 0 < result.searched < len(exhaustive) and result.candidates
    # the beam keeps the best of what it scored, and the replicated layout is among them
    assert "" in [c.rules for c in result.candidates]
    assert result.candidates[0].total_s == min(c.total_s for c in result.candidates if c.fits)


SORT = """module attributes {mtfc.mesh = "rows:2", mtfc.layout = ""} {
  func.func @main(%x: tensor<8x4xf32> {mtfc.dims = ["a", "b"], mtfc.name = "x", mtfc.role = "input"})
      -> (tensor<8x4xf32> {mtfc.dims = ["a", "b"], mtfc.name = "y", mtfc.role = "output"}) {
    %y = "stablehlo.sort"(%x) ({
    ^bb0(%p: tensor<f32>, %q: tensor<f32>):
      %c = stablehlo.compare GT, %p, %q : (tensor<f32>, tensor<f32>) -> tensor<i1>
      stablehlo.return %c : tensor<i1>
    }) {dimension = 1 : i64, is_stable = true, mtfc.dims = ["a", "b"]} : (tensor<8x4xf32>) -> tensor<8x4xf32>
    return %y : tensor<8x4xf32>
  }
}
"""


def test_refused_candidates_are_counted_with_their_reason():
    # layout-cost predicts no sort with split values: both splits (a:rows, b:rows) are refused, not scored
    module = mir.parse_module(SORT, mir.new_context())
    result = search_result(module, Mesh.parse("rows:2"), network=PRESETS["cpu"])
    assert [c.rules for c in result.candidates] == [""] and result.searched == 3
    assert result.invalid == {"layout-cost has no prediction for stablehlo.sort with split values": 2}
    assert result.invalid_line() == "2 invalid: layout-cost has no prediction for stablehlo.sort with split values (2)"


def test_new_rules_drop_the_record_of_the_search(tmp_path):
    model = tmp_path / "dot.py"
    model.write_text(DOT)
    auto = tmp_path / "auto.mlir"
    assert run_cli("compile", model, "--layout", "auto", "--mode", "none", "-o", auto).exit_code == 0
    kept, dropped = tmp_path / "kept.mlir", tmp_path / "dropped.mlir"
    assert run_cli("opt", auto, "--pipeline", "explicit", "-o", kept).exit_code == 0
    assert run_cli("opt", auto, "--pipeline", "explicit", "--layout", "batch:rows", "-o", dropped).exit_code == 0
    assert "layout_search" in json.loads(run_cli("inspect", kept, "--json", "--no-xla").output)
    assert "layout_search" not in json.loads(run_cli("inspect", dropped, "--json", "--no-xla").output)


def test_loop_flops_count_every_trip():
    # the scanned transformer (its layers one stablehlo.while, 3 trips) computes what the unrolled one does,
    # plus the loop counter's scalar ops (an add and a compare per trip)
    mesh = Mesh.parse("rows:2,cols:4")
    flops = {}
    for scan in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = compile_file(str(EXAMPLES / "transformer.py"), mode="none", layout="", param_layout="",
                                  defines={"SCAN": scan, "N_LAYERS": 3})
        table = module_table(module)
        flops[scan] = [per_device_flops(table, layouts_of(mesh, r, "")) for r in ("", "batch:rows,d_ff:cols")]
    for unrolled, scanned in zip(flops[False], flops[True]):
        assert 0 < scanned - unrolled <= 2 * 3
