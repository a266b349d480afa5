"""The IR contract: reading and writing mtfc's attributes on StableHLO modules.

Everything that crosses from the frontend to the passes and the runtime goes
through this module (see docs/IR.md).  Attribute names:

module      ``mtfc.mesh = "rows:2,cols:4"``, ``mtfc.layout = "batch:rows"``,
            ``mtfc.param_layout = "d_model:rows"`` (optional),
            ``mtfc.partitioning = "none" | "gspmd" | "explicit" | "shardy"``,
            ``mtfc.allow_unused_rules`` (unit; rules may name dims it lacks),
            ``mtfc.layout_search`` (dict; the searched layout's choice and cost)
@main arg   ``mtfc.dims = [...]``, ``mtfc.name``, ``mtfc.role``, ``mtfc.init``
@main res   ``mtfc.dims``, ``mtfc.name``, ``mtfc.role``
op          ``mtfc.dims = [...]`` (one result) on every op directly in a
            function body; ops nested in regions (reduction bodies) are exempt;
            ``mtfc.class = "param"`` on ops whose results use the parameter layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from jax.extend.mlir import ir
from jax.interpreters import mlir as jax_mlir

from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules, Mesh, TensorLayout, tensor_layout

DIMS = "mtfc.dims"
NAME = "mtfc.name"
ROLE = "mtfc.role"
INIT = "mtfc.init"
MESH = "mtfc.mesh"
LAYOUT = "mtfc.layout"
PARAM_LAYOUT = "mtfc.param_layout"
CLASS = "mtfc.class"
ALIAS = "tf.aliasing_output"  # on an argument: the result that reuses its buffer
STEP = "mtfc.step"
OPTIMIZER = "mtfc.optimizer"
PRECISION = "mtfc.precision"  # a train step's compute dtype: "f32" or "bf16"
STATE_ROLES = ("parameter", "optimizer_state")
PARTITIONING = "mtfc.partitioning"
LOOP_DIM = "mtfc.loop_dim"  # on a stablehlo.while: the dim name its iterations run over (docs/IR.md, "Loops")
TRIP_COUNT = "mtfc.trip_count"  # on a stablehlo.while: how many times its body runs (i64)
CLASSES = "mtfc.classes"  # on a stablehlo.while: the layout class of each carried value
ALLOW_UNUSED_RULES = "mtfc.allow_unused_rules"  # unit attr: layout rules may name dims the module lacks
LAYOUT_SEARCH = "mtfc.layout_search"  # dict: the searched layout and its predicted cost (mtfc compile --layout auto)
ENTRY = "main"

ROLES = ("input", "parameter", "optimizer_state", "output", "metric", "loss", "tap")

_DTYPES = {
    "f32": (np.float32, lambda: ir.F32Type.get()),
    "bf16": (None, lambda: ir.BF16Type.get()),
    "f16": (np.float16, lambda: ir.F16Type.get()),
    "i32": (np.int32, lambda: ir.IntegerType.get_signless(32)),
    "ui32": (np.uint32, lambda: ir.IntegerType.get_unsigned(32)),
    "i1": (np.bool_, lambda: ir.IntegerType.get_signless(1)),
}


DTYPES = tuple(_DTYPES)  # the element types the runner feeds and reads


def new_context() -> ir.Context:
    """A context with every dialect jaxlib ships registered (stablehlo, sdy, ...)."""
    return jax_mlir.make_ir_context()


def mlir_type(dtype: str) -> ir.Type:
    return _DTYPES[dtype][1]()


def numpy_dtype(dtype: str):
    if dtype == "bf16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return _DTYPES[dtype][0]


def dtype_name(element_type: ir.Type) -> str:
    text = str(element_type)
    return {"f32": "f32", "bf16": "bf16", "f16": "f16", "i32": "i32", "ui32": "ui32", "i1": "i1"}.get(text, text)


def tensor_type(shape, dtype: str) -> ir.RankedTensorType:
    return ir.RankedTensorType.get(list(shape), mlir_type(dtype))


class _ContextMemo:
    """Values computed from MLIR attributes (or for them), remembered for one
    context at a time -- attributes are immutable and uniqued in their
    context, so an attribute (hashed by identity) always gives the same value.
    Switching to another context forgets the old one's entries (and releases
    the reference to it); a pass asks for the same few ``mtfc.dims`` lists
    for every op."""

    def __init__(self, limit: int = 1 << 16):
        self.context = None
        self.values: dict = {}
        self.limit = limit

    def table(self, context) -> dict:
        if context is not self.context:
            self.context, self.values = context, {}
        elif len(self.values) >= self.limit:
            self.values.clear()
        return self.values


_STR_ARRAYS = _ContextMemo()  # (names) -> ArrayAttr
_DIMS_LISTS = _ContextMemo()  # mtfc.dims attribute -> (nested?, names per result)


def str_array(values) -> ir.ArrayAttr:
    values = tuple(values)
    table = _STR_ARRAYS.table(ir.Context.current)
    attr = table.get(values)
    if attr is None:
        attr = table[values] = ir.ArrayAttr.get([ir.StringAttr.get(v) for v in values])
    return attr


def read_str_array(attr) -> list[str]:
    return [ir.StringAttr(a).value for a in ir.ArrayAttr(attr)]


def _parse_dims(attr: ir.Attribute) -> tuple[bool, tuple[tuple[str, ...], ...]]:
    array = ir.ArrayAttr(attr)
    if len(array) and isinstance(array[0], ir.ArrayAttr):
        return True, tuple(tuple(read_str_array(a)) for a in array)
    return False, (tuple(read_str_array(array)),)


def parsed_dims(attr: ir.Attribute) -> tuple[bool, tuple[tuple[str, ...], ...]]:
    """An ``mtfc.dims`` attribute read once per context: (nested -- one list
    per result --, the names of each result's dims).  Raises ValueError or
    TypeError when it is not a list of strings or of lists of strings."""
    table = _DIMS_LISTS.table(attr.context)
    parsed = table.get(attr)
    if parsed is None:
        parsed = table[attr] = _parse_dims(attr)
    return parsed


def op_result_dims(op: ir.Operation) -> list[list[str]] | None:
    """Dim names of each result of `op`, or None when it carries none."""
    attrs = op.attributes
    if DIMS not in attrs:
        return None
    attr = attrs[DIMS]
    table = _DIMS_LISTS.table(attr.context)
    parsed = table.get(attr)
    if parsed is None:
        parsed = table[attr] = _parse_dims(attr)
    nested, dims = parsed
    if not nested and len(op.results) != 1 and not (len(dims[0]) == 0 and len(op.results) == 0):
        assert len(op.results) == 1, f"{op.name} has {len(op.results)} results but one dims list"
    return [list(d) for d in dims]


def set_op_result_dims(op: ir.Operation, dims: list[list[str]]) -> None:
    if len(dims) == 1:
        op.attributes[DIMS] = str_array(dims[0])
    else:
        op.attributes[DIMS] = ir.ArrayAttr.get([str_array(d) for d in dims])


def value_dims(value: ir.Value) -> list[str]:
    """Dim names of an SSA value in a function body (argument or op result)."""
    if isinstance(value, ir.BlockArgument):
        arg = ir.BlockArgument(value)
        owner = arg.owner.owner
        owner = owner.operation if hasattr(owner, "operation") else owner
        if owner.name != "func.func":  # a loop's block argument: the dims of the value it carries
            dims = op_result_dims(owner)
            if dims is None:
                raise MtfcError(f"{owner.name} at {owner.location} carries no {DIMS}")
            return dims[arg.arg_number]
        attrs = ir.DictAttr(ir.ArrayAttr(owner.attributes["arg_attrs"])[arg.arg_number])
        return read_str_array(attrs[DIMS])
    result = ir.OpResult(value)
    dims = op_result_dims(result.owner.operation)
    if dims is None:
        raise MtfcError(f"{result.owner.name} at {result.owner.location} carries no {DIMS}")
    return dims[result.result_number]


@dataclass
class Signature:
    """One argument or result of @main as the runner sees it."""

    index: int
    name: str
    role: str
    dims: list[str]
    shape: tuple[int, ...]
    dtype: str
    init: str | None = None

    def layout(self, rules: LayoutRules, mesh: Mesh) -> TensorLayout:
        return tensor_layout(self.dims, self.shape, rules, mesh, what=f"{self.role} {self.name!r}")


def entry_function(module: ir.Module) -> ir.Operation:
    for op in module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == ENTRY:
            return op.operation
    raise MtfcError(f"module has no func.func @{ENTRY}")


def functions(module: ir.Module) -> dict[str, ir.Operation]:
    """The module's top-level ``func.func`` ops by symbol name."""
    out = {}
    for op in module.body.operations:
        op = op.operation
        if op.name == "func.func":
            out[ir.StringAttr(op.attributes["sym_name"]).value] = op
    return out


def _dict_list(fn: ir.Operation, key: str, count: int) -> list[ir.DictAttr]:
    if key not in fn.attributes:
        return [ir.DictAttr.get({}) for _ in range(count)]
    return [ir.DictAttr(a) for a in ir.ArrayAttr(fn.attributes[key])]


def _signatures(fn: ir.Operation, key: str, types, default_role: str) -> list[Signature]:
    out = []
    for i, (attrs, t) in enumerate(zip(_dict_list(fn, key, len(types)), types)):
        t = ir.RankedTensorType(t)
        name = ir.StringAttr(attrs[NAME]).value if NAME in attrs else f"{'arg' if key == 'arg_attrs' else 'out'}{i}"
        role = ir.StringAttr(attrs[ROLE]).value if ROLE in attrs else default_role
        if DIMS not in attrs:
            raise MtfcError(f"@{ENTRY} {key.split('_')[0]} #{i} ({name}) carries no {DIMS}")
        init = ir.StringAttr(attrs[INIT]).value if INIT in attrs else None
        out.append(Signature(i, name, role, read_str_array(attrs[DIMS]), tuple(t.shape), dtype_name(t.element_type), init))
    return out


PER_DEVICE = ("explicit", "shardy")


def arguments(module: ir.Module) -> list[Signature]:
    """@main's arguments with their global shapes (read from the reference
    program when @main is a per-device program)."""
    if partitioning(module) in PER_DEVICE:
        return arguments(reference_module(module))
    fn = entry_function(module)
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    return _signatures(fn, "arg_attrs", ftype.inputs, "input")


def results(module: ir.Module) -> list[Signature]:
    """@main's results with their global shapes (see `arguments`)."""
    if partitioning(module) in PER_DEVICE:
        return results(reference_module(module))
    fn = entry_function(module)
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    return _signatures(fn, "res_attrs", ftype.results, "output")


def module_mesh(module: ir.Module) -> Mesh:
    attrs = module.operation.attributes
    return Mesh.parse(ir.StringAttr(attrs[MESH]).value) if MESH in attrs else Mesh(())


def module_layout(module: ir.Module) -> LayoutRules:
    attrs = module.operation.attributes
    return LayoutRules.parse(ir.StringAttr(attrs[LAYOUT]).value) if LAYOUT in attrs else LayoutRules()


def module_param_layout(module: ir.Module) -> LayoutRules:
    """The rules for parameters and optimizer state (the activation rules when absent)."""
    attrs = module.operation.attributes
    return LayoutRules.parse(ir.StringAttr(attrs[PARAM_LAYOUT]).value) if PARAM_LAYOUT in attrs else module_layout(module)


def set_mesh_and_layout(module: ir.Module, mesh: Mesh, rules: LayoutRules,
                        param_rules: LayoutRules | None = None) -> None:
    with module.context:
        module.operation.attributes[MESH] = ir.StringAttr.get(str(mesh))
        module.operation.attributes[LAYOUT] = ir.StringAttr.get(str(rules))
        if param_rules is not None:
            module.operation.attributes[PARAM_LAYOUT] = ir.StringAttr.get(str(param_rules))


def op_class(op: ir.Operation) -> str:
    """``param`` for ops the frontend marked as updating stored state, else ``activation``."""
    return ir.StringAttr(op.attributes[CLASS]).value if CLASS in op.attributes else "activation"


def op_result_classes(op: ir.Operation) -> list[str]:
    """The layout class of each result of `op`: a loop's ``mtfc.classes``
    (one per carried value), else `op_class` for every result."""
    if CLASSES in op.attributes:
        return read_str_array(op.attributes[CLASSES])
    return [op_class(op)] * len(op.results)


def loop_trip_count(op: ir.Operation) -> int:
    """How many times a ``stablehlo.while`` emitted by mtfc runs its body
    (``mtfc.trip_count``; 1 for any other op)."""
    return ir.IntegerAttr(op.attributes[TRIP_COUNT]).value if TRIP_COUNT in op.attributes else 1


def class_of_role(role: str) -> str:
    """The layout class of a function argument's role: ``param`` for state, else ``activation``."""
    return "param" if role in STATE_ROLES else "activation"


def value_layout(value: ir.Value, layouts: "Layouts", what: str) -> TensorLayout:
    """The layout of an SSA value of @main: a function argument's by its role,
    an op result's by its op's class (docs/IR.md, "Parameter layouts")."""
    shape = ir.RankedTensorType(value.type).shape
    if isinstance(value, ir.BlockArgument):
        arg = ir.BlockArgument(value)
        owner = arg.owner.owner
        owner = owner.operation if hasattr(owner, "operation") else owner
        if owner.name != "func.func":  # a loop's block argument: the class of the value it carries
            cls = op_result_classes(owner)[arg.arg_number]
        else:
            attrs = ir.DictAttr(ir.ArrayAttr(owner.attributes["arg_attrs"])[arg.arg_number])
            cls = class_of_role(ir.StringAttr(attrs[ROLE]).value if ROLE in attrs else "input")
    else:
        result = ir.OpResult(value)
        owner = result.owner
        owner = owner.operation if hasattr(owner, "operation") else owner
        cls = op_result_classes(owner)[result.result_number]
    return layouts.of_value(value_dims(value), shape, cls=cls, what=what)


@dataclass(frozen=True)
class Layouts:
    """A module's mesh and its two rule sets: activations, and stored state
    (parameters and optimizer state, `docs/IR.md` "Parameter layouts")."""

    mesh: Mesh
    activations: LayoutRules
    params: LayoutRules

    def rules(self, *, role: str | None = None, cls: str = "activation") -> LayoutRules:
        return self.params if (role in STATE_ROLES or cls == "param") else self.activations

    def of_signature(self, sig: "Signature") -> TensorLayout:
        return sig.layout(self.rules(role=sig.role), self.mesh)

    def of_value(self, dims, shape, *, cls: str = "activation", what: str = "value") -> TensorLayout:
        return tensor_layout(list(dims), list(shape), self.rules(cls=cls), self.mesh, what=what)

    def validate(self) -> None:
        self.activations.validate(self.mesh)
        self.params.validate(self.mesh)


def module_layouts(module: ir.Module) -> Layouts:
    return Layouts(module_mesh(module), module_layout(module), module_param_layout(module))


def partitioning(module: ir.Module) -> str:
    attrs = module.operation.attributes
    return ir.StringAttr(attrs[PARTITIONING]).value if PARTITIONING in attrs else "none"


def set_partitioning(module: ir.Module, kind: str) -> None:
    with module.context:
        module.operation.attributes[PARTITIONING] = ir.StringAttr.get(kind)


def _module_string(module: ir.Module, name: str) -> str | None:
    attrs = module.operation.attributes
    return ir.StringAttr(attrs[name]).value if name in attrs else None


def step_kind(module: ir.Module) -> str | None:
    """The module's ``mtfc.step`` (``"train"``), or None for a forward module."""
    return _module_string(module, STEP)


def optimizer_spec(module: ir.Module) -> str | None:
    """A train step's ``mtfc.optimizer`` (e.g. ``"adamw:lr=3e-3"``), if recorded."""
    return _module_string(module, OPTIMIZER)


def compute_precision(module: ir.Module) -> str:
    """A train step's compute dtype (``mtfc.precision``; f32 when absent)."""
    return _module_string(module, PRECISION) or "f32"


def model_name(module: ir.Module) -> str:
    """The module's ``sym_name`` (the model's name), or ""."""
    return _module_string(module, "sym_name") or ""


def aliased_arguments(module: ir.Module) -> set[int]:
    """Indices of @main's arguments that carry ``tf.aliasing_output``."""
    fn = entry_function(module)
    if "arg_attrs" not in fn.attributes:
        return set()
    return {i for i, a in enumerate(ir.ArrayAttr(fn.attributes["arg_attrs"])) if ALIAS in ir.DictAttr(a)}


def body_ops(fn: ir.Operation) -> Iterator[ir.Operation]:
    """Ops directly in the body of `fn` (not nested in regions)."""
    for op in fn.regions[0].blocks[0].operations:
        yield op.operation


def walk_ops(fn: ir.Operation) -> Iterator[ir.Operation]:
    """Every op in the body of `fn`, nested regions included (a loop's
    ``cond`` and ``do`` bodies), each op before the ops of its regions."""
    for op in fn.regions[0].blocks[0].operations:
        yield from walk(op.operation)


def enclosing_trip_count(op: ir.Operation) -> int:
    """How many times `op` runs per call of its function: the product of the
    trip counts of the loops around it (1 outside any loop)."""
    count, parent = 1, op.parent
    while parent is not None:
        parent = parent.operation if hasattr(parent, "operation") else parent
        if parent.name == "func.func":
            break
        count *= loop_trip_count(parent)
        parent = parent.parent
    return count


def describe_op(op: ir.Operation) -> str:
    """`stablehlo.add` named by its location, for error messages."""
    return f"{op.name} at {location_text(op.location)}"


class LazyOpDescription:
    """`describe_op(op)`, formatted only when read (``str``, an f-string, ``+``):
    the hot loops of the passes name every op they visit for the error they
    might raise, and printing a location costs microseconds.  Read it while
    `op` is alive (in the message of an error about `op`)."""

    __slots__ = ("_op", "_prefix", "_text")

    def __init__(self, op: ir.Operation, prefix: str = ""):
        self._op, self._prefix, self._text = op, prefix, None

    def __str__(self) -> str:
        if self._text is None:
            self._text = self._prefix + describe_op(self._op)
        return self._text

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return repr(str(self))

    def __add__(self, other: str) -> str:
        return str(self) + other

    def __radd__(self, other: str) -> str:
        return other + str(self)


def describe_op_lazily(op: ir.Operation, prefix: str = "") -> LazyOpDescription:
    """`prefix` + `describe_op(op)` for a message that will most likely never be built."""
    return LazyOpDescription(op, prefix)


def location_text(loc: ir.Location) -> str:
    """A short readable form of a location: ``name (file:line)``."""
    text = str(loc)
    if text.startswith("loc(") and text.endswith(")"):
        text = text[4:-1]
    return text.replace('"', "")


def parse_module(text: str | bytes, context: ir.Context, *, source: str = "<module>") -> ir.Module:
    try:
        module = ir.Module.parse(text, context)
    except Exception as e:  # MLIRError: message lines carry the position
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise MtfcError(f"cannot parse {source}: {detail}") from None
    return module


WHOLE = "mtfc.whole"  # gspmd: dims an op's mhlo.sharding leaves whole beyond its layout (docs/IR.md)
PARTITIONING_ATTRS = ("mhlo.sharding", "sdy.sharding", WHOLE)
MODULE_PARTITIONING_ATTRS = ("mhlo.num_partitions", "mhlo.num_replicas", "sdy.mesh")


def walk(op: ir.Operation):
    """`op` and every op nested in it, pre-order.  Iterative (a stack of the
    open blocks' op iterators): a recursive generator passes every op up
    through each level of nesting."""
    yield op
    stack = [_children(op)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        yield child
        if len(child.regions):
            stack.append(_children(child))


def _children(op: ir.Operation) -> Iterator[ir.Operation]:
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                yield child.operation


def _drop(attrs: ir.DictAttr, names) -> ir.DictAttr:
    return ir.DictAttr.get({a.name: a.attr for a in attrs if a.name not in names})


def is_sharding_constraint(op: ir.Operation) -> bool:
    """``stablehlo.custom_call @Sharding`` (gspmd mode's constraint: the value itself)."""
    return (op.name == "stablehlo.custom_call" and "call_target_name" in op.attributes
            and ir.StringAttr(op.attributes["call_target_name"]).value == "Sharding")


def strip_partitioning_text(module: ir.Module) -> str:
    """Text of `module` with every sharding annotation removed: the global program."""
    with module.context:
        text = module.operation.get_asm(enable_debug_info=True)
        return _strip_partitioning(ir.Module.parse(text, module.context))


def _strip_partitioning(clone: ir.Module) -> str:
    strip_partitioning_in_place(clone)
    return clone.operation.get_asm(enable_debug_info=True)


def stripped_clone(module: ir.Module) -> ir.Operation:
    """A detached copy of `module`'s ``builtin.module`` op with every sharding
    annotation removed: the global program (what `strip_partitioning_text`
    prints), without printing and parsing the module."""
    with module.context:
        clone = module.operation.clone()
        _strip_operation(clone)
    return clone


def strip_partitioning_in_place(clone: ir.Module) -> None:
    """Remove every sharding annotation from `clone` and mark it unpartitioned."""
    _strip_operation(clone.operation)


def _strip_operation(module_op: ir.Operation) -> None:
    attrs = module_op.attributes
    for name in MODULE_PARTITIONING_ATTRS:
        if name in attrs:
            del attrs[name]
    attrs[PARTITIONING] = ir.StringAttr.get("none")
    for op in list(module_op.regions[0].blocks[0].operations):  # Shardy's mesh (sdy-shardings)
        if op.operation.name == "sdy.mesh":
            op.operation.erase()
    for op in list(walk(module_op)):  # one walk (independent edits per op)
        name = op.name
        if name == "sdy.reshard" or is_sharding_constraint(op):  # Shardy's reshards, XLA's constraints:
            op.results[0].replace_all_uses_with(op.operands[0])  # the value itself
            op.erase()
            continue
        op_attrs = op.attributes
        for attr in PARTITIONING_ATTRS:
            if attr in op_attrs:
                del op_attrs[attr]
        if name == "func.func":
            for key in ("arg_attrs", "res_attrs"):
                if key in op_attrs:
                    op_attrs[key] = ir.ArrayAttr.get(
                        [_drop(ir.DictAttr(a), PARTITIONING_ATTRS) for a in ir.ArrayAttr(op_attrs[key])]
                    )


REFERENCE = "mtfc.reference"


def reference_module(module: ir.Module) -> ir.Module:
    """The global (unpartitioned) program a partitioned module was made from.

    Partitioners that rewrite @main into a per-device program keep the global
    program as a nested ``module @mtfc.reference`` so `--check` needs nothing
    but the module file.
    """
    for op in module.body.operations:
        if op.operation.name == "builtin.module" and "sym_name" in op.operation.attributes:
            if ir.StringAttr(op.operation.attributes["sym_name"]).value == REFERENCE:
                inner = ir.Module.parse(op.operation.get_asm(enable_debug_info=True), module.context)
                return inner
    raise MtfcError("this partitioned module carries no reference program (module @mtfc.reference)")


def has_reference(module: ir.Module) -> bool:
    """Whether `module` holds the nested ``module @mtfc.reference``."""
    return any(_is_reference(op) for op in module.body.operations)


def _is_reference(op) -> bool:
    op = op.operation
    return (op.name == "builtin.module" and "sym_name" in op.attributes
            and ir.StringAttr(op.attributes["sym_name"]).value == REFERENCE)


def program_text(module: ir.Module, *, debug_info: bool = True) -> str:
    """The module as XLA compiles it: without the nested reference program."""
    clone = ir.Module.parse(str(module.operation.get_asm(enable_debug_info=True)), module.context)
    for op in list(clone.body.operations):
        if _is_reference(op):
            op.operation.erase()
    return clone.operation.get_asm(enable_debug_info=debug_info)
