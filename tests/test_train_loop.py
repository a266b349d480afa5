"""`mtfc run TRAIN.mlir --steps N`: the training loop, data sources and sharded checkpoints.

The train-step modules here are built without mtfc's frontend: a step written
in plain JAX (an MLP or a tiny token model, SGD with momentum and a step
counter) is lowered with ``jax.jit(step).lower(...).as_text()``, given the
attributes of the contract (docs/IR.md, "Train-step modules") by `annotate`,
and partitioned by mtfc's own pipelines (gspmd, explicit) or left global.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from jax import lax
from jax.extend.mlir import ir

from mtfc import ir as mir
from corpus import tree
from mtfc.cli import main
from mtfc.emit.artifact import write_module
from mtfc.files.modules import read_module
from mtfc.passes.manager import PIPELINES, run_passes
from mtfc.runtime import checkpoint
from mtfc.runtime.data import NpzBatches, TokenBatches, throughput_unit
from mtfc.runtime.progress import Progress
from mtfc.runtime.sources import materialize
from mtfc.runtime.synthetic import synthesize
from mtfc.runtime.train_step import StepRecord

F32 = jnp.float32

# -- building train-step modules from plain JAX ---------------------------------------------------


def annotate(text, sizes, args, results, *, name, mesh="", layout="", param_layout=None,
             optimizer="sgd:lr=0.1,momentum=0.9", step="train"):
    """Give a module lowered by jax the mtfc contract.  `sizes` names each tensor
    dim by its size (the models use distinct sizes); `args` are (name, role,
    init), `results` (name, role); state arguments alias the result of their name."""
    context = mir.new_context()
    module = ir.Module.parse(text, context)
    with context:
        fn = mir.entry_function(module)
        ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)

        def names(t):
            return [sizes[s] for s in ir.RankedTensorType(t).shape]

        def dims(t):
            return mir.str_array(names(t))

        result_names = [n for n, _ in results]
        arg_attrs = []
        for (n, role, init), t in zip(args, ftype.inputs, strict=True):
            attrs = {"mtfc.name": ir.StringAttr.get(n), "mtfc.role": ir.StringAttr.get(role),
                     "mtfc.init": ir.StringAttr.get(init), "mtfc.dims": dims(t)}
            if role != "input":
                attrs["tf.aliasing_output"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), result_names.index(n))
            arg_attrs.append(ir.DictAttr.get(attrs))
        fn.attributes["arg_attrs"] = ir.ArrayAttr.get(arg_attrs)
        fn.attributes["res_attrs"] = ir.ArrayAttr.get([
            ir.DictAttr.get({"mtfc.name": ir.StringAttr.get(n), "mtfc.role": ir.StringAttr.get(role), "mtfc.dims": dims(t)})
            for (n, role), t in zip(results, ftype.results, strict=True)
        ])
        for op in mir.body_ops(fn):
            if op.name != "func.return":
                mir.set_op_result_dims(op, [names(r.type) for r in op.results])
        attrs = module.operation.attributes
        for key in ("mhlo.num_partitions", "mhlo.num_replicas"):
            if key in attrs:
                del attrs[key]
        attrs["sym_name"] = ir.StringAttr.get(name)
        attrs["mtfc.mesh"] = ir.StringAttr.get(mesh)
        attrs["mtfc.layout"] = ir.StringAttr.get(layout)
        if param_layout is not None:
            attrs["mtfc.param_layout"] = ir.StringAttr.get(param_layout)
        attrs["mtfc.partitioning"] = ir.StringAttr.get("none")
        if step:
            attrs["mtfc.step"] = ir.StringAttr.get(step)
        if optimizer:
            attrs["mtfc.optimizer"] = ir.StringAttr.get(optimizer)
    return module


def sgd_momentum(params, grads, moms, t, lr0=0.1):
    lr = lr0 / (1.0 + 0.01 * t.astype(F32))
    moms = [0.9 * m + g for m, g in zip(moms, grads)]
    params = [p - lr * m for p, m in zip(params, moms)]
    gnorm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads))
    return params, moms, lr, gnorm


# The MLP: x [batch, d_in] -> tanh(x w1 + b1) w2 -> [batch, d_out], squared error.
B, DI, DH, DO = 16, 8, 32, 4


def mlp_step_fn(b, di, dh, do):
    def loss_fn(params, x, y):
        w1, b1, w2 = params
        h = jnp.tanh(x @ w1 + lax.broadcast_in_dim(b1, (b, dh), (1,)))
        return jnp.mean((h @ w2 - y) ** 2)

    def step(w1, b1, w2, m1, mb1, m2, t, x, y):
        loss, grads = jax.value_and_grad(loss_fn)([w1, b1, w2], x, y)
        params, moms, lr, gnorm = sgd_momentum([w1, b1, w2], grads, [m1, mb1, m2], t)
        return (loss, gnorm, lr, *params, *moms, t + 1)

    shapes = [((di, dh), F32), ((dh,), F32), ((dh, do), F32), ((di, dh), F32), ((dh,), F32), ((dh, do), F32),
              ((), jnp.int32), ((b, di), F32), ((b, do), F32)]
    return step, [jax.ShapeDtypeStruct(s, d) for s, d in shapes]


MLP_ARGS = [
    ("params/w1", "parameter", "normal:1.0"), ("params/b1", "parameter", "constant:0"),
    ("params/w2", "parameter", "normal:1.0"),
    ("opt/params/w1/momentum", "optimizer_state", "constant:0"),
    ("opt/params/b1/momentum", "optimizer_state", "constant:0"),
    ("opt/params/w2/momentum", "optimizer_state", "constant:0"),
    ("opt/step", "optimizer_state", "constant:0"),
    ("x", "input", "normal:1.0"), ("y", "input", "normal:0.1"),
]
MLP_RESULTS = [("loss", "loss"), ("grad_norm", "metric"), ("learning_rate", "metric")] + [
    (n, r) for n, r, _ in MLP_ARGS if r != "input"
]
STATE = [n for n, r, _ in MLP_ARGS if r != "input"]


@lru_cache(maxsize=None)
def mlp_text(b=B, di=DI, dh=DH, do=DO):
    step, shapes = mlp_step_fn(b, di, dh, do)
    return jax.jit(step).lower(*shapes).as_text()


def write_train_module(path, *, mode="gspmd", mesh="rows:2,cols:4", layout="batch:rows,d_hidden:cols",
                       param_layout=None, sizes=(B, DI, DH, DO), step="train"):
    b, di, dh, do = sizes
    module = annotate(mlp_text(*sizes), {b: "batch", di: "d_in", dh: "d_hidden", do: "d_out"}, MLP_ARGS, MLP_RESULTS,
                      name="mlp_train", mesh=mesh, layout=layout, param_layout=param_layout, step=step)
    run_passes(module, PIPELINES[mode])
    write_module(module, str(path))
    return str(path)


# The token model: one-hot tokens -> tanh(embedding) -> logits over the vocabulary.
TB, TL, TV, TD = 4, 8, 16, 32


def token_step(emb, out, m_emb, m_out, t, tokens, targets):
    def loss_fn(params):
        emb, out = params
        iota = lax.broadcasted_iota(jnp.int32, (TB, TL, TV), 2)
        one_hot = (lax.broadcast_in_dim(tokens, (TB, TL, TV), (0, 1)) == iota).astype(F32)
        h = jnp.tanh(jnp.einsum("blv,vd->bld", one_hot, emb))
        logits = jnp.einsum("bld,dv->blv", h, out)
        z = logits - lax.broadcast_in_dim(lax.stop_gradient(jnp.max(logits, axis=2)), (TB, TL, TV), (0, 1))
        target = (lax.broadcast_in_dim(targets, (TB, TL, TV), (0, 1)) == iota).astype(F32)
        return jnp.mean(jnp.log(jnp.sum(jnp.exp(z), axis=2)) - jnp.sum(z * target, axis=2))

    loss, grads = jax.value_and_grad(loss_fn)([emb, out])
    params, moms, lr, gnorm = sgd_momentum([emb, out], grads, [m_emb, m_out], t, lr0=0.5)
    return (loss, gnorm, *params, *moms, t + 1)


TOKEN_ARGS = [
    ("params/embedding", "parameter", "normal:0.5"), ("params/unembedding", "parameter", "normal:0.5"),
    ("opt/params/embedding/momentum", "optimizer_state", "constant:0"),
    ("opt/params/unembedding/momentum", "optimizer_state", "constant:0"),
    ("opt/step", "optimizer_state", "constant:0"),
    ("tokens", "input", f"randint:0,{TV}"), ("targets", "input", f"randint:0,{TV}"),
]
TOKEN_RESULTS = [("loss", "loss"), ("grad_norm", "metric")] + [(n, r) for n, r, _ in TOKEN_ARGS if r != "input"]


def write_token_module(path, *, mode="gspmd", mesh="rows:2,cols:4", layout="batch:rows,d_model:cols"):
    shapes = [((TV, TD), F32), ((TD, TV), F32), ((TV, TD), F32), ((TD, TV), F32), ((), jnp.int32),
              ((TB, TL), jnp.int32), ((TB, TL), jnp.int32)]
    text = jax.jit(token_step).lower(*[jax.ShapeDtypeStruct(s, d) for s, d in shapes]).as_text()
    module = annotate(text, {TB: "batch", TL: "length", TV: "vocab", TD: "d_model"}, TOKEN_ARGS, TOKEN_RESULTS,
                      name="token_train", mesh=mesh, layout=layout)
    run_passes(module, PIPELINES[mode])
    write_module(module, str(path))
    return str(path)


# -- running -------------------------------------------------------------------------------------


def invoke(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result.output


def invoke_error(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: "), result.output
    return lines[-1]


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def signatures(path):
    module = read_module(str(path), mir.new_context())
    return {s.name: s for s in mir.arguments(module)}


def plain_jax_run(module_path, steps, *, seed=0, batches=None):
    """The same training in plain JAX: the initial state and per-step batches the
    runner uses (synthesized from the signatures, or given), the jitted step."""
    sigs = signatures(module_path)
    step, _ = mlp_step_fn(B, DI, DH, DO)
    step = jax.jit(step)
    state = [jnp.asarray(synthesize(sigs[n], seed)) for n in STATE]
    losses = []
    for k in range(steps):
        if batches is None:
            x, y = (synthesize(sigs[n], seed, k) for n in ("x", "y"))
        else:
            x, y = batches(k)
        out = step(*state, x, y)
        losses.append(float(out[0]))
        state = list(out[3:])
    return losses, {n: np.asarray(v) for n, v in zip(STATE, state)}


def assert_close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-30)
    assert float(np.max(np.abs(a - b))) / scale <= tol, (a, b)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """The MLP train step under several modes and layouts (built once)."""
    d = tmp_path_factory.mktemp("modules")
    return {
        "gspmd": write_train_module(d / "gspmd.mlir"),
        "explicit": write_train_module(d / "explicit.mlir", mode="explicit"),
        "shardy": write_train_module(d / "shardy.mlir", mode="shardy"),
        "none": write_train_module(d / "none.mlir", mode="none"),
        "explicit_data8": write_train_module(d / "explicit_data8.mlir", mode="explicit", mesh="data:8",
                                             layout="batch:data"),
        "fsdp": write_train_module(d / "fsdp.mlir", mesh="data:4", layout="batch:data",
                                   param_layout="d_hidden:data"),
        "forward": write_train_module(d / "forward.mlir", step=None),
        "wider": write_train_module(d / "wider.mlir", sizes=(B, DI, 64, DO)),
    }


# -- the loop --------------------------------------------------------------------------------------


def test_loss_falls_with_progress_summary_and_log(modules, tmp_path):
    out = invoke("run", modules["gspmd"], "--steps", 30, "--log", tmp_path / "log.jsonl", "--check")
    assert "train step (sgd:lr=0.1,momentum=0.9), partitioning gspmd, 8 cpu device(s)" in out
    assert "donated to XLA: 7 of 7" in out
    assert "check: passed" in out
    assert "step 30 (30/30)" in out and "trained steps 1-30 (30 steps)" in out
    assert "examples/s" in out and "median" in out
    log = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 31))
    assert set(log[0]) == {"step", "loss", "metrics", "seconds"}
    assert set(log[0]["metrics"]) == {"grad_norm", "learning_rate"}
    assert log[-1]["loss"] < log[0]["loss"] / 4
    assert abs(log[9]["metrics"]["learning_rate"] - 0.1 / 1.09) < 1e-6  # the step counter advanced


@pytest.mark.parametrize("mode", ["none", "gspmd", "explicit", "shardy", "fsdp"])
def test_loop_equals_the_step_run_in_plain_jax(modules, tmp_path, mode):
    steps = 6
    invoke("run", modules[mode], "--steps", steps, "--seed", 5, "--log", tmp_path / "log.jsonl",
           "--outputs", tmp_path / "out.npz")
    losses, state = plain_jax_run(modules[mode], steps, seed=5)
    log = read_log(tmp_path / "log.jsonl")
    with np.load(tmp_path / "out.npz") as out:
        for name in STATE:
            if mode == "none":  # the same XLA program on one device: bit for bit
                np.testing.assert_array_equal(out[name], state[name], err_msg=name)
            else:
                assert_close(out[name], state[name])
        assert out["loss"] == np.float32(log[-1]["loss"])
    if mode == "none":
        assert [r["loss"] for r in log] == losses
    else:
        assert_close([r["loss"] for r in log], losses)


def test_state_stays_on_device_and_is_donated(modules):
    from mtfc.runtime.train_step import TrainStep

    train = TrainStep(read_module(modules["gspmd"], mir.new_context()))
    state = train.initial_state(0)
    before = dict(state.buffers)
    outs = train.launch(state, train.device_inputs({"x": np.ones((B, DI), np.float32),
                                                    "y": np.zeros((B, DO), np.float32)}))
    train.advance(state, outs)
    assert all(b.is_deleted() for b in before.values())  # donated to XLA
    for name, array in state.buffers.items():  # new state: global arrays over the mesh's devices, in mesh order
        shards = [s.data for s in sorted(array.addressable_shards, key=lambda s: train.devices.index(s.device))]
        assert [next(iter(s.devices())) for s in shards] == train.devices
        assert isinstance(array, jax.Array) and not array.is_deleted()
        assert array.sharding.mesh.devices.flatten().tolist() == train.devices


@pytest.mark.parametrize("mode", ["gspmd", "explicit"])
def test_results_are_the_next_state_as_they_are(modules, mode):
    """A step's state results become the next state unchanged (the same array
    objects, built by jaxlib's result handlers with the layout's sharding),
    and the first step's check of those arrays refuses misplaced buffers."""
    from mtfc.errors import MtfcError
    from mtfc.runtime.train_step import TrainStep

    train = TrainStep(read_module(modules[mode], mir.new_context()))
    state = train.initial_state(0)
    shardings = {name: array.sharding for name, array in state.buffers.items()}
    batch = {"x": np.ones((B, DI), np.float32), "y": np.zeros((B, DO), np.float32)}
    for _ in range(2):
        outs = train.launch(state, train.device_inputs(batch))
        train.advance(state, outs)
        for _, k, sig in train.state:
            assert state.buffers[sig.name] is outs[k]
            assert state.buffers[sig.name].sharding == shardings[sig.name]
            assert state.buffers[sig.name].shape == sig.shape
    train.program.check_outputs(outs)
    split = [k for k, layout in enumerate(train.program.res_layouts) if layout.local_sizes != layout.sizes]
    assert split  # the layout splits some state
    wrong = list(outs)
    wrong[split[0]] = jax.device_put(np.zeros(outs[split[0]].shape, outs[split[0]].dtype), train.devices[0])
    with pytest.raises(MtfcError, match="its layout says"):
        train.program.check_outputs(wrong)


