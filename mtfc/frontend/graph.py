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

# The evaluator of `mtf.eager()` (mtfc.frontend.eager) while its block runs: a
# root `Graph` made meanwhile takes it, and its ops are evaluated as recorded.
_eager: contextvars.ContextVar[Any] = contextvars.ContextVar("mtfc_eager", default=None)

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
        evaluator = self.op.graph.evaluator if self.op.graph is not None else None
        if evaluator is not None and evaluator.has_value(self):
            return evaluator.describe(self)
        return f"Tensor({self.op.name}, {self.shape!r}, {self.dtype})"

    def numpy(self):
        """The tensor's value, a NumPy array (axes in dim order): only for a
        tensor computed eagerly (`mtf.eager()`, `mtfc eval`); a traced
        tensor has no value, which is a located `MtfcError`."""
        evaluator = self.op.graph.evaluator if self.op.graph is not None else None
        if evaluator is None and self.op.graph is not None and self.op.graph.root().evaluator is not None:
            evaluator = self.op.graph.root().evaluator  # a loop body's tensor: it says why there is no value
        if evaluator is None:
            raise fail(f"tensor {self.op.name} {self.shape} has no value: the model is being traced to be "
                       "compiled as a whole; run it op by op with `mtfc eval` or inside `with mtf.eager():` "
                       "to read values")
        return evaluator.numpy(self)

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
    # the graph that recorded it (a loop body's ops belong to the body's graph)
    graph: "Graph | None" = field(default=None, repr=False)


@dataclass
class Variable:
    """A graph input: a model input, or a parameter created by `get_variable`."""

    name: str
    role: str
    tensor: Tensor
    init: str
    trainable: bool = False  # a float parameter that `mtf.grad`'s conveniences differentiate
    # dims prepended by stacking (a loop's `layers`, `stack_variables`' `stages`): one copy of the
    # parameter per position.  Optimizers with per-parameter statistics (Adafactor) keep them per copy.
    stacked: tuple[str, ...] = ()


