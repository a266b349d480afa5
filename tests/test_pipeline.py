"""Pipeline parallelism (`mtf.layers.pipeline`): the pipelined model computes
what the unpipelined one computes -- forward outputs, and the losses and
parameters of 3 train steps (so the gradients) -- for 2 and 4 stages and
M in {1, S, 2S} microbatches, with the same parameter values (the
unpipelined model's ``params/block<i>/X`` stacked into the pipeline's
``params/pipeline/layer<j>/X[s]``, i = s * layers/S + j); against a JAX
reference written here; one collective_permute per tick; the one-line
errors; and examples/pipeline.py against examples/transformer.py's decoder."""

from __future__ import annotations

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import mtfc as mtf
from conftest import assert_close
from mtfc.cli import main
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError
from mtfc.runtime.execute import Program

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLE = os.path.join(ROOT, "examples", "pipeline.py")
TOKENS = os.path.join(ROOT, "examples", "data", "tokens.npy")

batch, d, dh = mtf.Dim("batch", 16), mtf.Dim("d", 8), mtf.Dim("dh", 16)
INPUTS = {"x": mtf.Input([batch, d]), "t": mtf.Input([batch, d])}
LAYERS_PER_STAGE = 2
OPTIMIZER = "adamw:lr=0.05,warmup=0,clip=1.0"


def block(h):
    """A residual block: layer norm, dense up, tanh, dense down."""
    u = mtf.layers.layer_norm(h, d, name="ln")
    u = mtf.tanh(mtf.layers.dense(u, dh, [d], name="up"))
    return h + mtf.layers.dense(u, d, [dh], name="down")


def head(h, t):
    return {"y": h, "loss": mtf.reduce_mean(mtf.square(h - t))}


def pipelined(S: int, M: int, layers: int | None = None, unroll: bool = False, stage_loop: bool = False):
    stages = mtf.Dim("stages", S)

    def model(x, t):
        h = mtf.layers.pipeline(block, x, layers=layers or S * LAYERS_PER_STAGE, stages=stages, microbatches=M,
                                   unroll=unroll, stage_loop=stage_loop)
        return head(h, t)

    return model


def unpipelined(n_layers: int):
    def model(x, t):
        h = x
        for i in range(n_layers):
            with mtf.scope(f"block{i}"):
                h = block(h)
        return head(h, t)

    return model


def mesh_of(S: int) -> str:
    return f"pipe:{S},data:{8 // S}"


LAYOUT = "stages:pipe,batch:data"


def stack(flat: dict, S: int, per_stage: int, prefix: str = "params/pipeline/stage") -> dict:
    """The unpipelined model's per-block parameters as the pipeline's stacked
    ones: ``X[s, j]`` is block ``s * per_stage + j``."""
    out = {}
    for name in flat:
        m = re.fullmatch(r"params/block0/(.*)", name)
        if m:
            rest = m.group(1)
            out[f"{prefix}/{rest}"] = np.stack([np.stack([flat[f"params/block{s * per_stage + j}/{rest}"]
                                                          for j in range(per_stage)]) for s in range(S)])
    return out


def shared_data(program_flat: Program, program_pipe: Program, S: int, per_stage: int, seed: int = 0):
    """Host inputs for both programs: the unpipelined model's synthesized
    inputs and parameters, and the same values stacked for the pipeline."""
    flat = program_flat.synthesize_inputs(seed)
    pipe = program_pipe.synthesize_inputs(seed)
    stacked = stack(flat, S, per_stage)
    for sig in program_pipe.arguments:
        if sig.name in stacked:
            pipe[sig.name] = stacked[sig.name].astype(pipe[sig.name].dtype)
        elif sig.name in flat:
            pipe[sig.name] = flat[sig.name]
        else:
            assert sig.role == "optimizer_state", sig.name
    assert set(stacked) <= {s.name for s in program_pipe.arguments}
    return flat, pipe


