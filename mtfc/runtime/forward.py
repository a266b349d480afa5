"""`mtfc run` of a forward module: feed it, run it on its mesh, summarize, check.

In a multi-process job every process feeds its own devices' shards and runs
the program; the outputs are gathered, and process 0 alone prints the
summary, runs the ``--check`` reference (the unsharded program on its first
device) and writes ``--outputs``.  Taps (results with role ``tap``,
`mtfc.frontend.tap`) are results like the others: in the table (with their
dims), checked, and saved (`outputs_npz`: with the ``mtfc.dims`` entry)."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from mtfc import ir as mir
from mtfc.files.modules import read_module
from mtfc.files.atomic import write_bytes_atomic
from mtfc.errors import MtfcError
from mtfc.index_ranges import argument_ranges
from mtfc.runtime import devices as rt_devices
from mtfc.runtime import distributed
from mtfc.runtime.check import compare
from mtfc.runtime.data import check_dtype, check_values
from mtfc.runtime.execute import Program
from mtfc.runtime.file_sources import FileSource, open_npz
from mtfc.runtime.sources import HostSource, as_source, materialize
from mtfc.runtime.synthetic import synthetic_sources
from mtfc.runtime.tables import table


def load_inputs(path: str, program: Program, seed: int, ranges: dict | None = None) -> dict[str, HostSource]:
    """Argument name -> source: the arrays of .npz `path` by name (memory-mapped,
    `mtfc.runtime.file_sources`: a block reads only its own rows), cast to
    their argument's dtype; any argument the file lacks is synthesized from
    `seed`.  Every given array is checked whole here, in every process, before
    any is used: it must hold numbers, and integers must fit their argument's
    dtype and `ranges` (name -> ``mtfc.range``, `mtfc.index_ranges`)."""
    given = open_npz(path, "inputs")
    known = {s.name for s in program.arguments}
    unknown = sorted(set(given) - known)
    if unknown:
        raise MtfcError(f"{path}: no argument named {unknown[0]!r} (arguments: {', '.join(sorted(known))})")
    ranges = ranges or {}
    inputs: dict[str, HostSource] = synthetic_sources(program.arguments, seed)
    for sig in program.arguments:
        if sig.name in given:
            check_dtype(f"{path}: array {sig.name!r}", given[sig.name])
            check_values(f"{path}: array {sig.name!r}", given[sig.name], sig, ranges.get(sig.name))
            inputs[sig.name] = FileSource(given[sig.name], mir.numpy_dtype(sig.dtype))
    return inputs


DIMS_KEY = "mtfc.dims"  # the --outputs entry naming each saved array's dims, in a module with taps


def outputs_npz(values: dict[str, np.ndarray], signatures) -> bytes:
    """The ``--outputs`` file: `values` by name; when some of `signatures`
    (the module's results) are taps (role ``tap``), also the entry
    ``mtfc.dims``: a JSON object, saved array name -> its dims (read it with
    ``json.loads(str(np.load(FILE)["mtfc.dims"]))``)."""
    import json

    dims = {s.name: list(s.dims) for s in signatures if s.name in values}
    extra = {}
    if any(s.role == "tap" for s in signatures):
        if DIMS_KEY in values:
            raise MtfcError(f"--outputs: a result is named {DIMS_KEY!r}, the entry that names the saved arrays' dims")
        extra[DIMS_KEY] = np.array(json.dumps(dims))
    buffer = io.BytesIO()
    np.savez(buffer, **values, **extra)
    return buffer.getvalue()


def result_rows(signatures, values: dict[str, np.ndarray], header: str = "output") -> list[tuple]:
    """The summary table's rows: name, dims, shape, dtype, checksum of each result in `values`."""
    rows = [(header, "dims", "shape", "dtype", "checksum")]
    for sig in signatures:
        if sig.name in values:
            rows.append((sig.name, "[" + ",".join(sig.dims) + "]", "x".join(map(str, sig.shape)) or "scalar",
                         sig.dtype, checksum(values[sig.name])))
    return rows


def checksum(array: np.ndarray) -> str:
    a = np.asarray(array, dtype=np.float64)
    return f"sum={a.sum():.6g} mean|x|={np.abs(a).mean() if a.size else 0.0:.6g}"


def run_command(
    module_file: str,
    *,
    backend: str = "cpu",
    seed: int = 0,
    inputs_file: str | None = None,
    outputs_file: str | None = None,
    check: bool = False,
    repeat: int = 3,
    echo: Callable[[str], None] = print,
    module=None,
) -> bool:
    """Run `module_file` (already read: `module`); return False when `check` finds a mismatch."""
    if module is None:
        module = read_module(module_file, mir.new_context())
    kind = mir.partitioning(module)
    mesh = mir.module_mesh(module)
    if backend == "cpu":
        rt_devices.ensure_cpu_devices(max(mesh.size, 1))
    program = Program(module, backend=backend, unsharded=kind == "none")
    distributed.wait_for_all("mtfc-compiled")  # processes compile at their own pace; steps start together
    inputs = (load_inputs(inputs_file, program, seed, argument_ranges(module)) if inputs_file
              else synthetic_sources(program.arguments, seed))
    result = program.run(inputs, repeat=repeat)

    job = distributed.current_job()
    processes = f" in {job.num_processes} processes" if job.is_multi_process else ""
    where = (f"{mesh.size} {backend} device(s){processes}, mesh {mesh or '(none)'}" if kind != "none"
             else f"1 {backend} device")
    echo(f"module {module_file}: partitioning {kind}, {where}")
    echo(f"layout: {mir.module_layout(module) or '(replicated)'}")
    echo(table(result_rows(program.results, result.outputs)))
    echo(f"compile {result.compile_seconds * 1e3:.1f} ms, step {result.step_seconds * 1e3:.3f} ms (median of {repeat})")

    if not distributed.is_primary():
        return True  # process 0 checks and writes
    ok = True
    if check:
        whole = {name: materialize(as_source(value)) for name, value in inputs.items()}
        reference = Program(module, backend=backend, unsharded=True).run(whole, repeat=1)
        rows = [("output", "max rel err", "tolerance", "status")]
        for sig in program.results:
            c = compare(sig.name, sig.dtype, result.outputs[sig.name], reference.outputs[sig.name])
            rows.append((sig.name, f"{c.error:.3e}", f"{c.tolerance:.0e}", "ok" if c.ok else "MISMATCH"))
            ok &= c.ok
        echo("check against the unsharded run on 1 device:")
        echo(table(rows))
        echo("check: " + ("passed" if ok else "FAILED"))
    if outputs_file:
        write_bytes_atomic(outputs_file, outputs_npz(result.outputs, program.results))
        echo(f"wrote {outputs_file}")
    return ok