class Graph:
    """Operations in creation order, and the variables (inputs, parameters).

    A *body* graph (`Graph.body`) records the body of a loop (`mtf.scan`):
    its inputs are placeholders (`add_input`) the loop binds on every trip;
    a tensor of an enclosing graph that a body op reads is *captured*
    (`capture`: a placeholder standing for it, fed unchanged every trip);
    and a parameter created in it is created in the enclosing graph --
    stacked along the loop's dim when the body stacks variables, the body
    then reading the trip's slice (`stacked`) -- so that the module's
    arguments are always the root graph's variables."""

    def __init__(self, parent: "Graph | None" = None, stack_dim=None):
        self.operations: list[Operation] = []
        self.variables: list[Variable] = []
        self.parent = parent
        self.stack_dim = stack_dim  # a body's: variables created in it are stacked along this Dim
        self.variable_prefix: list = []  # dims prepended to every variable created here (`stack_variables`)
        self.inputs: list[Tensor] = []  # a body's placeholders, in creation order
        self.captures: list[tuple[Tensor, Tensor]] = []  # (enclosing graph's tensor, placeholder)
        self._captured: dict[int, Tensor] = {}
        self.stacked: list[tuple[Tensor, Tensor]] = []  # (stacked parameter of the enclosing graph, its slice)
        # an unrolled loop's trip being traced: (dim, trip, name -> stacked parameter, the enclosing
        # unrolled trip or None)
        self.unrolled_trip: tuple | None = None
        self._variable_names: set[str] = set()  # of `variables` (add_variable's check, O(1))
        self._scopes: list[str] = []
        self._names: dict[str, int] = {}
        # `mtf.tap`: result name (``tap/...``) -> (tensor, model-file line); root graph only
        self.taps: dict[str, tuple[Tensor, tuple[str, int] | None]] = {}
        # While set, ops are recorded at this location instead of the caller's
        # model-file line (gradient ops take their forward op's location).
        self.location_override: tuple[str, int] | None = None
        # "bf16" under mixed precision: parameters are read as bf16 copies of
        # their f32 master values (`get_variable`)
        self.compute_dtype: str = "f32"
        # True while a train step's model function is traced (`is_training`)
        self.training: bool = False
        # the eager evaluator (`mtf.eager()`) that computes this graph's ops as they are
        # recorded; never a loop body's (its ops run inside the loop op, evaluated whole)
        self.evaluator = _eager.get() if parent is None else None
        if parent is not None:
            self._scopes = list(parent._scopes)
            self.location_override = parent.location_override
            self.compute_dtype = parent.compute_dtype
            self.training = parent.training

    @classmethod
    def body(cls, parent: "Graph", stack_dim=None) -> "Graph":
        """A loop body recorded inside `parent` (same scopes, precision and
        training flag); `stack_dim`: stack the variables it creates along it."""
        return cls(parent, stack_dim)

    def root(self) -> "Graph":
        graph = self
        while graph.parent is not None:
            graph = graph.parent
        return graph

    def add_input(self, shape: Shape, dtype: str, name: str) -> Tensor:
        """A body placeholder: a value the loop binds (a carry, a slice, a capture)."""
        op = Operation("body_input", [], {"name": name}, self.unique_name(name), self.location(), graph=self)
        tensor = Tensor(shape, dtype, op)
        op.outputs.append(tensor)
        self.inputs.append(tensor)
        return tensor

    def owns(self, t: Tensor) -> bool:
        return t.op.graph is self

    def capture(self, t: Tensor) -> Tensor:
        """`t` as a value of this graph: itself when recorded here, else the
        placeholder standing for it (an enclosing graph's tensor, captured
        through every body in between).  A tensor of a loop body used
        outside that body is a model mistake."""
        if t.op.graph is self or t.op.graph is None:
            return t
        if self.parent is None:
            raise fail(f"a tensor {t.shape} computed inside a loop body (mtf.scan / layers.repeat, "
                       f"op {t.op.name}) is used outside it; return it from the body instead")
        outer = self.parent.capture(t)
        inner = self._captured.get(id(outer))
        if inner is None:
            inner = self.add_input(outer.shape, outer.dtype, "capture")
            self._captured[id(outer)] = inner
            self.captures.append((outer, inner))
        return inner

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
        self, name: str, role: str, shape: Shape, dtype: str, init: str, trainable: bool = False,
        stacked_dims: tuple[str, ...] = (),
    ) -> Tensor:
        """The parameter (or input) `name`; inside loop bodies and `stack_variables`
        it is created in the root graph with the stacking dims prepended, which
        `stacked_dims` accumulates (their names) on the way up."""
        if self.unrolled_trip is not None:  # an unrolled loop's trip: this trip's slice of the stacked parameter
            from mtfc.frontend import ops

            dim, trip, stacked, enclosing = self.unrolled_trip
            if dim is None:  # a loop that does not stack its variables: created once, shared by every trip
                if name not in stacked:
                    self.unrolled_trip = enclosing
                    try:
                        stacked[name] = self.add_variable(name, role, shape, dtype, init, trainable,
                                                          stacked_dims=stacked_dims)
                    finally:
                        self.unrolled_trip = (dim, trip, stacked, enclosing)
                return stacked[name]
            if name not in stacked:  # created by the enclosing unrolled loop's trip, if any
                self.unrolled_trip = enclosing
                try:
                    stacked[name] = self.add_variable(name, role, Shape([dim] + list(shape)), dtype, init, trainable,
                                                      stacked_dims=(dim.name,) + stacked_dims)
                finally:
                    self.unrolled_trip = (dim, trip, stacked, enclosing)
            whole = stacked[name]
            return ops.reshape(ops.slice(whole, trip, 1, dim), whole.shape.without([dim]))
        if self.variable_prefix:
            shape = Shape(list(self.variable_prefix) + list(shape))
            stacked_dims = tuple(d.name for d in self.variable_prefix) + stacked_dims
        if self.parent is not None:  # a loop body: the parameter lives in the enclosing graph
            if self.stack_dim is None:
                return self.capture(self.parent.add_variable(name, role, shape, dtype, init, trainable, stacked_dims))
            stacked = self.parent.add_variable(name, role, Shape([self.stack_dim] + list(shape)), dtype, init, trainable,
                                               (self.stack_dim.name,) + stacked_dims)
            # the enclosing graphs may have prepended dims of their own (`stack_variables`)
            inner = self.add_input(stacked.shape.without([self.stack_dim]), dtype, "slice")
            self.stacked.append((stacked, inner))
            return inner
        if name in self._variable_names:
            raise fail(f"variable {name!r} is created twice")
        self._variable_names.add(name)
        op = Operation("variable", [], {"name": name}, name, user_location(), graph=self)
        tensor = Tensor(shape, dtype, op)
        op.outputs.append(tensor)
        self.variables.append(Variable(name, role, tensor, init, trainable, stacked_dims))
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
def stack_variables(dim):
    """``with mtf.stack_variables(stages): ...``: every parameter created
    inside gets `dim` (a `Dim`) prepended to its dims -- one copy per
    position of `dim`, which the ops inside carry like a batch dim (the
    stages of a pipeline).  A loop body inside stacks its own dim after it:
    ``[stages, layers, ...]``."""
    graph = current_graph()
    graph.variable_prefix.append(dim)
    try:
        yield
    finally:
        graph.variable_prefix.pop()


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