def train(program: Program, data: dict, steps: int = 3):
    data = dict(data)
    losses = []
    for _ in range(steps):
        out = program.run(data).outputs
        losses.append(float(out["loss"]))
        for sig in program.arguments:
            if sig.role in ("parameter", "optimizer_state"):
                data[sig.name] = out[sig.name]
    return losses, data


CONFIGS = [(S, M) for S in (2, 4) for M in (1, S, 2 * S)]


@pytest.mark.parametrize("S,M", CONFIGS)
def test_pipelined_forward_equals_unpipelined(S, M, mode="explicit", unroll=False, stage_loop=False):
    per = LAYERS_PER_STAGE
    flat_m = compile_function(unpipelined(S * per), INPUTS, mesh=mesh_of(S), layout="batch:data", mode=mode)
    pipe_m = compile_function(pipelined(S, M, unroll=unroll, stage_loop=stage_loop), INPUTS, mesh=mesh_of(S),
                              layout=LAYOUT, mode=mode)
    flat_p, pipe_p = Program(flat_m), Program(pipe_m)
    flat, pipe = shared_data(flat_p, pipe_p, S, per)
    want = flat_p.run(flat).outputs
    got = pipe_p.run(pipe).outputs
    for k in ("y", "loss"):
        assert_close(got[k], want[k])
    assert not np.allclose(want["y"], flat["x"])  # the blocks did something


def _train_compare(S, M, mode, unroll=False, mesh=None, extra_rules="", stage_loop=False, optimizer=OPTIMIZER):
    per = LAYERS_PER_STAGE
    kw = dict(mode=mode, train=True, optimizer=optimizer)
    mesh = mesh or mesh_of(S)
    flat_m = compile_function(unpipelined(S * per), INPUTS, mesh=mesh, layout="batch:data" + extra_rules, **kw)
    pipe_m = compile_function(pipelined(S, M, unroll=unroll, stage_loop=stage_loop), INPUTS, mesh=mesh,
                              layout=LAYOUT + extra_rules, **kw)
    flat_p, pipe_p = Program(flat_m), Program(pipe_m)
    flat, pipe = shared_data(flat_p, pipe_p, S, per)
    want_losses, want_state = train(flat_p, flat)
    got_losses, got_state = train(pipe_p, pipe)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    assert want_losses[-1] < want_losses[0]
    want_stacked = stack(want_state, S, per)
    for name, value in want_stacked.items():
        assert_close(got_state[name], value)
    # every trained parameter moved
    for name, value in stack(flat, S, per).items():
        assert not np.allclose(got_state[name], value), name


@pytest.mark.parametrize("S,M", CONFIGS)
def test_pipelined_train_steps_equal_unpipelined(S, M):
    _train_compare(S, M, "explicit")


@pytest.mark.parametrize("S,M", [(2, 2), (4, 8)])
def test_pipelined_adafactor_equals_unpipelined(S, M):
    """Adafactor's per-parameter statistics are kept per stage and layer of
    the stacked ``[stages, layers, ...]`` parameters (`Variable.stacked`), so
    the pipeline trains as the per-block model does."""
    _train_compare(S, M, "explicit", optimizer="adafactor:lr=0.05,clip=1.0")


@pytest.mark.parametrize("S,M", [(2, 4), (4, 1)])
def test_unrolled_schedule_equals_unpipelined(S, M):
    """``unroll=True`` (the ticks as a Python loop): the same numbers."""
    test_pipelined_forward_equals_unpipelined(S, M, unroll=True)
    _train_compare(S, M, "explicit", unroll=True)


@pytest.mark.parametrize("mode", ["explicit", "gspmd"])
def test_stage_loop_equals_unpipelined(mode):
    """``stage_loop=True`` (each stage's blocks an inner loop): the same
    numbers; its gradient loop recomputes each tick's forward, so it sends
    two permutes per tick (the flat body: one)."""
    from mtfc.passes.pipeline_analysis import pipeline_report

    test_pipelined_forward_equals_unpipelined(2, 4, mode=mode, stage_loop=True)
    _train_compare(2, 4, mode, stage_loop=True)
    counts = {}
    for stage_loop in (False, True):
        module = compile_function(pipelined(2, 4, stage_loop=stage_loop), INPUTS, mesh=mesh_of(2), layout=LAYOUT,
                                  mode="explicit", train=True, optimizer=OPTIMIZER)
        counts[stage_loop] = [(r["loop"], r["permutes_per_tick"]) for r in pipeline_report(module)]
    assert counts == {False: [("forward", 1), ("gradient", 1)], True: [("forward", 1), ("gradient", 2)]}