def test_without_result_handlers_the_same_steps(modules):
    """A jaxlib without ``array_result_handler`` (`Program.execute` then
    assembles each result in Python): the same state and loss, bit for bit."""
    from mtfc.runtime.train_step import TrainStep

    batch = {"x": np.linspace(-1, 1, B * DI, dtype=np.float32).reshape(B, DI), "y": np.ones((B, DO), np.float32)}
    got = []
    for fallback in (False, True):
        train = TrainStep(read_module(modules["explicit"], mir.new_context()))
        if fallback:
            assert train.program.result_handlers
            train.program._handlers = []  # what result_handlers keeps when jaxlib lacks them
        state = train.initial_state(0)
        for _ in range(3):
            outs = train.launch(state, train.device_inputs(batch))
            train.advance(state, outs)
        got.append((train.read_scalars(outs), train.host_state(state)))
    assert got[0][0] == got[1][0]
    for name, value in got[0][1].items():
        np.testing.assert_array_equal(value, got[1][1][name], err_msg=name)


# -- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gspmd", "explicit"])
def test_save_restore_continues_bit_for_bit(modules, tmp_path, mode):
    module = modules[mode]
    invoke("run", module, "--steps", 7, "--save", tmp_path / "full", "--log", tmp_path / "full.jsonl")
    invoke("run", module, "--steps", 4, "--save", tmp_path / "ck")
    out = invoke("run", module, "--steps", 3, "--restore", tmp_path / "ck", "--save", tmp_path / "ck2",
                 "--log", tmp_path / "resumed.jsonl")
    assert "restored step 4 from" in out and "trained steps 5-7 (3 steps)" in out
    full_index, full = checkpoint.read_all(tmp_path / "full")
    index, resumed = checkpoint.read_all(tmp_path / "ck2")
    assert index["step"] == full_index["step"] == 7
    assert set(full) == set(STATE)
    for name in STATE:
        np.testing.assert_array_equal(resumed[name], full[name], err_msg=name)
        assert resumed[name].dtype == full[name].dtype
    assert [r["loss"] for r in read_log(tmp_path / "resumed.jsonl")] == [r["loss"] for r in read_log(tmp_path / "full.jsonl")][4:]
    assert [r["step"] for r in read_log(tmp_path / "resumed.jsonl")] == [5, 6, 7]


