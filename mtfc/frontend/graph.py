"""The traced graph: `Tensor`s produced by `Operation`s, recorded while a model
function runs.

A model is a plain Python function over `Tensor`s.  While it runs inside
`trace()`, every DSL call appends one `Operation` (a primitive applied to input
tensors with static parameters) to the current `Graph`, tagged with the name
scope and the model-file line that created it.  Parameters created with
`get_variable` become graph inputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Any

from mtfc.errors import MtfcError
from mtfc.frontend.dims import Shape

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DTYPES = ("f32", "bf16", "f16", "i32", "i1")
FLOAT_DTYPES = ("f32", "bf16", "f16")


def _library_dirs() -> tuple[str, ...]:
    """Directories holding installed code (the standard library, site-packages):
    frames there are never a model's line."""
    paths = sysconfig.get_paths()
    dirs = {os.path.abspath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(os.path.abspath(p) for p in sys.path if p.rstrip(os.sep).endswith(("site-packages", "dist-packages")))
    return tuple(d + os.sep for d in sorted(dirs))


_LIBRARY_DIRS = _library_dirs()

# The model file being run (`run_model_code`): while set, locations are lines
# of that file, never of a helper module or library it calls.
_model_file: contextvars.ContextVar[str | None] = contextvars.ContextVar("mtfc_model_file", default=None)


def _is_user_frame(frame) -> bool:
    """A frame of model code: not mtfc's, not the standard library's or an
    installed package's (click, pytest, jax), not frozen import machinery
    (a notebook cell's ``<ipython-input-...>`` is model code)."""
    # Code generated for mtfc classes (a dataclass's __init__, file "<string>")
    # belongs to the package too: it is told apart by its module.
    co_filename, module = frame.f_code.co_filename, frame.f_globals.get("__name__") or ""
    if os.path.isabs(co_filename):  # a relative name's answer depends on the working directory
        return _is_user_code_cached(co_filename, module)
    return _is_user_code(co_filename, module)


def _is_user_code(co_filename: str, module: str) -> bool:
    """`_is_user_frame` by the frame's file and module name."""
    filename = os.path.abspath(co_filename)
    if filename.startswith(_PACKAGE_DIR + os.sep) or module == "mtfc" or module.startswith("mtfc."):
        return False
    if co_filename.startswith("<frozen"):
        return False
    return not filename.startswith(_LIBRARY_DIRS)


# every op recorded walks the stack: the answer for an absolute file name is
# computed once
_is_user_code_cached = functools.lru_cache(maxsize=4096)(_is_user_code)
_normpath = functools.lru_cache(maxsize=4096)(os.path.normpath)


def _abspath(co_filename: str) -> str:
    return _normpath(co_filename) if os.path.isabs(co_filename) else os.path.abspath(co_filename)


@contextlib.contextmanager
def model_file(path: str | None):
    """Run model code from `path`: located errors and ops name lines of that file."""
    token = _model_file.set(os.path.abspath(path) if path else None)
    try:
        yield
    finally:
        _model_file.reset(token)


def user_location() -> tuple[str, int] | None:
    """(file, line) of the innermost model-code stack frame.

    While a model file runs (`model_file`), the innermost frame of that file;
    otherwise the innermost frame that is neither mtfc's nor a library's.
    None when no such frame is on the stack (e.g. while mtfc builds a train
    step after the model function returned)."""
    target = _model_file.get()
    frame = sys._getframe(1)
    while frame is not None:
        if target is not None:
            if _abspath(frame.f_code.co_filename) == target:
                return (frame.f_code.co_filename, frame.f_lineno)
        elif _is_user_frame(frame):
            return (frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def where() -> str | None:
    """``file:line`` for an error raised now: the location ops recorded now get
    (the graph's override while gradients or the optimizer are built, else the
    model-code line), or None."""
    graph = _current.get()
    loc = graph.location() if graph is not None else user_location()
    return f"{os.path.basename(loc[0])}:{loc[1]}" if loc else None


def fail(message: str) -> MtfcError:
    """A user error located at the model-file line being traced."""
    return MtfcError(message, where=where())


class Tensor:
    """A value of the traced graph: a `Shape` of named dims and a dtype."""

    __slots__ = ("shape", "dtype", "op", "index")

    def __init__(self, shape: Shape, dtype: str, op: "Operation", index: int = 0):
        self.shape = shape
        self.dtype = dtype
        self.op = op
        self.index = index

    @property
    def dims(self) -> Shape:
        return self.shape

    def __repr__(self) -> str:
        return f"Tensor({self.op.name}, {self.shape!r}, {self.dtype})"

    # Arithmetic broadcasts by dim name; defined in mtfc.frontend.ops.
    def _ops(self):
        from mtfc.frontend import ops

        return ops

    def __add__(self, other):
        return self._ops().add(self, other)

    def __radd__(self, other):
        return self._ops().add(other, self)

    def __sub__(self, other):
        return self._ops().subtract(self, other)

    def __rsub__(self, other):
        return self._ops().subtract(other, self)

    def __mul__(self, other):
        return self._ops().multiply(self, other)

    def __rmul__(self, other):
        return self._ops().multiply(other, self)

    def __truediv__(self, other):
        return self._ops().divide(self, other)

    def __rtruediv__(self, other):
        return self._ops().divide(other, self)

    def __pow__(self, other):
        return self._ops().power(self, other)

    def __rpow__(self, other):
        return self._ops().power(other, self)

    def __neg__(self):
        return self._ops().negative(self)

    def __lt__(self, other):
        return self._ops().less(self, other)

    def __le__(self, other):
        return self._ops().less_equal(self, other)

    def __gt__(self, other):
        return self._ops().greater(self, other)

    def __ge__(self, other):
        return self._ops().greater_equal(self, other)

    __hash__ = object.__hash__


@dataclass(eq=False)
class Operation:
    """One primitive application: ``outputs = primitive(*inputs, **params)``."""

    primitive: str
    inputs: list[Tensor]
    params: dict[str, Any]
    name: str
    location: tuple[str, int] | None
    outputs: list[Tensor] = field(default_factory=list)
    # "param" for ops that update stored state (the optimizer): their results
    # take the parameter layout (docs/IR.md, "Parameter layouts")
    layout_class: str = "activation"
    # made inside `recompute()`: gradient ops that read its outputs get a
    # fresh copy instead of the stored forward value
    recompute: bool = False


@dataclass
class Variable:
    """A graph input: a model input, or a parameter created by `get_variable`."""

    name: str
    role: str
    tensor: Tensor
    init: str
    trainable: bool = False  # a float parameter that `mtf.grad`'s conveniences differentiate


class Graph:
    """Operations in creation order, and the variables (inputs, parameters)."""

    def __init__(self):
        self.operations: list[Operation] = []
        self.variables: list[Variable] = []
        self._variable_names: set[str] = set()  # of `variables` (add_variable's check, O(1))
        self._scopes: list[str] = []
        self._names: dict[str, int] = {}
        # While set, ops are recorded at this location instead of the caller's
        # model-file line (gradient ops take their forward op's location).
        self.location_override: tuple[str, int] | None = None
        # "bf16" under mixed precision: parameters are read as bf16 copies of
        # their f32 master values (`get_variable`)
        self.compute_dtype: str = "f32"
        # True while a train step's model function is traced (`is_training`)
        self.training: bool = False

    def scope_prefix(self) -> str:
        return "/".join(self._scopes)

    def unique_name(self, base: str) -> str:
        full = f"{self.scope_prefix()}/{base}" if self._scopes else base
        n = self._names.get(full, 0)
        self._names[full] = n + 1
        return full if n == 0 else f"{full}_{n}"

    def location(self) -> tuple[str, int] | None:
        """Where an op recorded now comes from: the model-file line (or the override)."""
        return self.location_override or user_location()

    def add_variable(
        self, name: str, role: str, shape: Shape, dtype: str, init: str, trainable: bool = False
    ) -> Tensor:
        if name in self._variable_names:
            raise fail(f"variable {name!r} is created twice")
        self._variable_names.add(name)
        op = Operation("variable", [], {"name": name}, name, user_location())
        tensor = Tensor(shape, dtype, op)
        op.outputs.append(tensor)
        self.variables.append(Variable(name, role, tensor, init, trainable))
        return tensor


_current: contextvars.ContextVar[Graph | None] = contextvars.ContextVar("mtfc_graph", default=None)


def current_graph() -> Graph:
    graph = _current.get()
    if graph is None:
        raise fail("mtfc ops can only be used while a model is traced (inside mtfc.trace or a compiled entry)")
    return graph


def is_training() -> bool:
    """True while the model function is traced for a train step
    (`mtfc compile --train`, `trace_train_step`), False for a forward module
    or outside tracing.  Layers use it to pick train-time settings (e.g.
    `layers.moe`'s train capacity factor)."""
    graph = _current.get()
    return bool(graph is not None and graph.training)


@contextlib.contextmanager
def tracing(graph: Graph):
    token = _current.set(graph)
    try:
        yield graph
    finally:
        _current.reset(token)


@contextlib.contextmanager
def scope(name: str):
    """Name scope for ops and variables: ``with mtf.scope("block0"): ...``."""
    graph = current_graph()
    graph._scopes.append(name)
    try:
        yield
    finally:
        graph._scopes.pop()


@contextlib.contextmanager
def recompute():
    """Activation recomputation: ``with mtf.recompute(): ...`` marks a block
    whose outputs the backward pass recomputes from the block's inputs
    instead of keeping them alive from the forward pass (lowered with
    ``stablehlo.optimization_barrier`` on the block's inputs, so XLA cannot
    merge the copy back into the forward computation)."""
    graph = current_graph()
    start = len(graph.operations)
    try:
        yield
    finally:
        for op in graph.operations[start:]:
            op.recompute = True