@pytest.mark.parametrize("mode", ["explicit", "gspmd"])
def test_pipeline_with_data_and_tensor_parallelism(mode):
    """4 stages on pipe:2 (two per device), the batch on data, the block's
    hidden dim on model: 3 train steps equal the unpipelined model's."""
    _train_compare(4, 4, mode, mesh="pipe:2,data:2,model:2", extra_rules=",dh:model")


# gspmd and shardy run the tick loop; shardy also the unrolled schedule.
OTHER = [("gspmd", False), ("shardy", False), ("shardy", True)]


@pytest.mark.parametrize("mode,unroll", OTHER)
def test_pipelined_train_steps_other_partitioners(mode, unroll):
    _train_compare(4, 4, mode, unroll=unroll)


@pytest.mark.parametrize("mode,unroll", OTHER)
def test_pipelined_forward_other_partitioners(mode, unroll):
    test_pipelined_forward_equals_unpipelined(2, 4, mode=mode, unroll=unroll)


# ----------------------------------------------------------------- JAX reference


def _jax_model(p, x, t, S, per):
    h = x
    for s in range(S):
        for j in range(per):
            q = lambda n: p[f"params/pipeline/stage/{n}"][s, j]  # noqa: E731
            mean = h.mean(-1, keepdims=True)
            var = ((h - mean) ** 2).mean(-1, keepdims=True)
            u = (h - mean) / jnp.sqrt(var + 1e-6) * q("ln/scale") + q("ln/bias")
            u = jnp.tanh(u @ q("up/kernel") + q("up/bias"))
            h = h + u @ q("down/kernel") + q("down/bias")
    return h, jnp.mean((h - t) ** 2)


def test_pipeline_against_jax_reference():
    """Outputs and gradients (one SGD step without momentum) against JAX."""
    S, M, per, lr = 2, 4, LAYERS_PER_STAGE, 0.5
    module = compile_function(pipelined(S, M), INPUTS, mesh=mesh_of(S), layout=LAYOUT, mode="explicit",
                              train=True, optimizer=f"sgd:lr={lr},momentum=0.0")
    program = Program(module)
    data = program.synthesize_inputs(5)
    out = program.run(data).outputs
    params = {k: jnp.asarray(v) for k, v in data.items() if k.startswith("params/")}
    loss, grads = jax.value_and_grad(lambda p: _jax_model(p, data["x"], data["t"], S, per)[1])(params)
    np.testing.assert_allclose(float(out["loss"]), float(loss), rtol=1e-5)
    for k, g in grads.items():
        assert_close(out[k], np.asarray(params[k] - lr * g))


# ----------------------------------------------------------------- the IR


def _count(text: str, op: str) -> int:
    return len(re.findall(rf"\bstablehlo\.{op}\b|\"stablehlo\.{op}\"", text))


