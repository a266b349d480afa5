"""`mtfc eval MODEL.py`: run a model file op by op on the host (`mtfc.frontend.eager`)
and summarize its outputs as `mtfc run` does.

The arguments are those `mtfc run` feeds the compiled module for the same
``--seed``: synthesized by name, dims, dtype and initializer, or given by
name in ``--inputs FILE.npz``; with ``--train``, one train step from the
state `mtfc run` starts from and the batch of its step 0.  The outputs match
the compiled unsharded run's within `mtfc.runtime.check`'s tolerances (a
train step's as `mtfc run --check` judges them, `check_step`).
"""

from __future__ import annotations

import io
import time
from typing import Callable

import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.files.atomic import check_writable, write_bytes_atomic
from mtfc.runtime.forward import checksum
from mtfc.runtime.tables import table


def _check_given(path: str, given: dict[str, np.ndarray]) -> Callable:
    """The check an ``--inputs`` array passes before an eager run uses it (dtype, integer range)."""
    from mtfc.runtime.data import check_dtype, check_values

    def check(variable, array):
        sig = mir.Signature(0, variable.name, variable.role, list(variable.tensor.shape.names),
                            variable.tensor.shape.sizes, variable.tensor.dtype, variable.init)
        check_dtype(f"{path}: array {variable.name!r}", array)
        check_values(f"{path}: array {variable.name!r}", np.asarray(array), sig, None)

    return check


def _check_names_and_ranges(path: str, given: dict[str, np.ndarray], result) -> None:
    """Every array of the ``--inputs`` file names an argument of the model, and
    integer arrays lie in the range their argument indexes (``mtfc.range``,
    read from the lowered global module as `mtfc run` does)."""
    from mtfc.frontend.lower import lower_graph
    from mtfc.index_ranges import argument_ranges
    from mtfc.mesh import LayoutRules, Mesh
    from mtfc.runtime.data import check_values

    known = {v.name: v for v in result.graph.variables}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise MtfcError(f"{path}: no argument named {unknown[0]!r} (arguments: {', '.join(sorted(known))})")
    if not any(np.asarray(a).dtype.kind in "iu" for a in given.values()):
        return
    module = lower_graph(result.graph, result.tensors, mesh=Mesh(()), layout=LayoutRules(), model_name="eager",
                         output_roles=result.roles)
    ranges = argument_ranges(module)
    for sig in mir.arguments(module):
        if sig.name in given and sig.name in ranges:
            check_values(f"{path}: array {sig.name!r}", np.asarray(given[sig.name]), sig, ranges[sig.name])


def eval_command(model: str, *, entry_name: str | None = None, defines: dict | None = None, seed: int = 0,
                 inputs_file: str | None = None, outputs_file: str | None = None, train: bool = False,
                 optimizer: str | None = None, precision: str | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, np.ndarray]:
    """Run `model` eagerly, print each output (dims, shape, dtype, checksum),
    write ``--outputs``; return the outputs (name -> array)."""
    from mtfc.frontend.eager import eval_entry
    from mtfc.frontend.model import load_model_file
    from mtfc.runtime import devices as rt_devices
    from mtfc.runtime.file_sources import open_npz

    if outputs_file:
        check_writable(outputs_file)
    given = open_npz(inputs_file, "inputs") if inputs_file else {}
    entry = load_model_file(model, entry_name, defines)
    rt_devices.ensure_cpu_devices(1)
    start = time.perf_counter()
    result = eval_entry(entry, seed=seed, inputs=given, train=train, optimizer=optimizer, precision=precision,
                        path=model, check=_check_given(inputs_file, given) if given else None)
    seconds = time.perf_counter() - start
    if given:
        _check_names_and_ranges(inputs_file, given, result)
    what = "one train step" if train else "forward"
    echo(f"model {model}: eager ({what}, op by op), 1 cpu device")
    rows = [("output", "dims", "shape", "dtype", "checksum")]
    for name, t in result.tensors.items():
        rows.append((name, "[" + ",".join(t.shape.names) + "]", "x".join(map(str, t.shape.sizes)) or "scalar",
                     t.dtype, checksum(result.outputs[name])))
    echo(table(rows))
    ev = result.evaluator
    echo(f"{ev.ops_evaluated} op(s) evaluated, {ev.compiled} compiled, {seconds:.2f} s")
    if train and result.dropped:
        from mtfc.errors import warn

        warn(f"entry {entry.name!r}: the train step drops the non-scalar output(s) " + ", ".join(result.dropped)
             + " (a train step's results are the loss, scalar outputs as metrics, and the new state)")
    if outputs_file:
        buffer = io.BytesIO()
        np.savez(buffer, **result.outputs)
        write_bytes_atomic(outputs_file, buffer.getvalue())
        echo(f"wrote {outputs_file}")
    return result.outputs