def test_log_and_tensorboard_continue_after_restore(modules, tmp_path):
    """A run of 6 steps saving at 4 and 6, then a run restored from step 4
    with the same --log and --tensorboard: the log keeps steps 1-4, drops the
    first run's 5-6 and appends the new 5-7 -- each step once, in order, with
    the uninterrupted run's losses; TensorBoard's events say the same (read
    back from the event files with tensorboardX's protobuf, not with mtfc)."""
    module = modules["gspmd"]
    log, board = tmp_path / "log.jsonl", tmp_path / "tb"
    invoke("run", module, "--steps", 7, "--log", tmp_path / "full.jsonl")
    invoke("run", module, "--steps", 4, "--save", tmp_path / "ck", "--log", log, "--tensorboard", board)
    invoke("run", module, "--steps", 2, "--restore", tmp_path / "ck", "--log", log, "--tensorboard", board)
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4, 5, 6]
    invoke("run", module, "--steps", 3, "--restore", tmp_path / "ck", "--log", log, "--tensorboard", board)
    records = read_log(log)
    assert [r["step"] for r in records] == list(range(1, 8))
    full = read_log(tmp_path / "full.jsonl")
    assert [r["loss"] for r in records] == [r["loss"] for r in full]
    events = tensorboard_scalars(board)
    losses = [(step, value, wall) for tag, step, value, wall in events if tag == "loss"]
    # the last value written for each step, by wall time (TensorBoard honours purge_step the same way)
    latest = {}
    for step, value, wall in sorted(losses, key=lambda x: x[2]):
        latest[step] = value
    assert sorted(latest) == list(range(1, 8))
    np.testing.assert_allclose([latest[k] for k in range(1, 8)], [r["loss"] for r in full], rtol=1e-6)
    tags = {tag for tag, *_ in events}
    assert {"loss", "metrics/grad_norm", "metrics/learning_rate", "seconds_per_step"} <= tags
    # a resumed writer asks TensorBoard to drop the earlier run's later steps
    purges = [e for e in tensorboard_events(board) if e.HasField("session_log") and e.session_log.status == 1]
    assert [e.step for e in purges] == [5, 5]