@pytest.mark.parametrize("S,M", [(2, 2), (4, 8)])
def test_one_collective_permute_per_tick(S, M):
    """Explicit mode, stages split: the tick loop is one stablehlo.while of
    M + S - 1 trips whose body holds exactly one collective_permute (the
    stage buffer, one stage's rows per device) and no other collective; the
    outputs leave the last stage by one all_reduce after the loop."""
    from mtfc import ir as mir
    from mtfc.passes.pipeline_analysis import pipeline_report

    module = compile_function(pipelined(S, M), INPUTS, mesh=mesh_of(S), layout=LAYOUT, mode="explicit")
    with module.context:
        loops = [op for op in mir.walk_ops(mir.entry_function(module)) if op.name == "stablehlo.while"]
        assert len(loops) == 1 and mir.loop_trip_count(loops[0]) == M + S - 1
        in_body = [op.name for op in mir.walk_ops(mir.entry_function(module))
                   if mir.enclosing_trip_count(op) > 1 and op.name in COLLECTIVES]
        everywhere = [op.name for op in mir.walk_ops(mir.entry_function(module)) if op.name in COLLECTIVES]
    assert in_body == ["stablehlo.collective_permute"]
    # after the loop: the sum over stages (pipe) and the loss's mean (data)
    assert sorted(everywhere) == ["stablehlo.all_reduce", "stablehlo.all_reduce", "stablehlo.collective_permute"]
    (report,) = pipeline_report(module)
    assert (report["loop"], report["stages"], report["microbatches"], report["ticks"]) == ("forward", S, M, M + S - 1)
    assert report["bubble_fraction"] == pytest.approx((S - 1) / (M + S - 1))
    per_tick = (batch.size // M // (8 // S)) * d.size * 4  # [1 stage, rows per device, d] f32
    assert report["permutes_per_tick"] == 1 and report["permute_bytes_per_tick"] == per_tick
    assert report["permute_bytes"] == per_tick * (M + S - 1)


@pytest.mark.parametrize("mesh,per_tick", [("pipe:4,data:2", 4 * 8 * 4), ("pipe:2,data:4", 2 * 8 * 4)])
def test_predicted_permutes_equal_measured(mesh, per_tick):
    """The global (gspmd) module's predicted stage-to-stage bytes are the
    explicit module's measured ones, forward and gradient loops; with two
    stages per device (pipe:2) a device sends one of its two stages."""
    from mtfc.passes.pipeline_analysis import pipeline_report

    reports = {}
    for mode in ("explicit", "gspmd"):
        module = compile_function(pipelined(4, 2), INPUTS, mesh=mesh, layout=LAYOUT, mode=mode, train=True,
                                  optimizer=OPTIMIZER)
        reports[mode] = pipeline_report(module)
    assert [r["source"] for r in reports["gspmd"]] == ["predicted from the layout"] * 2
    strip = lambda rs: [{k: v for k, v in r.items() if k != "source"} for r in rs]  # noqa: E731
    assert strip(reports["gspmd"]) == strip(reports["explicit"])
    assert [r["loop"] for r in reports["explicit"]] == ["forward", "gradient"]
    # [1 stage, 16/M rows / data, d] f32
    assert all(r["permute_bytes_per_tick"] == per_tick and r["ticks"] == 5 for r in reports["explicit"])


COLLECTIVES = {f"stablehlo.{k}" for k in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all",
                                          "collective_permute")}


def test_inspect_reports_the_pipeline(tmp_path):
    """`mtfc inspect` of the example's train step: the bubble and the
    permutes of the forward and the gradient tick loops."""
    out = tmp_path / "train.mlir"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", EXAMPLE, "--train", "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the summary wraps lines at 100 columns
    # 4 stages, 4 microbatches: 7 ticks, bubble 3/7; one [1, 2, 32, 64] f32 buffer slab per tick
    for loop in ("forward", "gradient"):
        assert re.search(rf"pipeline, {loop} ticks .*?: 4 stages, 4 microbatches, 7 ticks; "
                         r"bubble fraction \(S-1\)/\(M\+S-1\) = 0\.429", text), result.output
    assert text.count("1 per tick, 16384 bytes/device per tick, 114688 bytes/device in all") == 2
    result = runner.invoke(main, ["inspect", str(out), "--json"])
    import json

    records = json.loads(result.output)["pipeline"]
    assert [r["loop"] for r in records] == ["forward", "gradient"]


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,message", [
    (dict(layers=6, stages=mtf.Dim("stages", 4), microbatches=2),
     r"test_pipeline\.py:\d+: pipeline: 6 layers do not divide into 4 stages"),
    (dict(layers=4, stages=mtf.Dim("stages", 4), microbatches=3),
     r"test_pipeline\.py:\d+: pipeline: 3 microbatches do not divide the batch dim batch=16"),
    (dict(layers=4, stages=mtf.Dim("stages", 4), microbatches=0),
     r"pipeline: microbatches must be at least 1"),
    (dict(layers=4, stages=mtf.Dim("d", 4), microbatches=2),
     r"pipeline: the stages dim 'd' is already a dim of the input"),
    (dict(layers=4, stages=mtf.Dim("layers", 4), microbatches=2),
     r"pipeline: the dim name 'layers' is the pipeline's own"),
])
def test_one_line_errors(kwargs, message):
    def model(x, t):
        return {"y": mtf.layers.pipeline(block, x, **kwargs)}

    with pytest.raises(MtfcError, match=message) as e:
        compile_function(model, INPUTS, mesh="pipe:4,data:2", layout=LAYOUT)
    assert "\n" not in str(e.value)


