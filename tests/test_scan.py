"""Stacked layers: `mtf.scan` and `mtf.layers.repeat` (one `stablehlo.while`).

The scanned model is compared with the same model unrolled (``unroll=True``:
the same stacked parameters, each trip traced separately) -- forward,
gradients and three train steps -- under data, tensor and FSDP layouts in
every mode; with a plain-JAX reference written here (`jax.lax.scan` over the
stacked weights); and the loop's own semantics (xs, ys, reverse, captures,
nesting) against NumPy.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import mtfc as mtf
from conftest import assert_close, run_train_steps
from mtfc.cli import main
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError
from mtfc.runtime.execute import Program

MODES = ("explicit", "gspmd", "shardy")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXAMPLE = os.path.join(ROOT, "examples", "transformer.py")
BATCH, D, F, L = 8, 16, 32, 3
batch, d_model, d_ff = mtf.Dim("batch", BATCH), mtf.Dim("d_model", D), mtf.Dim("d_ff", F)
INPUTS = {"x": mtf.Input([batch, d_model]), "t": mtf.Input([batch, d_model])}
LAYOUTS = {
    "data": dict(layout="batch:rows+cols"),
    "tensor": dict(layout="batch:rows,d_ff:cols"),
    "fsdp": dict(layout="batch:rows+cols", param_layout="d_model:rows+cols"),
}


def block(x):
    h = mtf.layers.dense(mtf.layers.layer_norm(x, d_model), d_ff, [d_model], activation=mtf.tanh, name="wi")
    return x + mtf.layers.dense(h, d_model, [d_ff], name="wo")


def residual_mlp(unroll=False, recompute=False):
    def model(x, t):
        y = mtf.layers.repeat(block, x, L, unroll=unroll, recompute=recompute)
        return {"y": y, "loss": mtf.reduce_mean(mtf.square(y - t))}
    return model


def reference(params, x, t):
    """The model in plain JAX: lax.scan over the stacked weights."""
    def layer(h, p):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        n = (h - mean) / jnp.sqrt(var + 1e-6) * p["ln_s"] + p["ln_b"]
        u = jnp.tanh(n @ p["wi"] + p["bi"])
        return h + u @ p["wo"] + p["bo"], None
    stacked = {"ln_s": params["params/blocks/layer_norm/scale"], "ln_b": params["params/blocks/layer_norm/bias"],
               "wi": params["params/blocks/wi/kernel"], "bi": params["params/blocks/wi/bias"],
               "wo": params["params/blocks/wo/kernel"], "bo": params["params/blocks/wo/bias"]}
    y, _ = jax.lax.scan(layer, x, stacked)
    return y, jnp.mean((y - t) ** 2)


def _random_params(program, seed=5):
    """Synthesized inputs with non-trivial layer-norm parameters and biases."""
    data = program.synthesize_inputs(seed)
    rng = np.random.default_rng(seed)
    for name in list(data):
        if name.endswith(("/bias", "/scale")):
            data[name] = (rng.standard_normal(data[name].shape) * 0.3 + (1.0 if name.endswith("scale") else 0)).astype(np.float32)
    return data


def test_forward_and_gradients_equal_lax_scan():
    module = compile_function(residual_mlp(), INPUTS, mesh="rows:2,cols:4", layout="batch:rows,d_ff:cols", mode="none")
    program = Program(module, unsharded=True)
    data = _random_params(program)
    out = program.run(data).outputs
    y, loss = reference(data, data["x"], data["t"])
    assert_close(out["y"], y)
    assert_close(out["loss"], loss)

    def grad_model(x, t):
        model = residual_mlp()(x, t)
        grads = mtf.grad(model["loss"], mtf.trainable_variables())
        return {f"d/{k}": g for k, g in grads.items()}

    gmod = compile_function(grad_model, INPUTS, mesh="rows:2,cols:4", layout="", mode="none")
    got = Program(gmod, unsharded=True).run(data).outputs
    params = {k: jnp.asarray(v) for k, v in data.items() if k.startswith("params/")}
    want = jax.grad(lambda p: reference(p, data["x"], data["t"])[1])(params)
    for name, g in want.items():
        assert_close(got[f"d/{name}"], g)


def test_parameters_are_stacked_by_name():
    module = compile_function(residual_mlp(), INPUTS, mesh="rows:2,cols:4", layout="", mode="none")
    from mtfc import ir as mir

    params = {s.name: (s.dims, s.shape) for s in mir.arguments(module) if s.role == "parameter"}
    assert params == {
        "params/blocks/layer_norm/scale": (["layers", "d_model"], (L, D)),
        "params/blocks/layer_norm/bias": (["layers", "d_model"], (L, D)),
        "params/blocks/wi/kernel": (["layers", "d_model", "d_ff"], (L, D, F)),
        "params/blocks/wi/bias": (["layers", "d_ff"], (L, F)),
        "params/blocks/wo/kernel": (["layers", "d_ff", "d_model"], (L, F, D)),
        "params/blocks/wo/bias": (["layers", "d_model"], (L, D)),
    }
    text = str(module)
    assert text.count("stablehlo.while") == 1
    assert 'mtfc.loop_dim = "layers"' in text and "mtfc.trip_count = 3" in text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_scanned_equals_unrolled_forward(mode, layout):
    outs = []
    for unroll in (False, True):
        module = compile_function(residual_mlp(unroll), INPUTS, mesh="rows:2,cols:4", mode=mode, **LAYOUTS[layout])
        program = Program(module)
        data = _random_params(program)
        sharded = program.run(data).outputs
        unsharded = Program(module, unsharded=True).run(data).outputs
        for k in sharded:
            assert_close(sharded[k], unsharded[k])
        outs.append(sharded)
    for k in outs[0]:
        assert_close(outs[0][k], outs[1][k])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_scanned_equals_unrolled_three_train_steps(mode, layout):
    runs = {}
    for unroll, recompute in ((False, False), (False, True), (True, False)):
        module = compile_function(residual_mlp(unroll, recompute), INPUTS, mesh="rows:2,cols:4", mode=mode, train=True,
                                  optimizer="sgd:lr=0.1,momentum=0.9", **LAYOUTS[layout])
        _, steps = run_train_steps(module, 3)
        _, unsharded = run_train_steps(module, 3, unsharded=True)
        for got, want in zip(steps, unsharded):
            for k in want:
                assert_close(got[k], want[k])
        runs[(unroll, recompute)] = steps
    base = runs[(True, False)]
    for key, steps in runs.items():
        for got, want in zip(steps, base):
            assert set(got) == set(want)
            for k in want:
                assert_close(got[k], want[k])


def _while_results(module) -> list[int]:
    return [len(op.results) for op in _whiles(module)]


def _whiles(module):
    from mtfc import ir as mir

    return [op for op in mir.walk_ops(mir.entry_function(module)) if op.name == "stablehlo.while"]


def test_recompute_saves_only_each_layers_input():
    """Without recompute the forward loop stores the block's intermediates the
    gradient reads; with it, only each trip's incoming carry (one stacked
    [layers, batch, d_model]), the backward loop recomputing the block."""
    saved = {}
    for recompute in (False, True):
        module = compile_function(residual_mlp(recompute=recompute), INPUTS, mesh="rows:2,cols:4", layout="",
                                  mode="none", train=True, optimizer="sgd:lr=0.1")
        forward, backward = _whiles(module)
        from mtfc import ir as mir

        dims = mir.op_result_dims(forward)
        n_params = 6
        # counter, carry, saved stacked values..., stacked parameters
        saved[recompute] = dims[2:len(dims) - n_params]
    assert saved[True] == [["layers", "batch", "d_model"]]
    assert len(saved[False]) > 1 and all(d[0] == "layers" for d in saved[False])
    assert ["layers", "batch", "d_model"] in saved[False]


def test_recompute_context_composes_with_repeat():
    def model(x, t):
        with mtf.recompute():
            y = mtf.layers.repeat(block, x, L)
        return {"loss": mtf.reduce_mean(mtf.square(y - t))}

    module = compile_function(model, INPUTS, mesh="rows:2,cols:4", layout="", mode="none", train=True,
                              optimizer="sgd:lr=0.1")
    from mtfc import ir as mir

    forward = _whiles(module)[0]
    assert mir.op_result_dims(forward)[2:3] == [["layers", "batch", "d_model"]]
    assert len(mir.op_result_dims(forward)) == 2 + 1 + 6
    _, steps = run_train_steps(module, 2, unsharded=True)
    plain = compile_function(residual_mlp(unroll=True), INPUTS, mesh="rows:2,cols:4", layout="", mode="none",
                             train=True, optimizer="sgd:lr=0.1")
    _, want = run_train_steps(plain, 2, unsharded=True)
    for got, ref in zip(steps, want):
        assert_close(got["loss"], ref["loss"])


# -- the loop's own semantics -------------------------------------------------------------------------

steps_dim = mtf.Dim("steps", 5)


def _run_none(fn, inputs, data=None):
    module = compile_function(fn, inputs, mesh="rows:2,cols:4", layout="", mode="none")
    program = Program(module, unsharded=True)
    feed = program.synthesize_inputs(0)
    feed.update(data or {})
    return program.run(feed).outputs, feed


@pytest.mark.parametrize("reverse", [False, True])
def test_xs_ys_and_reverse_against_numpy(reverse):
    """A running sum over `steps` (carry) with per-step outputs (ys), xs with
    the loop dim in the middle, and a captured scale."""
    inputs = {"xs": mtf.Input([batch, steps_dim, d_model]), "s": mtf.Input([d_model])}

    def model(xs, s):
        def step(c, x):
            c = c * 0.5 + x * s
            return c, {"c": c, "sq": mtf.square(x)}
        c, ys = mtf.scan(step, mtf.zeros([batch, d_model]), xs, dim=steps_dim, reverse=reverse)
        return {"c": c, "ys_c": ys["c"], "ys_sq": ys["sq"]}

    out, feed = _run_none(model, inputs)
    xs, s = feed["xs"].astype(np.float64), feed["s"].astype(np.float64)
    c = np.zeros((BATCH, D))
    ys = [None] * 5
    for k in (reversed(range(5)) if reverse else range(5)):
        c = c * 0.5 + xs[:, k] * s
        ys[k] = c
    assert_close(out["c"], c)
    assert_close(out["ys_c"], np.stack(ys))  # stacked with the loop dim first
    assert_close(out["ys_sq"], np.moveaxis(xs, 1, 0) ** 2)


def test_gradients_through_xs_carry_and_captures_equal_unrolled():
    inputs = {"xs": mtf.Input([steps_dim, batch, d_model]), "s": mtf.Input([d_model]), "c0": mtf.Input([batch, d_model])}

    def make(unroll):
        def model(xs, s, c0):
            def step(c, x):
                c = mtf.tanh(c * s + x)
                return c, mtf.reduce_sum(c * x, d_model)
            c, ys = mtf.scan(step, c0, xs, dim=steps_dim, unroll=unroll)
            loss = mtf.reduce_sum(mtf.square(c)) + mtf.reduce_sum(ys * ys)
            g = mtf.grad(loss, [xs, s, c0])
            return {"loss": loss, "dxs": g[0], "ds": g[1], "dc0": g[2]}
        return model

    scanned, feed = _run_none(make(False), inputs)
    unrolled, _ = _run_none(make(True), inputs, feed)
    for k in unrolled:
        assert_close(scanned[k], unrolled[k])

    def ref(xs, s, c0):
        def step(c, x):
            c = jnp.tanh(c * s + x)
            return c, (c * x).sum(-1)
        c, ys = jax.lax.scan(step, c0, xs)
        return (c ** 2).sum() + (ys ** 2).sum()
    grads = jax.grad(ref, argnums=(0, 1, 2))(feed["xs"], feed["s"], feed["c0"])
    for k, g in zip(("dxs", "ds", "dc0"), grads):
        assert_close(scanned[k], g)


def test_nested_loops_and_stacked_variables_equal_unrolled():
    """A repeat inside a scan inside `stack_variables`: parameters
    [stages, outer, layers, ...]; forward and gradients equal unrolled."""
    stages, outer = mtf.Dim("stages", 2), mtf.Dim("outer", 2)
    inputs = {"x": mtf.Input([stages, batch, d_model])}

    def make(unroll):
        def model(x):
            with mtf.stack_variables(stages):
                def step(c, _):
                    return mtf.layers.repeat(block, c, 2, unroll=unroll), None
                y, _ = mtf.scan(step, x, dim=outer, unroll=unroll)
            loss = mtf.reduce_mean(mtf.square(y))
            grads = mtf.grad(loss, mtf.trainable_variables())
            return {"loss": loss, **{f"d/{k}": g for k, g in grads.items()}}
        return model

    scanned, feed = _run_none(make(False), inputs)
    unrolled, _ = _run_none(make(True), inputs, feed)
    assert set(scanned) == set(unrolled)
    assert scanned["d/params/blocks/wi/kernel"].shape == (2, 2, 2, D, F)
    for k in unrolled:
        assert_close(scanned[k], unrolled[k])


def test_bf16_train_step_equals_unrolled():
    runs = []
    for unroll in (False, True):
        module = compile_function(residual_mlp(unroll), INPUTS, mesh="rows:2,cols:4", layout="batch:rows,d_ff:cols",
                                  mode="explicit", train=True, precision="bf16", optimizer="sgd:lr=0.1,momentum=0.9")
        runs.append(run_train_steps(module, 3)[1])
    for got, want in zip(*runs):
        for k in want:
            assert_close(got[k], want[k], "bf16")


# -- errors --------------------------------------------------------------------------------------------


def _error(fn, inputs=INPUTS, **kwargs) -> str:
    with pytest.raises(MtfcError) as e:
        compile_function(fn, inputs, mesh="rows:2,cols:4", **kwargs)
    text = str(e.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", ["layout", "param_layout"])
def test_a_split_layers_dim_is_one_line(mode, rule):
    kwargs = {"layout": "batch:rows", "param_layout": None}
    kwargs[rule] = "layers:cols" if rule == "param_layout" else "batch:rows,layers:cols"
    text = _error(residual_mlp(), mode=mode, **kwargs)
    assert "splits the dim 'layers' that the loop at blocks/scan" in text and "test_scan.py" in text


def test_body_mistakes_are_one_line_errors():
    def wrong_carry(x, t):
        return {"y": mtf.layers.repeat(lambda h: mtf.reduce_sum(h, d_model), x, 2)}
    assert "a loop's carry keeps its dims and dtype" in _error(wrong_carry, layout="")

    leaked = []

    def leak(x, t):
        def body(h):
            leaked.append(h * 2.0)
            return h
        y = mtf.layers.repeat(body, x, 2)
        return {"y": y + leaked[0]}
    assert "computed inside a loop body" in _error(leak, layout="")

    def no_dim(x, t):
        c, _ = mtf.scan(lambda c, x: (c, None), x, t, dim=steps_dim)
        return {"y": c}
    assert "has no loop dim 'steps'" in _error(no_dim, layout="")

    def bad_n(x, t):
        return {"y": mtf.layers.repeat(block, x, 0)}
    assert "positive int" in _error(bad_n, layout="")


def test_define_sets_the_depth_of_the_example(tmp_path):
    out = tmp_path / "t.mlir"
    result = CliRunner().invoke(main, ["compile", EXAMPLE, "-D", "SCAN=True", "-D", "N_LAYERS=5",
                                       "--mode", "none", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.count("stablehlo.while") == 1 and "mtfc.trip_count = 5" in text
    assert 'mtfc.name = "params/blocks/attention/w_q"' in text
    for args, message in ((["-D", "N_LAYER=4"], "has no module-level name 'N_LAYER'"),
                          (["-D", "N_LAYERS=4.5"], "N_LAYERS is int (2), not float"),
                          (["-D", "N_LAYERS"], "expected NAME=VALUE"),
                          (["-D", "N_LAYERS=four"], "is not a Python literal")):
        result = CliRunner().invoke(main, ["compile", EXAMPLE, *args, "-o", str(out)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_checkpoint_stores_stacked_arrays_by_name(tmp_path):
    from mtfc.runtime import checkpoint

    train = tmp_path / "train.mlir"
    args = ["compile", EXAMPLE, "-D", "SCAN=True", "-D", "N_LAYERS=3", "--train", "-o", str(train)]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, ["run", str(train), "--steps", "2", "--save", str(tmp_path / "ck"),
                                       "--data", os.path.join(ROOT, "examples", "data", "tokens.npy")])
    assert result.exit_code == 0, result.output
    index, values = checkpoint.read_all(tmp_path / "ck")
    assert values["params/blocks/attention/w_q"].shape == (3, 64, 4, 16)
    assert values["params/blocks/feed_forward/wi/kernel"].shape == (3, 64, 256)
    assert index["step"] == 2


def test_unstacked_variables_are_shared_by_every_trip():
    """stack_variables=False: one parameter read by every trip, scanned or unrolled."""
    inputs = {"xs": mtf.Input([steps_dim, batch, d_model])}

    def make(unroll):
        def model(xs):
            def step(c, x):
                w = mtf.get_variable("w", [d_model], initializer="normal:0.5")
                return mtf.tanh(c * w + x), None
            c, _ = mtf.scan(step, mtf.zeros([batch, d_model]), xs, dim=steps_dim, stack_variables=False, unroll=unroll)
            loss = mtf.reduce_sum(mtf.square(c))
            return {"loss": loss, "dw": mtf.grad(loss, mtf.trainable_variables())["params/w"]}
        return model

    scanned, feed = _run_none(make(False), inputs)
    unrolled, _ = _run_none(make(True), inputs, feed)
    assert feed["params/w"].shape == (D,)
    for k in unrolled:
        assert_close(scanned[k], unrolled[k])


def _example_transformer(scan: bool, unroll: bool, recompute: bool = False):
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_transformer_for_scan", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    dims = dict(vocab=example.vocab, d_model=example.d_model, heads=example.heads, d_kv=example.d_kv, d_ff=example.d_ff)

    def model(tokens, targets):
        return example.decoder(tokens, targets, n_layers=3, scan=scan, unroll=unroll, recompute=recompute, **dims)

    inputs = {k: v for k, v in example.transformer.inputs.items()}
    return model, inputs


@pytest.mark.parametrize("mode", MODES)
def test_transformer_scanned_equals_unrolled_train_steps(mode):
    """The example's block (attention with a causal mask captured by the
    loop, feed-forward, layer norms) scanned, scanned with recompute, and
    unrolled over the same stacked parameters: the same three SGD steps
    (momentum; AdamW's first step, about lr * sign(g), would turn rounding
    noise in a near-zero gradient into differences of 2 lr)."""
    runs = []
    for unroll, recompute in ((False, False), (False, True), (True, False)):
        fn, inputs = _example_transformer(True, unroll, recompute)
        module = compile_function(fn, inputs, mesh="rows:2,cols:4", layout="batch:rows,heads:cols,d_ff:cols", mode=mode,
                                  train=True, optimizer="sgd:lr=0.1,momentum=0.9")
        _, steps = run_train_steps(module, 3)
        runs.append(steps)
    for other in runs[:2]:
        for got, want in zip(other, runs[2]):
            for k in want:
                assert_close(got[k], want[k])


def _per_layer(model_layers: int):
    """`residual_mlp`'s layers as separate, unstacked parameters (``params/block<i>/...``)."""
    def model(x, t):
        y = x
        for i in range(model_layers):
            with mtf.scope(f"block{i}"):
                y = block(y)
        return {"y": y, "loss": mtf.reduce_mean(mtf.square(y - t))}
    return model


