"""Model files: the entry function, its inputs, its parameters, and tracing.

A model file is plain Python::

    import mtfc as mtf
    batch, d_in = mtf.Dim("batch", 64), mtf.Dim("d_in", 32)

    @mtf.entry(inputs={"x": mtf.Input([batch, d_in])},
               mesh="rows:2,cols:4", layout="batch:rows,d_hidden:cols")
    def mlp(x):
        return {"y": mtf.layers.dense(x, d_out, name="fc")}

The entry returns a dict name -> tensor (or one tensor, named ``out``).
Parameters are created inside it with `get_variable`, which records a name,
dims, dtype and an initializer; they become arguments of the compiled module
with role ``parameter``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable

from mtfc.errors import MtfcError
from mtfc.frontend.dims import Shape, as_shape
from mtfc.frontend.graph import Graph, Tensor, current_graph, fail, model_file, tracing
from mtfc.mesh import LayoutRules, Mesh


MASTER_DTYPE = "f32"  # the dtype every float parameter is stored (and updated) in

# ----------------------------------------------------------------- initializers
# An initializer is a string the runtime understands without Python from the
# model file: "normal:STDDEV", "truncated_normal:STDDEV", "uniform:LO,HI",
# "constant:V", "randint:LO,HI" (integers in [LO, HI)).  See docs/IR.md.


class init:  # noqa: N801 - a namespace, used as mtf.init.normal(0.02)
    @staticmethod
    def normal(stddev: float = 1.0) -> str:
        return f"normal:{float(stddev)!r}"

    @staticmethod
    def truncated_normal(stddev: float = 1.0) -> str:
        return f"truncated_normal:{float(stddev)!r}"

    @staticmethod
    def uniform(minval: float = -1.0, maxval: float = 1.0) -> str:
        return f"uniform:{float(minval)!r},{float(maxval)!r}"

    @staticmethod
    def constant(value: float) -> str:
        return f"constant:{float(value)!r}"

    @staticmethod
    def zeros() -> str:
        return "constant:0.0"

    @staticmethod
    def ones() -> str:
        return "constant:1.0"

    @staticmethod
    def randint(low: int, high: int) -> str:
        return f"randint:{int(low)},{int(high)}"

    @staticmethod
    def fan_in_normal(shape, fan_in_dims) -> str:
        """Normal with stddev 1/sqrt(fan-in), fan-in = product of `fan_in_dims`."""
        shape = as_shape(shape)
        fan_in = math.prod(shape.get(d).size for d in fan_in_dims)
        return init.normal(1.0 / math.sqrt(fan_in))


def get_variable(
    name: str, shape, dtype: str | None = None, initializer: str | None = None, *, trainable: bool = True
) -> Tensor:
    """A parameter named ``params/<scope>/<name>`` (Mesh TF's get_variable).

    A float parameter is stored in f32 -- its master value, the module's
    argument, which the optimizer updates -- and the model reads it as
    `dtype`: a float dtype, or None for the compute dtype (f32, or bf16 in a
    train step built with ``--precision bf16``); the cast is recorded where
    it is read.  An integer or boolean parameter is stored and read as
    `dtype`.  Float parameters are trainable (listed by
    `trainable_variables`, so differentiated by `value_and_grad`) unless
    `trainable=False`; integer ones never are.
    """
    from mtfc.frontend.graph import FLOAT_DTYPES
    from mtfc.frontend.ops import _dtype, cast, default_float

    graph = current_graph()
    shape = as_shape(shape)
    read_dtype = _dtype(dtype) if dtype is not None else default_float()
    stored_dtype = MASTER_DTYPE if read_dtype in FLOAT_DTYPES else read_dtype
    full = "params/" + (f"{graph.scope_prefix()}/{name}" if graph.scope_prefix() else name)
    tensor = graph.add_variable(
        full, "parameter", shape, stored_dtype, initializer or init.normal(0.02),
        trainable=trainable and stored_dtype in FLOAT_DTYPES,
    )
    return cast(tensor, read_dtype)


def trainable_variables() -> dict[str, Tensor]:
    """The current graph's trainable parameters, name (``params/...``) -> tensor, in creation order."""
    return {v.name: v.tensor for v in current_graph().variables if v.trainable}


# ----------------------------------------------------------------- entry


@dataclass
class Input:
    """A model input: dims, dtype, and how `mtfc run` synthesizes it (an initializer)."""

    shape: Shape
    dtype: str = "f32"
    init: str | None = None

    def __post_init__(self):
        from mtfc.frontend.ops import _dtype

        self.shape = as_shape(self.shape)
        self.dtype = _dtype(self.dtype)
        if self.init is None:
            self.init = init.normal(1.0) if self.dtype != "i32" else init.randint(0, 2)


@dataclass
class Entry:
    """A model's entry function with its inputs and default mesh and layout."""

    fn: Callable
    inputs: dict[str, Input]
    mesh: str = ""
    layout: str = ""
    name: str = ""
    output_roles: dict[str, str] = field(default_factory=dict)
    param_layout: str | None = None  # rules for parameters / optimizer state (FSDP); None: `layout`
    loss: str = "loss"  # the output a train step minimises
    optimizer: str = "adamw:lr=0.001"  # the train step's optimizer spec (mtfc.frontend.optimizers)
    precision: str = "f32"  # compute dtype of a train step: f32, or bf16 with f32 master weights
    allow_unused_rules: bool = False  # layout rules may name dims this model lacks (a shared layout)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def entry(
    *,
    inputs: dict,
    mesh: str = "",
    layout: str = "",
    name: str | None = None,
    param_layout: str | None = None,
    loss: str = "loss",
    optimizer: str = "adamw:lr=0.001",
    precision: str = "f32",
    allow_unused_rules: bool = False,
):
    """Decorator marking a model file's entry function.

    `mesh`, `layout` and `param_layout` are defaults the command line may
    override; `loss`, `optimizer` and `precision` say how `mtfc compile
    --train` builds a train step from it; `allow_unused_rules` lets the
    layouts name dims the model lacks (a layout shared between models)."""

    def wrap(fn):
        specs = {k: (v if isinstance(v, Input) else Input(v)) for k, v in inputs.items()}
        return Entry(fn, specs, mesh, layout, name or fn.__name__, param_layout=param_layout, loss=loss,
                     optimizer=optimizer, precision=precision, allow_unused_rules=allow_unused_rules)

    return wrap