def test_block_changing_dims_is_an_error():
    def model(x, t):
        return {"y": mtf.layers.pipeline(lambda h: mtf.reduce_sum(h, d), x, layers=2,
                                         stages=mtf.Dim("stages", 2), microbatches=2)}

    with pytest.raises(MtfcError, match=r"test_pipeline\.py:\d+: pipeline: the block must return its input's dims"):
        compile_function(model, INPUTS, mesh="pipe:2,data:4", layout=LAYOUT)


# ----------------------------------------------------------------- the example


@pytest.mark.parametrize("mode,unroll", [("explicit", False), ("gspmd", False), ("shardy", False), ("shardy", True)])
def test_example_compiles_and_passes_check(mode, unroll, tmp_path):
    out = tmp_path / "pipeline.mlir"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", EXAMPLE, "-o", str(out), "--mode", mode, "-D", f"UNROLL={unroll}"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["run", str(out), "--check", "--repeat", "1"])
    assert result.exit_code == 0, result.output
    assert "check: passed" in result.output


def _example_modules(mode="explicit"):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import pipeline as example
        import transformer
    finally:
        sys.path.pop(0)
    from mtfc.compiler import compile_entry

    pipe_m = compile_entry(example.pipelined_transformer, mode=mode, train=True)
    assert example.LAYERS == 4 and example.STAGES == 4
    dims = dict(vocab=example.vocab, d_model=example.d_model, heads=example.heads, d_kv=example.d_kv,
                d_ff=example.d_ff)
    flat_entry = mtf.entry(inputs=example.pipelined_transformer.inputs, mesh="pipe:4,data:2", layout="batch:data",
                           optimizer=example.pipelined_transformer.optimizer)(
        lambda tokens, targets: transformer.decoder(tokens, targets, n_layers=example.LAYERS, **dims))
    flat_m = compile_entry(flat_entry, mode=mode, train=True)
    return example, pipe_m, flat_m


def test_example_trains_with_the_unpipelined_losses():
    """examples/pipeline.py's train step against examples/transformer.py's
    decoder with the same depth, optimizer and parameter values: 3 steps on
    the shipped token stream's first batches give the same losses."""
    example, pipe_m, flat_m = _example_modules()
    flat_p, pipe_p = Program(flat_m), Program(pipe_m)
    per = example.LAYERS // example.STAGES
    flat, pipe = shared_data(flat_p, pipe_p, example.STAGES, per)
    tokens = np.load(TOKENS)
    n = example.batch.size * example.length.size
    for data in (flat, pipe):
        data["tokens"] = tokens[:n].reshape(example.batch.size, example.length.size).astype(np.int32)
        data["targets"] = tokens[1:n + 1].reshape(example.batch.size, example.length.size).astype(np.int32)
    want, _ = train(flat_p, flat)
    got, _ = train(pipe_p, pipe)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want[-1] < want[0]


def test_example_trains_from_the_command_line(tmp_path):
    import json

    module, log = tmp_path / "train.mlir", tmp_path / "log.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", EXAMPLE, "--train", "-o", str(module)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["run", str(module), "--steps", "30", "--data", TOKENS, "--log", str(log)])
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert losses[0] > 3.5 and losses[-1] < 1.5, losses