def tensorboard_events(folder):
    """Every Event in the TFRecord event files of `folder`, file by file in name order."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            record = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(record)
            events.append(event)
    return events


def tensorboard_scalars(folder):
    return [(v.tag, e.step, v.simple_value, e.wall_time)
            for e in tensorboard_events(folder) if e.HasField("summary") for v in e.summary.value]


def test_log_that_is_not_a_log_is_refused_before_training(modules, tmp_path):
    invoke("run", modules["gspmd"], "--steps", 2, "--save", tmp_path / "ck")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    message = invoke_error("run", modules["gspmd"], "--steps", 1, "--restore", tmp_path / "ck", "--log", notes)
    assert message == (f"error: {notes}:1: not a line of an mtfc --log file (a JSON object with a \"step\"); "
                       "not appending to it")
    assert notes.read_text() == "my notes\n"
    message = invoke_error("run", modules["gspmd"], "--steps", 1, "--tensorboard", notes)
    assert message == f"error: --tensorboard {notes}: not a directory"
    message = invoke_error("run", modules["gspmd"], "--steps", 1, "--log", tmp_path)
    assert message == f"error: {str(tmp_path)!r}: Is a directory"


def test_plot_draws_the_loss_and_metrics(modules, tmp_path):
    invoke("run", modules["gspmd"], "--steps", 5, "--log", tmp_path / "log.jsonl")
    out = invoke("plot", tmp_path / "log.jsonl", "-o", tmp_path / "loss.png", "--metric", "grad_norm")
    assert out.strip() == f"wrote {tmp_path / 'loss.png'}: loss, grad_norm over 5 step(s)"
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    out = invoke("plot", tmp_path / "log.jsonl", "-o", tmp_path / "all.svg", "--metric", "all")
    assert "loss, grad_norm, learning_rate over 5 step(s)" in out
    assert (tmp_path / "all.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("content,args,message", [
    (None, [], "error: {log}: no such log file"),
    ("", [], "error: {log}: the log has no steps"),
    ('{"step": 1, "loss": 2.0}\n{"step": 2, "loss"\n', [], "error: {log}:2: not JSON (Expecting ':' delimiter at column 19)"),
    ('[1, 2]\n', [], 'error: {log}:1: not a step record of mtfc run --log (a JSON object with a "step")'),
    ('{"step": 1, "loss": 2.0, "metrics": {"grad_norm": 1.0}}\n', ["--metric", "accuracy"],
     "error: --metric accuracy: not in {log} (metrics there: grad_norm)"),
])
def test_plot_errors_are_one_line(tmp_path, content, args, message):
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content)
    assert invoke_error("plot", log, "-o", tmp_path / "x.png", *args) == message.format(log=log)
    assert not (tmp_path / "x.png").exists()
    log.write_text('{"step": 1, "loss": 2.0}\n')
    assert invoke_error("plot", log, "-o", tmp_path / "x.jpeg") == (
        f"error: -o {tmp_path / 'x.jpeg'}: unsupported image format '.jpeg'; use one of .png, .svg, .pdf")


def test_checkpoint_index_and_shards(modules, tmp_path):
    invoke("run", modules["gspmd"], "--steps", 3, "--save", tmp_path / "ck", "--seed", 2)
    index = json.loads((tmp_path / "ck" / "index.json").read_text())
    assert index["format"] == "mtfc.checkpoint" and index["version"] == 3 and index["processes"] == 1
    assert (index["step"], index["mesh"], index["layout"], index["partitioning"], index["seed"]) == (
        3, "rows:2,cols:4", "batch:rows,d_hidden:cols", "gspmd", 2)
    assert index["optimizer"] == "sgd:lr=0.1,momentum=0.9" and index["model"] == "mlp_train"
    arrays = {a["name"]: a for a in index["arrays"]}
    assert set(arrays) == set(STATE)  # exactly the parameters and the optimizer state
    w1 = arrays["params/w1"]
    assert (w1["role"], w1["dims"], w1["shape"], w1["dtype"], w1["layout"]) == (
        "parameter", ["d_in", "d_hidden"], [DI, DH], "f32", [[], ["cols"]])
    # d_hidden is split over cols (4 blocks), replicated over rows: 4 distinct shards
    assert [s["slices"] for s in w1["shards"]] == [[[0, DI], [8 * k, 8 * k + 8]] for k in range(4)]
    assert [s["devices"] for s in w1["shards"]] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert arrays["opt/step"]["dtype"] == "i32" and len(arrays["opt/step"]["shards"]) == 1
    # the arrays are an orbax checkpoint beside the index, one orbax parameter per array
    assert sorted(os.listdir(tmp_path / "ck")) == ["index.json", "state"]
    assert os.path.isfile(tmp_path / "ck" / "state" / "commit_success.txt")
    stored = json.loads((tmp_path / "ck" / "state" / "array_metadatas" / "process_0").read_text())
    assert {m["array_metadata"]["param_name"] for m in stored["array_metadatas"]} == {
        name.replace("/", ".") for name in STATE}
    _, values = checkpoint.read_all(tmp_path / "ck")
    for shard in w1["shards"]:  # the digest of each distinct block's data bytes (C order)
        block = values["params/w1"][tuple(slice(a, b) for a, b in shard["slices"])]
        assert shard["sha256"] == hashlib.sha256(np.ascontiguousarray(block).tobytes()).hexdigest()
    _, values = checkpoint.read_all(tmp_path / "ck")
    assert values["opt/step"] == 3


@pytest.mark.parametrize("target", ["explicit_data8", "none", "fsdp"])
def test_restore_onto_another_mesh_and_layout(modules, tmp_path, target):
    invoke("run", modules["gspmd"], "--steps", 4, "--save", tmp_path / "ck")
    # restore and save again at once: the arrays are reassembled exactly
    out = invoke("run", modules[target], "--steps", 0, "--restore", tmp_path / "ck", "--save", tmp_path / "moved")
    assert "resharded" in out
    _, saved = checkpoint.read_all(tmp_path / "ck")
    index, moved = checkpoint.read_all(tmp_path / "moved")
    assert index["step"] == 4
    for name in STATE:
        np.testing.assert_array_equal(moved[name], saved[name], err_msg=name)
    # and training goes on there as it would have here (up to the reduction order)
    invoke("run", modules[target], "--steps", 3, "--restore", tmp_path / "ck", "--save", tmp_path / "there")
    invoke("run", modules["gspmd"], "--steps", 7, "--save", tmp_path / "here")
    _, there = checkpoint.read_all(tmp_path / "there")
    _, here = checkpoint.read_all(tmp_path / "here")
    for name in STATE:
        assert_close(there[name], here[name])


def test_a_failed_save_leaves_the_previous_checkpoint(modules, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    invoke("run", modules["gspmd"], "--steps", 2, "--save", ck)
    before = tree(ck)
    real = checkpoint.store.write

    def failing(state, arrays, timeout):  # orbax wrote some of it, then the disk was full
        real(state, dict(list(arrays.items())[:2]), timeout)
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "w1/0.0" in OCDBT database at local file "{state}": '
                         "Failed to write 128 bytes to file 7: No space left on device [os_error_code='28']")

    monkeypatch.setattr(checkpoint.store, "write", failing)
    message = invoke_error("run", modules["gspmd"], "--steps", 3, "--save", ck)
    assert message == f"error: {ck}: No space left on device"
    assert tree(ck) == before
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary directory left behind
    assert checkpoint.load_index(ck)["step"] == 2


def test_a_killed_save_leaves_the_previous_checkpoint(modules, tmp_path):
    ck = tmp_path / "ck"
    invoke("run", modules["gspmd"], "--steps", 2, "--save", ck)
    before = tree(ck)
    script = textwrap.dedent(f"""
        import os, sys
        from mtfc.runtime import checkpoint
        real = checkpoint.save
        def save(path, entries, meta, **kw):
            def die(tmp):
                os._exit(9)  # killed after writing everything, before the swap
            real(path, entries, meta, _before_commit=die)
        checkpoint.save = save
        from mtfc.cli import main
        sys.argv = ["mtfc", "run", {modules["gspmd"]!r}, "--steps", "3", "--save", {str(ck)!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    assert tree(ck) == before
    assert checkpoint.load_index(ck)["step"] == 2
    assert any(f.startswith(".ck.tmp-") for f in os.listdir(tmp_path))  # what the killed save left
    invoke("run", modules["gspmd"], "--steps", 3, "--restore", ck, "--save", ck)  # the next save clears it
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert checkpoint.load_index(ck)["step"] == 5


def test_save_without_atomic_exchange_still_replaces(modules, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.swap, "_exchange", lambda a, b: False)
    ck = tmp_path / "ck"
    invoke("run", modules["gspmd"], "--steps", 1, "--save", ck)
    invoke("run", modules["gspmd"], "--steps", 1, "--restore", ck, "--save", ck)
    assert checkpoint.load_index(ck)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_save_every(modules, tmp_path, monkeypatch):
    saved = []
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, entries, meta, **kw: (saved.append(meta["step"]),
                                                                                 real(path, entries, meta, **kw)))
    out = invoke("run", modules["gspmd"], "--steps", 7, "--save", tmp_path / "ck", "--save-every", 3)
    assert saved == [3, 6, 7]
    assert out.count("saved step") == 3


# -- data ------------------------------------------------------------------------------------------


def test_npz_with_a_step_axis(modules, tmp_path, rng):
    xs = rng.standard_normal((3, B, DI)).astype(np.float32)
    ys = rng.standard_normal((3, B, DO)).astype(np.float32) * 0.1
    np.savez(tmp_path / "d.npz", x=xs, y=ys)
    out = invoke("run", modules["none"], "--steps", 5, "--data", tmp_path / "d.npz", "--log", tmp_path / "l.jsonl",
                 "--outputs", tmp_path / "out.npz")
    assert "(3 steps, cycled)" in out
    losses, state = plain_jax_run(modules["none"], 5, batches=lambda k: (xs[k % 3], ys[k % 3]))
    assert [r["loss"] for r in read_log(tmp_path / "l.jsonl")] == losses
    with np.load(tmp_path / "out.npz") as o:
        np.testing.assert_array_equal(o["params/w1"], state["params/w1"])


def test_npz_with_an_example_axis(modules, tmp_path, rng):
    xs = rng.standard_normal((2 * B + 5, DI)).astype(np.float32)  # two whole batches and a partial one
    ys = rng.standard_normal((2 * B + 5, DO)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=xs, y=ys)
    out = invoke("run", modules["gspmd"], "--steps", 3, "--data", tmp_path / "d.npz", "--log", tmp_path / "l.jsonl")
    assert "(2 batches of consecutive examples, cycled)" in out
    batches = lambda k: (xs[(k % 2) * B:(k % 2 + 1) * B], ys[(k % 2) * B:(k % 2 + 1) * B])  # noqa: E731
    losses, _ = plain_jax_run(modules["gspmd"], 3, batches=batches)
    assert_close([r["loss"] for r in read_log(tmp_path / "l.jsonl")], losses)


def test_npz_missing_inputs_are_synthesized_per_step(modules, tmp_path):
    sigs = signatures(modules["gspmd"])
    np.savez(tmp_path / "d.npz", x=np.ones((2, B, DI), np.float32))
    batches = NpzBatches(str(tmp_path / "d.npz"), [sigs["x"], sigs["y"]], seed=1)
    assert batches.synthesized == ["y"]
    np.testing.assert_array_equal(materialize(batches.batch(7)["y"]), synthesize(sigs["y"], 1, 7))
    assert not np.array_equal(materialize(batches.batch(7)["y"]), materialize(batches.batch(8)["y"]))
    assert "synthesized per step: y" in batches.describe()


def test_token_stream_windows(tmp_path):
    stream = np.arange(100, dtype=np.int64)
    np.save(tmp_path / "t.npy", stream)
    tok = mir.Signature(0, "tokens", "input", ["batch", "length"], (3, 8), "i32")
    tgt = mir.Signature(1, "targets", "input", ["batch", "length"], (3, 8), "i32")
    batches = TokenBatches(str(tmp_path / "t.npy"), [tok, tgt], seed=0)
    assert batches.windows == 12  # windows start at 0, 8, ..., 88 (each needs 9 tokens)
    for step in (0, 1, 5):
        b = {name: materialize(source) for name, source in batches.batch(step).items()}
        assert b["tokens"].dtype == np.int32
        for j in range(3):
            start = ((step * 3 + j) % 12) * 8
            np.testing.assert_array_equal(b["tokens"][j], stream[start:start + 8])
            np.testing.assert_array_equal(b["targets"][j], stream[start + 1:start + 9])
    assert throughput_unit([tok, tgt]) == ("tokens", 24)


def test_training_on_a_token_stream(tmp_path):
    module = write_token_module(tmp_path / "tokens.mlir")
    np.save(tmp_path / "stream.npy", (np.arange(4000) * 5 % TV).astype(np.int32))  # next token = token + 5
    out = invoke("run", module, "--steps", 40, "--data", tmp_path / "stream.npy", "--log", tmp_path / "l.jsonl",
                 "--check")
    assert "check: passed" in out and "tokens/s" in out
    log = read_log(tmp_path / "l.jsonl")
    assert log[0]["loss"] > 2.0 and log[-1]["loss"] < 0.5 * log[0]["loss"]


# -- errors ----------------------------------------------------------------------------------------


def test_restore_that_does_not_match_names_what_differs(modules, tmp_path):
    invoke("run", modules["gspmd"], "--steps", 1, "--save", tmp_path / "ck")
    message = invoke_error("run", modules["wider"], "--steps", 1, "--restore", tmp_path / "ck")
    assert message.startswith(f"error: checkpoint '{tmp_path / 'ck'}' does not match the module: ")
    assert "'params/w1' has shape [8, 32] in the checkpoint, [8, 64] in the module" in message


def test_restore_with_missing_and_extra_arrays(modules, tmp_path):
    invoke("run", modules["gspmd"], "--steps", 1, "--save", tmp_path / "ck")
    index = (tmp_path / "ck" / "index.json").read_text()
    (tmp_path / "ck" / "index.json").write_text(index.replace('"params/b1"', '"params/bias"'))
    message = invoke_error("run", modules["gspmd"], "--restore", tmp_path / "ck")
    assert "parameter 'params/b1' is not in the checkpoint" in message
    assert "the checkpoint's parameter 'params/bias' is not in the module" in message


@pytest.mark.parametrize("args, expected", [
    (["--steps", 3], "error: --steps needs a train-step module (mtfc.step = \"train\"); "),
    (["--save", "ck", "--data", "d.npz"], "error: --data and --save need a train-step module"),
])
def test_train_options_on_a_forward_module(modules, args, expected):
    assert invoke_error("run", modules["forward"], *args).startswith(expected)


def test_forward_modules_run_as_before(modules, tmp_path):
    out = invoke("run", modules["forward"], "--repeat", 1, "--check", "--outputs", tmp_path / "o.npz")
    assert "check: passed" in out and "train step" not in out
    with np.load(tmp_path / "o.npz") as o:
        assert o["params/w1"].shape == (DI, DH)


@pytest.mark.parametrize("args, expected", [
    (["--data", "nope.npz"], "error: data file 'nope.npz' does not exist"),
    (["--data", "d.txt"], "error: data file 'd.txt': expected .npz (arrays by input name) or .npy (a token stream)"),
    (["--data", "bad.npz"], "error: bad.npz: array 'x' has shape (3, 8, 16), input 'x' [batch, d_in] is 16 x 8"),
    (["--data", "extra.npz"], "error: extra.npz: no input named 'z' (inputs: x, y)"),
    (["--data", "floats.npy"], "error: floats.npy: a .npy data file is a 1-D integer token stream"),
    (["--data", "ints.npy"], "error: ints.npy is a token stream, but the module has no input named 'tokens'"),
    (["--restore", "missing"], "error: checkpoint 'missing' does not exist"),
    (["--restore", "."], "error: '.' is not an mtfc checkpoint (no index.json)"),
    (["--save-every", 2], "error: --save-every needs --save DIR"),
    (["--steps", -1], "error: --steps must be >= 0, not -1"),
    (["--inputs", "d.npz"], "error: --inputs is for forward modules"),
])
def test_clear_errors(modules, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.txt").write_text("")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, B, DI), np.float32))
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 8, 16), np.float32))
    np.savez(tmp_path / "extra.npz", z=np.zeros(3))
    np.save(tmp_path / "floats.npy", np.zeros(10))
    np.save(tmp_path / "ints.npy", np.zeros(10, np.int32))
    assert invoke_error("run", modules["gspmd"], *args).startswith(expected)


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(modules, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("...")
    message = invoke_error("run", modules["gspmd"], "--steps", 1, "--save", tmp_path / "precious")
    assert "is a non-empty directory that is not an mtfc checkpoint" in message
    assert os.listdir(tmp_path / "precious") == ["thesis.tex"]


def test_progress_rewrites_one_line_on_a_terminal():
    """On a terminal: a tqdm bar rewritten in place (at most 10 redraws a
    second), with the step's fields, elapsed time and time left; `close`
    draws the latest step and ends the line."""
    import io

    stream, echoed = io.StringIO(), []
    progress = Progress(3, echoed.append, tty=True, stream=stream)
    for k in range(3):
        progress.update(StepRecord(k + 1, 1.0 / (k + 1), {}, 0.01))
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    last = text.split("\r")[-1]
    assert re.fullmatch(r"step 3 \(3/3\)  loss 0\.333333  10\.00 ms/step  \S{12}  00:00<00:00\n", last), last
    assert "step 2 (2/3)" not in text  # a millisecond after step 1: not redrawn
    assert echoed == []
    stream = io.StringIO()
    progress = Progress(5, echoed.append, tty=True, stream=stream)
    progress.update(StepRecord(1, 1.0, {}, 0.01))
    progress.update(StepRecord(2, 0.5, {}, 0.01))
    progress.close()  # before a save's message: the latest step is shown, the line ended
    assert re.search(r"\rstep 2 \(2/5\)  loss 0\.5  10\.00 ms/step  .{12}  00:00<00:00\n$", stream.getvalue())
    progress.update(StepRecord(3, 0.25, {}, 0.01))  # after a save: a new bar, counting from the first step
    progress.close()
    assert re.search(r"\rstep 3 \(3/5\)  loss 0\.25 .*\n$", stream.getvalue())


def test_progress_prints_lines_when_not_a_terminal():
    echoed = []
    progress = Progress(30, echoed.append, tty=False)
    for k in range(30):
        progress.update(StepRecord(k + 1, 1.0, {}, 0.01))
    assert [line.split()[1] for line in echoed] == ["1", "3", "6", "9", "12", "15", "18", "21", "24", "27", "30"]
    assert all(re.search(r"  elapsed \d\d:\d\d, left \d\d:\d\d$", line) for line in echoed), echoed[0]
    assert echoed[-1].endswith("left 00:00")
