"""`mtfc checkpoint export` / `info`, and the docs' code that reads a
checkpoint with orbax (docs/checkpoints.md, run exactly as written)."""

from __future__ import annotations

import json
import os
import re
import struct

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from corpus import fails
from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_file
from mtfc.emit.artifact import write_module
from mtfc.mesh import Mesh, TensorLayout
from mtfc.runtime import checkpoint

MODEL = '''
import mtfc as mtf
batch = mtf.Dim("batch", 4)
d = mtf.Dim("d", 8)
h = mtf.Dim("h", 16)


@mtf.entry(inputs={"x": mtf.Input([batch, d])}, mesh="rows:2,cols:2", layout="batch:rows,h:cols",
           optimizer="adamw:lr=0.01")
def model(x):
    y = mtf.layers.dense(x, h, name="fc")
    return {"loss": mtf.reduce_mean(mtf.square(y))}
'''
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "checkpoints.md")


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint of 3 steps of a small train step (f32 parameters, adamw state)."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "m.py").write_text(MODEL)
    write_module(compile_file(str(folder / "m.py"), mode="explicit", train=True), str(folder / "m.mlir"))
    invoke("run", folder / "m.mlir", "--steps", 3, "--save", folder / "ckpt")
    return folder / "ckpt"


def read_safetensors(path):
    """(header, name -> raw bytes) of a safetensors file, parsed by hand (the format's spec)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return header, {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()
                    if k != "__metadata__"}


def test_export_writes_the_parameters_by_name(ckpt, tmp_path):
    out = invoke("checkpoint", "export", ckpt, "-o", tmp_path / "p.safetensors")
    assert out.strip() == f"wrote {tmp_path / 'p.safetensors'}: 2 array(s), 576 bytes, step 3"
    header, raw = read_safetensors(tmp_path / "p.safetensors")
    index, values = checkpoint.read_all(ckpt)
    assert set(raw) == {"params/fc/kernel", "params/fc/bias"}
    for name in raw:
        assert header[name]["dtype"] == "F32" and header[name]["shape"] == list(values[name].shape)
        assert raw[name] == values[name].tobytes()
    assert header["__metadata__"]["step"] == "3" and header["__metadata__"]["model"] == "model"
    assert os.listdir(tmp_path) == ["p.safetensors"]  # no temporary left


def test_export_all_includes_the_optimizer_state(ckpt, tmp_path):
    invoke("checkpoint", "export", ckpt, "-o", tmp_path / "all.safetensors", "--all")
    import safetensors.numpy

    loaded = safetensors.numpy.load_file(str(tmp_path / "all.safetensors"))
    _, values = checkpoint.read_all(ckpt)
    assert set(loaded) == set(values)
    for name, value in values.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name


def test_export_keeps_bf16(tmp_path):
    """A bf16 array is exported as safetensors BF16: the same 16-bit patterns, not converted."""
    import jax

    bits = np.random.default_rng(3).standard_normal((4, 6)).astype(ml_dtypes.bfloat16)
    sig = mir.Signature(0, "params/w", "parameter", ["a", "b"], (4, 6), "bf16")
    layout = TensorLayout(("a", "b"), (4, 6), ((), ()), Mesh(()))
    checkpoint.save(str(tmp_path / "ck"), [checkpoint.Entry(sig, layout, jax.device_put(bits, jax.devices()[0]))],
                    {"step": 1})
    invoke("checkpoint", "export", tmp_path / "ck", "-o", tmp_path / "w.safetensors")
    header, raw = read_safetensors(tmp_path / "w.safetensors")
    assert header["params/w"]["dtype"] == "BF16" and raw["params/w"] == bits.view(np.uint16).tobytes()


@pytest.mark.parametrize("args, fragment", [
    (["missing", "-o", "p.safetensors"], "error: checkpoint 'missing' does not exist"),
    (["ckpt", "-o", "."], "error: '.': Is a directory"),
    (["notackpt", "-o", "p.safetensors"], "error: 'notackpt' is not an mtfc checkpoint (no index.json)"),
])
def test_export_errors(ckpt, tmp_path, monkeypatch, args, fragment):
    import shutil

    shutil.copytree(ckpt, tmp_path / "ckpt")
    (tmp_path / "notackpt").mkdir()
    monkeypatch.chdir(tmp_path)
    fails(["checkpoint", "export", *args], [fragment], folder=tmp_path)


def test_info(ckpt):
    lines = invoke("checkpoint", "info", ckpt).splitlines()
    assert lines[0] == f"checkpoint {ckpt}: format version 3, step 3"
    assert "  mesh: rows:2,cols:2" in lines and "  processes: 1" in lines
    row = next(line for line in lines if line.strip().startswith("params/fc/kernel"))
    assert row.split() == ["params/fc/kernel", "parameter", "f32", "8x16", "h:cols", "2"]
    assert lines[-1] == "  144 parameter values"


def test_the_docs_read_a_checkpoint_with_orbax(ckpt, monkeypatch, capsys):
    """The code block of docs/checkpoints.md, run as written in the folder holding `ckpt`."""
    text = open(DOCS).read()
    code = re.search(r"<!-- snippet: read-with-orbax -->\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(ckpt.parent)
    namespace: dict = {}
    exec(compile(code, DOCS, "exec"), namespace)  # noqa: S102 - the documented snippet itself
    _, values = checkpoint.read_all(ckpt)
    arrays = namespace["arrays"]
    for name, value in values.items():
        leaf = arrays
        for key in name.split("/"):
            leaf = leaf[key]
        assert isinstance(leaf, np.ndarray) and leaf.dtype == value.dtype and np.array_equal(leaf, value), name
    assert capsys.readouterr().out.strip() == "float32 (8, 16)"