@dataclass
class Traced:
    graph: Graph
    outputs: dict[str, Tensor]
    name: str


def trace(fn: Callable, inputs: dict[str, Input], name: str = "model") -> Traced:
    """Run `fn` on symbolic inputs, recording the graph."""
    graph = Graph()
    with tracing(graph):
        args = {k: graph.add_variable(k, "input", spec.shape, spec.dtype, spec.init) for k, spec in inputs.items()}
        result = fn(**args)
    if isinstance(result, Tensor):
        result = {"out": result}
    if not isinstance(result, dict) or not result:
        raise MtfcError(f"entry {name!r} must return a tensor or a non-empty dict of tensors, got {type(result).__name__}")
    for k, v in result.items():
        if not isinstance(v, Tensor):
            raise MtfcError(f"entry {name!r} output {k!r} is a {type(v).__name__}, not an mtfc tensor")
    return Traced(graph, dict(result), name)


# ----------------------------------------------------------------- model files


def parse_defines(items) -> dict[str, object]:
    """``NAME=VALUE`` items (``mtfc compile -D``) -> name -> value, each VALUE
    a Python literal (``48``, ``True``, ``'gelu'``, ``0.1``)."""
    import ast

    out: dict[str, object] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise MtfcError(f"--define {item!r}: expected NAME=VALUE, e.g. N_LAYERS=48")
        try:
            out[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise MtfcError(f"--define {item!r}: {text.strip()!r} is not a Python literal "
                            "(a number, True/False, or a quoted string)") from None
    return out


def _apply_defines(path: str, module, defines: dict[str, object]) -> None:
    """Set the model file's module-level constants named by `defines` (read
    by the entry function when it is traced, e.g. ``N_LAYERS``); each must
    exist and keep its type."""
    for name, value in defines.items():
        if name not in vars(module):
            raise MtfcError(f"--define {name}: {os.path.basename(path)} has no module-level name {name!r}")
        old = vars(module)[name]
        if not isinstance(old, (bool, int, float, str)):
            raise MtfcError(f"--define {name}: {os.path.basename(path)}'s {name} is {type(old).__name__}; "
                            "only int, float, bool and str constants can be set")
        if type(value) is not type(old) and not (isinstance(old, float) and type(value) is int):
            raise MtfcError(f"--define {name}={value!r}: {os.path.basename(path)}'s {name} is "
                            f"{type(old).__name__} ({old!r}), not {type(value).__name__}")
        setattr(module, name, type(old)(value))


def load_model_file(path: str, entry_name: str | None = None, defines: dict[str, object] | None = None) -> Entry:
    """Import a model file and return its entry (the one `@mtf.entry`, or
    `entry_name`), after setting its module-level constants `defines`."""
    if not os.path.isfile(path):
        raise MtfcError(f"model file {path!r} does not exist")
    module_name = "mtfc_model_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise MtfcError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # As `python model.py` would: the model file's folder comes first on the
    # path while it runs, so it can import its sibling modules.
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except MtfcError:
        raise
    except SyntaxError as e:
        raise MtfcError(f"{os.path.basename(path)}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise model_error(path, e) from None
    except SystemExit as e:
        raise exit_error(path, e) from None
    finally:
        sys.path.remove(folder)
    _apply_defines(path, module, defines or {})
    entries = {k: v for k, v in vars(module).items() if isinstance(v, Entry)}
    if entry_name is not None:
        if entry_name not in entries:
            raise MtfcError(f"{path}: no @mtf.entry function named {entry_name!r} (found: {', '.join(entries) or 'none'})")
        return entries[entry_name]
    if len(entries) != 1:
        found = ", ".join(entries) or "none"
        raise MtfcError(f"{path}: expected exactly one @mtf.entry function, found {found}; pick one with --entry")
    return next(iter(entries.values()))


def model_error(path: str, error: Exception) -> MtfcError:
    """A one-line error for an exception raised by model-file code, at its deepest model-file line."""
    target = os.path.abspath(path)
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == target:
            line = frame.lineno
    where = f"{os.path.basename(path)}:{line}" if line else os.path.basename(path)
    return MtfcError(f"{type(error).__name__}: {error}", where=where)


def exit_error(path: str | None, error: SystemExit) -> MtfcError:
    """The error for model-file code that called ``sys.exit``/``exit()``/``quit()``:
    mtfc, not the model file, ends the command (a silent exit would look like success)."""
    message = f"the model file called sys.exit({error.code!r}); a model file must not exit"
    return MtfcError(message, where=model_error(path, error).where) if path is not None else MtfcError(message)


def run_model_code(path: str | None, fn: Callable, *args, **kwargs):
    """Call `fn`, which runs model-file code: an exception it raises becomes a
    one-line `MtfcError` at the model file's line (when `path` is known), and
    the errors and ops it locates name lines of that file (`model_file`); a `SystemExit`
    is such an error too (always)."""
    try:
        with model_file(path):
            return fn(*args, **kwargs)
    except MtfcError:
        raise
    except Exception as e:
        if path is None:
            raise
        raise model_error(path, e) from None
    except SystemExit as e:
        raise exit_error(path, e) from None


def trace_entry(entry_fn: Entry, path: str | None = None) -> Traced:
    return run_model_code(path, trace, entry_fn.fn, entry_fn.inputs, entry_fn.name)


def resolve_mesh_layout(entry_fn: Entry, mesh: str | None, layout: str | None) -> tuple[Mesh, LayoutRules]:
    mesh_obj = Mesh.parse(entry_fn.mesh if mesh is None else mesh)
    rules = LayoutRules.parse(entry_fn.layout if layout is None else layout)
    rules.validate(mesh_obj)
    return mesh_obj, rules


__all__ = ["init", "get_variable", "trainable_variables", "Input", "entry", "Entry", "trace", "load_model_file", "fail"]
