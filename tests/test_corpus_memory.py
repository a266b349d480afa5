"""Sizes are checked before anything is allocated (mtfc/runtime/memory_check.py):
a module whose arrays cannot fit ends in one line naming the budget and the
largest arrays, for forward and train-step modules and for `--check`; and
compiling a huge model allocates nothing of its size."""

from __future__ import annotations

import tracemalloc

import pytest

from corpus import fails
from mtfc import ir as mir
from mtfc.compiler import compile_file
from mtfc.emit.artifact import write_module
from mtfc.errors import MtfcError
from mtfc.runtime import memory_check
from mtfc.runtime.execute import Program

BIG = """
import mtfc as mtf

batch, d_in, d_hidden = mtf.Dim("batch", 8), mtf.Dim("d_in", 2**20), mtf.Dim("d_hidden", 2**20)


@mtf.entry(inputs={"x": mtf.Input([batch, d_in])}, mesh="rows:2,cols:4", layout="batch:rows,d_hidden:cols")
def big(x):
    y = mtf.layers.dense(x, d_hidden, name="fc")
    return {"y": y, "loss": mtf.reduce_mean(y * y)}
"""


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.py"
    path.write_text(BIG)
    return str(path)


def test_compiling_a_huge_model_allocates_nothing_of_its_size(big_model):
    """A 4 TiB parameter is only a type while tracing, lowering and partitioning."""
    tracemalloc.start()
    try:
        compile_file(big_model, mode="explicit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, peak


@pytest.mark.parametrize("mode, extra", [("explicit", []), ("gspmd", ["--check"]), ("none", [])])
def test_oversized_module_fails_before_allocating(tmp_path, big_model, mode, extra):
    path = tmp_path / f"big-{mode}.mlir"
    write_module(compile_file(big_model, mode=mode), str(path))
    per_device = "[1048576, 262144]" if mode != "none" else "[1048576, 1048576]"
    fails(["run", path, *extra], ["does not fit", "argument 'params/fc/kernel'", per_device, "TiB",
                                  "available"], folder=tmp_path)


def test_oversized_train_step_fails_before_allocating(tmp_path, big_model):
    path = tmp_path / "big-train.mlir"
    write_module(compile_file(big_model, mode="explicit", train=True), str(path))
    fails(["run", path, "--steps", "1"], ["does not fit", "[1048576, 262144]", "TiB"], folder=tmp_path)


def test_xla_figure_is_checked_after_compiling(monkeypatch, tmp_path):
    """Temporaries count: XLA's own per-device figure is checked against the
    budget before any buffer exists (here a budget below it)."""
    import mtfc as mtf
    from mtfc.compiler import compile_function

    batch, d = mtf.Dim("batch", 64), mtf.Dim("d", 64)
    module = compile_function(lambda x: {"y": mtf.reduce_sum(mtf.exp(x), reduced_dim=d)},
                              {"x": mtf.Input([batch, d])}, mesh="rows:2", layout="batch:rows", mode="gspmd")
    program = Program(module)
    stats = program.executable.get_compiled_memory_stats()
    per_device = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                  - stats.alias_size_in_bytes)
    assert stats.temp_size_in_bytes > 0
    needs = program.memory_needs(mir.entry_function(module))
    enough = len(program.devices) * per_device + sum(n.global_bytes for n in needs)
    monkeypatch.setattr(memory_check, "host_available_bytes", lambda: enough)
    memory_check.check_compiled(stats, needs, program.devices, what="the gspmd program")  # fits exactly
    monkeypatch.setattr(memory_check, "host_available_bytes", lambda: enough - 1)
    with pytest.raises(MtfcError, match="the gspmd program does not fit: XLA needs .* on each of 2 CPU device"):
        memory_check.check_compiled(stats, needs, program.devices, what="the gspmd program")


def test_accelerator_budget_is_the_free_device_memory():
    class Device:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 1000, "bytes_in_use": 400}

    assert memory_check.device_available_bytes(Device()) == 600
    need = memory_check.ArrayNeed("argument 'w'", (10, 10), "f32", 800, 800)
    with pytest.raises(MtfcError, match=r"800 B per device, but there is 600 B free on each gpu device; "
                                        r"largest per device: argument 'w' \[10, 10\] f32 800 B"):
        memory_check.check_arrays([need], [Device()], what="the explicit program")