def _numpy_adafactor(p, g, t, lr, decay_rate=0.8, eps1=1e-30, clip_rms=1.0, vr=None, vc=None):
    """One Adafactor step of one (unstacked) 2-D or 1-D parameter, written
    from the paper (no momentum; factored over the two largest dims)."""
    decay = 1.0 - t ** -decay_rate
    g2 = g * g + eps1
    if g.ndim == 2 and min(g.shape) > 1:
        a, b = sorted(range(2), key=lambda i: -g.shape[i])[:2]
        vr = (vr if vr is not None else 0) * decay + g2.mean(axis=b) * (1 - decay)
        vc = (vc if vc is not None else 0) * decay + g2.mean(axis=a) * (1 - decay)
        v = np.expand_dims(vr, b) * np.expand_dims(vc, a) / vr.mean()
    else:
        vr = (vr if vr is not None else 0) * decay + g2 * (1 - decay)
        v = vr
    u = g / np.sqrt(v)
    u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip_rms)
    return p - lr * u


@pytest.mark.parametrize("mode", ("explicit", "shardy"))
def test_adafactor_updates_each_stacked_layer_as_its_own_parameter(mode):
    """Adafactor keeps per-parameter statistics (factored second moments, RMS
    clipping): a scanned stack must be updated layer by layer, as the same
    layers with parameters of their own are -- not as one big tensor whose
    largest dims may include ``layers``.  Three steps, the scanned model
    against the per-layer one from the same values, and the first step
    against NumPy."""
    optimizer = "adafactor:lr=0.05,clip=0"
    kw = dict(mesh="rows:2,cols:4", layout="batch:rows,d_ff:cols", mode=mode, train=True, optimizer=optimizer)
    flat_p = Program(compile_function(_per_layer(L), INPUTS, **kw))
    scan_p = Program(compile_function(residual_mlp(), INPUTS, **kw))
    flat = _random_params(flat_p)
    scanned = scan_p.synthesize_inputs(0)
    for sig in scan_p.arguments:
        m = re.fullmatch(r"params/blocks/(.*)", sig.name)
        if m:
            scanned[sig.name] = np.stack([flat[f"params/block{i}/{m.group(1)}"] for i in range(L)])
        elif sig.name in flat:
            scanned[sig.name] = flat[sig.name]
    want, got = dict(flat), dict(scanned)
    for step in range(3):
        out_flat = flat_p.run(want).outputs
        out_scan = scan_p.run(got).outputs
        assert_close(out_scan["loss"], out_flat["loss"])
        for sig in flat_p.arguments:
            if sig.role in ("parameter", "optimizer_state"):
                want[sig.name] = out_flat[sig.name]
        for sig in scan_p.arguments:
            if sig.role in ("parameter", "optimizer_state"):
                got[sig.name] = out_scan[sig.name]
        for name in scanned:
            m = re.fullmatch(r"params/blocks/(.*)", name)
            if m:
                assert_close(got[name], np.stack([want[f"params/block{i}/{m.group(1)}"] for i in range(L)]))
        if step == 0:  # the update of every parameter of the per-layer model, from its gradient, in NumPy
            grads = jax.grad(lambda ps: reference(ps, flat["x"], flat["t"])[1])(
                {k: np.stack([flat[f"params/block{i}/{k.split('/', 2)[2]}"] for i in range(L)])
                 for k in ("params/blocks/layer_norm/scale", "params/blocks/layer_norm/bias",
                           "params/blocks/wi/kernel", "params/blocks/wi/bias",
                           "params/blocks/wo/kernel", "params/blocks/wo/bias")})
            for k, g in grads.items():
                for i in range(L):
                    name = f"params/block{i}/{k.split('/', 2)[2]}"
                    expected = _numpy_adafactor(flat[name], np.asarray(g[i], np.float64), 1.0, 0.05)
                    assert_close(want[name], expected)
