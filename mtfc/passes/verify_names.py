"""Pass `verify-names`: check the IR contract of docs/IR.md.

Requires: nothing (any parsed module).
Guarantees (or fails with one line naming the culprit) that the module keeps
the whole contract, "Verification" in docs/IR.md:

* ``mtfc.partitioning`` is a known kind; ``mtfc.mesh``, ``mtfc.layout`` and
  ``mtfc.param_layout`` parse and agree (every rule's axes are in the mesh);
  ``mhlo.num_partitions`` / ``mhlo.num_replicas``, where present, are what
  the kind and the mesh size say;
* every layout rule names a dim some value of the module has, and every
  parameter-layout rule a dim some parameter or optimizer state has --
  unless the module carries ``mtfc.allow_unused_rules`` (`mtfc compile
  --allow-unused-rules`), for a layout shared between models;
* every argument and result of @main carries ``mtfc.dims`` (one valid name
  per tensor dimension, none twice), a known ``mtfc.role``, a ``mtfc.name``
  unique among the arguments (among the results), a valid ``mtfc.init``;
  ``tf.aliasing_output`` names a result of the argument's type, each result
  at most once;
* every op directly in @main's body or in a loop's body (not a reducer's)
  carries ``mtfc.dims`` the same way (in a shardy module, ops Shardy added
  may lack them); within one op a dim name has one size (over its results,
  and over its operands too for ops that keep every dim's size);
* a loop (``stablehlo.while`` carrying ``mtfc.loop_dim``, docs/IR.md
  "Loops") carries ``mtfc.classes`` and ``mtfc.trip_count``; each operand, each block
  argument of its regions and each value its body returns has the dims
  ``mtfc.dims`` gives that carried value, and no layout rule splits its loop
  dim;
* shardings agree with the layout: in a gspmd module every argument and
  result carries the ``mhlo.sharding`` its dims imply (ops that carry one
  too); a shardy module's arguments and results are ``{manual}``; none and
  explicit modules carry no ``mhlo.sharding``;
* a per-device module (explicit, shardy) with its reference program keeps
  the reference's arguments and results (names, roles, dims, dtypes) with
  their local shapes (each dim divided by its mesh axes), and the reference
  itself keeps the contract.

The module is not changed.  `verify_module` is the same check for callers
(`mtfc run`, `inspect`, `opt`) that verify a module before using it.
"""

from __future__ import annotations

import difflib
import re

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc import initializers
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules
from mtfc.passes import op_rules
from mtfc.passes.loops import check_loop_dims, program_ops
from mtfc.passes.manager import register_pass

KINDS = ("none", "gspmd", "explicit", "shardy")
ARG_ROLES = ("input", "parameter", "optimizer_state")
RESULT_ROLES = ("output", "loss", "metric", "tap", "parameter", "optimizer_state")
SHARDING = "mhlo.sharding"
SDY_SHARDING = "sdy.sharding"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

# Ops whose operands' dims keep their sizes in the result (so a dim name has
# one size over operands and results); slice, pad, concatenate, windows and
# collectives change a dim's size under the same name.
_SIZE_KEEPING = op_rules.names(size_keeping=True)

# Initializer kinds and how many numbers each takes (docs/IR.md; runtime/synthetic.py).
def _check_dims(dims: list[str], value_type: ir.Type, what: str) -> None:
    valid = tuple(dims) in _GOOD_DIMS  # names and uniqueness already checked for this list
    if not valid:
        for d in dims:
            if not _NAME.match(d):
                raise MtfcError(f"{what}: bad dim name {d!r} in mtfc.dims {dims}: names are letters, digits, '_' and '.'")
    if not isinstance(value_type, ir.RankedTensorType):
        return
    rank = ir.RankedTensorType(value_type).rank
    if len(dims) != rank:
        raise MtfcError(f"{what}: mtfc.dims {dims} names {len(dims)} dims for a rank-{rank} tensor")
    if valid:
        return
    for d in dims:
        if dims.count(d) > 1:
            raise MtfcError(f"{what}: dim {d!r} is used twice in mtfc.dims {dims}")
    if len(_GOOD_DIMS) < 65536:
        _GOOD_DIMS.add(tuple(dims))


# dim lists whose names are valid and distinct (`_check_dims`; a module has few)
_GOOD_DIMS: set[tuple[str, ...]] = set()


def _string_attr(attrs, key: str, what: str) -> str | None:
    if key not in attrs:
        return None
    try:
        return ir.StringAttr(attrs[key]).value
    except (ValueError, TypeError):
        raise MtfcError(f"{what}: {key} must be a string, not {attrs[key]}") from None


def _dims_attr(attrs, what: str) -> list[str]:
    if mir.DIMS not in attrs:
        raise MtfcError(f"{what} carries no {mir.DIMS}")
    try:
        return mir.read_str_array(attrs[mir.DIMS])
    except (ValueError, TypeError):
        raise MtfcError(f"{what}: {mir.DIMS} must be a list of strings, not {attrs[mir.DIMS]}") from None


class _Interface:
    """One argument or result of @main as written in the module (own types)."""

    def __init__(self, index: int, kind: str, attrs: ir.DictAttr, value_type: ir.Type):
        self.index, self.kind, self.attrs, self.type = index, kind, attrs, value_type
        default = "arg" if kind == "argument" else "out"
        self.name = _string_attr(attrs, mir.NAME, f"{kind} #{index}") or f"{default}{index}"
        self.what = f"{kind} #{index} ({self.name})"
        self.role = _string_attr(attrs, mir.ROLE, self.what) or ("input" if kind == "argument" else "output")
        self.dims = _dims_attr(attrs, f"@main {self.what}")
        self.shape = tuple(ir.RankedTensorType(value_type).shape) if isinstance(value_type, ir.RankedTensorType) else ()
        self.dtype = mir.dtype_name(ir.RankedTensorType(value_type).element_type) \
            if isinstance(value_type, ir.RankedTensorType) else str(value_type)

    @property
    def cls(self) -> str:
        return "param" if self.role in mir.STATE_ROLES else "activation"


def _interfaces(fn: ir.Operation) -> tuple[list[_Interface], list[_Interface]]:
    if "function_type" not in fn.attributes:
        raise MtfcError("@main has no function type")
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    out = []
    for key, kind, types in (("arg_attrs", "argument", ftype.inputs), ("res_attrs", "result", ftype.results)):
        attrs = [ir.DictAttr(a) for a in ir.ArrayAttr(fn.attributes[key])] if key in fn.attributes else []
        if len(attrs) != len(types):
            raise MtfcError(f"@main: {key} lists {len(attrs)} entries for {len(types)} {kind}s "
                            f"(every {kind} carries mtfc.dims)")
        out.append([_Interface(i, kind, a, t) for i, (a, t) in enumerate(zip(attrs, types))])
    return out[0], out[1]


def _check_interfaces(args: list[_Interface], results: list[_Interface]) -> None:
    for group, roles in ((args, ARG_ROLES), (results, RESULT_ROLES)):
        seen: dict[str, _Interface] = {}
        for v in group:
            _check_dims(v.dims, v.type, v.what)
            if v.dtype not in mir.DTYPES:
                raise MtfcError(f"{v.what}: element type {v.dtype} is not one mtfc runs ({', '.join(mir.DTYPES)})")
            if v.role not in roles:
                raise MtfcError(f"{v.what}: unknown mtfc.role {v.role!r} (roles of {v.kind}s: {', '.join(roles)})")
            if v.name in seen:
                raise MtfcError(f"{v.what}: mtfc.name {v.name!r} is also {seen[v.name].what}'s; names are unique")
            seen[v.name] = v
            init = _string_attr(v.attrs, mir.INIT, v.what)
            if init is not None:
                initializers.parse(init, v.what)
    _check_aliases(args, results)


def _check_aliases(args: list[_Interface], results: list[_Interface]) -> None:
    taken: dict[int, _Interface] = {}
    for a in args:
        if mir.ALIAS not in a.attrs:
            continue
        try:
            k = ir.IntegerAttr(a.attrs[mir.ALIAS]).value
        except (ValueError, TypeError):
            raise MtfcError(f"{a.what}: {mir.ALIAS} must be an integer, not {a.attrs[mir.ALIAS]}") from None
        if not 0 <= k < len(results):
            raise MtfcError(f"{a.what}: {mir.ALIAS} = {k} names no result (@main has {len(results)})")
        if k in taken:
            raise MtfcError(f"{a.what}: {mir.ALIAS} = {k} is also {taken[k].what}'s; a result reuses one buffer")
        if results[k].type != a.type:  # (types are uniqued: equal when they print the same)
            raise MtfcError(f"{a.what}: {mir.ALIAS} = {k} names {results[k].what} of type {results[k].type}, "
                            f"not the argument's {a.type}")
        taken[k] = a


_TERMINATORS = ("func.return", "stablehlo.return")
_DIMS, _WHILE = mir.DIMS, "stablehlo.while"


class _Body:
    """What one walk of @main's body (`_check_body`) learned for the later checks."""

    def __init__(self):
        self.loops: list[ir.Operation] = []  # stablehlo.while ops carrying mtfc.loop_dim
        self.dims_attrs: set = set()  # the distinct mtfc.dims attributes of its ops
        self.state: set[str] = set()  # dims of param-class results (when asked for)

    def module_dims(self, args, results) -> tuple[set[str], set[str]]:
        """`module_dims` of the walked function, without walking it again."""
        every, state = _interface_dims(args, results)
        for attr in self.dims_attrs:
            for d in mir.parsed_dims(attr)[1]:
                every.update(d)
        state.update(self.state)
        return every, state


def _check_body(fn: ir.Operation, kind: str, *, state: bool = False) -> _Body:
    """Check every op of `program_ops(fn)` (dims, sizes, loops) in one walk.

    An op's verdict depends only on its name, its ``mtfc.dims`` attribute, its
    result types and -- for size-keeping ops of a global program -- its
    operands' dims and types (a loop also on its other attributes and its
    body); so each distinct such signature is checked once and its repeats
    are only looked up (a deep model repeats a few hundred thousands of
    times).  Loops are always checked in full.  With `state`, also collects
    the dims of param-class results (`module_dims`)."""
    body = _Body()
    operands = kind in ("none", "gspmd")
    known: dict[ir.Value, tuple] = {}  # value -> (dims, type): results checked so far, operands read
    verdicts: dict[tuple, tuple] = {}  # signature -> dims per result, of ops that passed
    lookup, seen = known.get, body.dims_attrs.add
    for op in program_ops(fn):
        name = op.name
        if name in _TERMINATORS:
            continue
        try:
            attr = op.attributes[_DIMS]
        except KeyError:
            attr = None
        results = list(op.results)
        if attr is None or name == _WHILE:
            dims = _check_op(op, kind, known)
            if dims is None:
                continue
            types = [r.type for r in results]
            if name == "stablehlo.while" and mir.LOOP_DIM in op.attributes:
                body.loops.append(op)
        else:
            types = tuple([r.type for r in results])
            if operands and name in _SIZE_KEEPING:
                key = (name, attr, types, tuple([lookup(v) or _operand(v, known) for v in op.operands]))
            else:
                key = (name, attr, types)
            dims = verdicts.get(key)
            if dims is None:
                dims = verdicts[key] = _check_op(op, kind, known)
        seen(attr)
        for r, d, t in zip(results, dims, types):
            known[r] = (d, t)
        if state:
            for d, cls in zip(dims, mir.op_result_classes(op)):
                if cls == "param":
                    body.state.update(d)
    return body


def _operand(value: ir.Value, known: dict) -> tuple | None:
    """(dims, type) of an operand not produced by a checked op (an argument of
    @main or of a loop's region), remembered in `known`; None when it has no
    dims to read (reported at its own op)."""
    try:
        entry = known[value] = (tuple(mir.value_dims(value)), value.type)
    except (MtfcError, KeyError, IndexError, ValueError):
        return None
    return entry


def _check_op(op: ir.Operation, kind: str, known: dict) -> tuple | None:
    """Check one op of @main's body (or of a loop's): its dims, their sizes,
    a loop's carried values.  Returns its dims per result (None for an op
    allowed to carry none)."""
    what = mir.describe_op_lazily(op)
    if mir.DIMS not in op.attributes:
        if kind == "shardy" or not len(op.results):
            return None  # Shardy's own reshapes may have no names (docs/passes/shardy.md)
        raise MtfcError(f"{what} carries no mtfc.dims")
    try:
        dims = mir.op_result_dims(op)
    except (ValueError, TypeError, AssertionError):
        raise MtfcError(f"{what}: mtfc.dims must be a list of strings (or of lists, one per result)") from None
    if len(dims) != len(op.results):
        raise MtfcError(f"{what}: mtfc.dims lists {len(dims)} results, the op has {len(op.results)}")
    for d, r in zip(dims, op.results):
        _check_dims(d, r.type, what)
    _check_one_size(op, dims, kind, what, known)
    if op.name == "stablehlo.while" and mir.LOOP_DIM in op.attributes:
        _check_loop(op, dims, kind, what)
    return tuple(tuple(d) for d in dims)


def _check_loop(op: ir.Operation, dims: list[list[str]], kind: str, what: str) -> None:
    """A loop's attributes, and the dims of what enters, circulates and leaves
    (the results' dims are `dims` itself)."""
    for key in (mir.CLASSES, mir.TRIP_COUNT):
        if key not in op.attributes:
            raise MtfcError(f"{what}: a loop carries {mir.CLASSES}, {mir.LOOP_DIM} and {mir.TRIP_COUNT} "
                            f"(docs/IR.md, \"Loops\"); {key} is missing")
    try:
        classes = mir.read_str_array(op.attributes[mir.CLASSES])
        _string_attr(op.attributes, mir.LOOP_DIM, what)
        trips = ir.IntegerAttr(op.attributes[mir.TRIP_COUNT]).value
    except (ValueError, TypeError):
        raise MtfcError(f"{what}: {mir.CLASSES} is a list of strings, {mir.LOOP_DIM} a string and "
                        f"{mir.TRIP_COUNT} an integer") from None
    if len(classes) != len(dims):
        raise MtfcError(f"{what}: {mir.CLASSES} lists {len(classes)} classes for {len(dims)} carried values")
    for k, cls in enumerate(classes):
        if cls not in ("activation", "param"):
            raise MtfcError(f"{what}: carried value #{k} has unknown class {cls!r} (activation or param)")
    if trips < 0:
        raise MtfcError(f"{what}: {mir.TRIP_COUNT} = {trips} is negative")
    for k, v in enumerate(op.operands):
        _check_carried(v, dims[k], kind, f"{what}: carried value #{k} enters", k)
    body = op.regions[1].blocks[0]
    ret = list(body.operations)[-1].operation
    for k, v in enumerate(ret.operands):
        _check_carried(v, dims[k], kind, f"{what}: its body returns carried value #{k}", k)


def _check_carried(value: ir.Value, want: list[str], kind: str, where: str, k: int) -> None:
    try:
        got = mir.value_dims(value)
    except (MtfcError, KeyError, IndexError, ValueError):
        if kind == "shardy":
            return  # a value Shardy made, unnamed
        raise
    if got != want:
        raise MtfcError(f"{where} with dims {got}, but the loop's {mir.DIMS} give it {want}; a carried value "
                        "has the same dims at entry, in the body and at exit")


def _check_one_size(op: ir.Operation, dims: list[list[str]], kind: str, what: str,
                    known: dict | None = None) -> None:
    """Within one op a dim name has one size: over its results, and for ops that
    keep sizes (elementwise, dot_general, reduce, transpose) in a global
    program over its named operands too.  A collective's results are
    independent values, as an optimization_barrier's (a fused all_reduce of
    two kernels' gradients may hold ``kh:1`` and ``kh:3``), and so are a
    loop's carried values (in a per-device program a param-class one may
    hold a dim split that an activation leaves whole): each is checked on
    its own."""
    rule = op_rules.rule_of(op.name)
    independent = rule is not None and (rule.family == "collective" or rule.result_dims_of_operand)
    if (independent or op.name == "stablehlo.while") and len(op.results) > 1:
        for k, d in enumerate(dims):
            _check_sizes([(d, op.results[k].type, f"result #{k}")], what)
        return
    values = [(d, r.type, f"result #{k}") for k, (d, r) in enumerate(zip(dims, op.results))]
    if kind in ("none", "gspmd") and op.name in _SIZE_KEEPING:
        known = {} if known is None else known
        for k, v in enumerate(op.operands):
            entry = known.get(v) or _operand(v, known)
            if entry is not None:  # an unnamed operand is reported at its own op
                values.append((entry[0], entry[1], f"operand #{k}"))
    _check_sizes(values, what)


def _check_sizes(values: list, what: str) -> None:
    """`values`' (dims, type, where) agree on the size of every dim name."""
    sizes: dict[str, tuple[int, str]] = {}
    for names, value_type, where in values:
        if not isinstance(value_type, ir.RankedTensorType):
            continue
        shape = ir.RankedTensorType(value_type).shape
        if len(names) != len(shape):
            continue
        for name, size in zip(names, shape):
            if name in sizes and sizes[name][0] != size:
                raise MtfcError(f"{what}: dim {name!r} has size {sizes[name][0]} in its {sizes[name][1]} and "
                                f"{size} in its {where}; a dim name has one size within one op")
            sizes.setdefault(name, (size, where))


def _int_attr(attrs, key: str) -> int | None:
    if key not in attrs:
        return None
    try:
        return ir.IntegerAttr(attrs[key]).value
    except (ValueError, TypeError):
        raise MtfcError(f"module: {key} must be an integer, not {attrs[key]}") from None


def _check_counts(module: ir.Module, kind: str, size: int) -> None:
    attrs = module.operation.attributes
    want = {"gspmd": (size, 1), "shardy": (size, 1), "explicit": (1, size), "none": (1, 1)}[kind]
    for key, expected in zip(("mhlo.num_partitions", "mhlo.num_replicas"), want):
        got = _int_attr(attrs, key)
        if got is not None and got != expected and not (kind == "none" and got == 1):
            raise MtfcError(f"module: {key} = {got}, but a module partitioned {kind} on a mesh of {size} "
                            f"device(s) has {expected}")


def _same_sharding(text: str, expected: str) -> bool:
    from jaxlib import xla_client

    try:
        return xla_client.HloSharding.from_string(text) == xla_client.HloSharding.from_string(expected)
    except Exception:  # an unparsable sharding agrees with nothing
        return False


def _check_shardings(fn: ir.Operation, kind: str, layouts: mir.Layouts,
                     args: list[_Interface], results: list[_Interface]) -> None:
    from mtfc.passes.hlo_sharding import hlo_sharding

    for v in args + results:
        text = _string_attr(v.attrs, SHARDING, v.what)
        if kind == "gspmd":
            expected = hlo_sharding(layouts.of_value(v.dims, v.shape, cls=v.cls, what=v.what))
            if text is None:
                raise MtfcError(f"{v.what}: a gspmd module's arguments and results carry mhlo.sharding "
                                f"(its dims imply {expected})")
            if not _same_sharding(text, expected):
                raise MtfcError(f"{v.what}: mhlo.sharding {text} contradicts its dims {v.dims} under the layout, "
                                f"which give {expected}")
        elif kind == "shardy":
            if text != "{manual}":
                raise MtfcError(f"{v.what}: a shardy module's arguments and results carry mhlo.sharding = "
                                f"\"{{manual}}\", not {text if text is not None else 'none'}")
        elif text is not None:
            raise MtfcError(f"{v.what}: carries mhlo.sharding {text}, but the module is {kind} "
                            "(mtfc.partitioning = \"gspmd\" for a module XLA splits)")
    if kind != "gspmd":
        return
    for op in program_ops(fn):
        if SHARDING not in op.attributes or mir.DIMS not in op.attributes:
            continue
        what = mir.describe_op(op)
        whole = set(mir.read_str_array(op.attributes[mir.WHOLE])) if mir.WHOLE in op.attributes else set()
        texts = [hlo_sharding(_without(layouts.of_value(d, tuple(ir.RankedTensorType(r.type).shape),
                                                        cls=cls, what=f"value of {what}"), whole))
                 for d, r, cls in zip(mir.op_result_dims(op), op.results, mir.op_result_classes(op))]
        expected = texts[0] if len(texts) == 1 else "{" + ", ".join(texts) + "}"
        text = _string_attr(op.attributes, SHARDING, what)
        if not _same_sharding(text, expected):
            raise MtfcError(f"{what}: mhlo.sharding {text} contradicts its dims under the layout, "
                            f"which give {expected}")


def _without(layout, whole: set):
    """`layout` with the dims named in `whole` unsplit (``mtfc.whole``)."""
    if not whole:
        return layout
    from mtfc.mesh import TensorLayout

    return TensorLayout(layout.dims, layout.sizes,
                        tuple(() if d in whole else a for d, a in zip(layout.dims, layout.axes)), layout.mesh)


def _check_layouts_apply(layouts: mir.Layouts, args: list[_Interface], results: list[_Interface]) -> None:
    """Every argument's and result's layout is possible (axes, divisibility)."""
    for v in args + results:
        layouts.of_value(v.dims, v.shape, cls=v.cls, what=f"{v.what} [{', '.join(v.dims)}]")


def _check_per_device(module: ir.Module, layouts: mir.Layouts,
                      args: list[_Interface], results: list[_Interface]) -> None:
    """A per-device program's interface is its reference's, with local shapes."""
    if not mir.has_reference(module):
        return  # no reference: it can go through passes, but `mtfc run` refuses it
    reference = mir.reference_module(module)
    if mir.partitioning(reference) != "none":
        raise MtfcError("module @mtfc.reference: its mtfc.partitioning must be \"none\" (the global program)")
    _verify(reference, where="module @mtfc.reference: ", allow_unused=True)
    ref_args, ref_results = _interfaces(mir.entry_function(reference))
    for mine, theirs, kind in ((args, ref_args, "arguments"), (results, ref_results, "results")):
        if len(mine) != len(theirs):
            raise MtfcError(f"@main has {len(mine)} {kind}, its reference program {len(theirs)}")
        for v, g in zip(mine, theirs):
            for field in ("name", "role", "dims", "dtype"):
                if getattr(v, field) != getattr(g, field):
                    raise MtfcError(f"{v.what}: {field} {getattr(v, field)} differs from the reference "
                                    f"program's {getattr(g, field)}")
            local = layouts.of_value(g.dims, g.shape, cls=g.cls, what=f"{g.what} of the reference").local_sizes
            if tuple(v.shape) != tuple(local):
                raise MtfcError(f"{v.what}: per-device shape {list(v.shape)} is not the local shape {list(local)} "
                                f"of its global shape {list(g.shape)} (dims {g.dims}) under the layout")


def _interface_dims(args, results) -> tuple[set[str], set[str]]:
    """(dims of @main's arguments and results, dims of those that are stored state)."""
    every: set[str] = set()
    state: set[str] = set()
    for v in args + results:
        every.update(v.dims)
        if v.role in mir.STATE_ROLES:
            state.update(v.dims)
    return every, state


def module_dims(fn: ir.Operation, args, results) -> tuple[set[str], set[str]]:
    """(dims of every value of @main, dims of its parameters and optimizer state)."""
    every, state = _interface_dims(args, results)
    for op in program_ops(fn):
        if mir.DIMS not in op.attributes or op.name in _TERMINATORS:
            continue
        for d, cls in zip(mir.op_result_dims(op), mir.op_result_classes(op)):
            every.update(d)
            if cls == "param":
                state.update(d)
    return every, state


def _unused_rule_error(rule: str, dim: str, have: set[str], what: str, holder: str) -> MtfcError:
    close = difflib.get_close_matches(dim, sorted(have), n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    else:
        listed = sorted(have)
        hint = "its dims: " + (", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "") if listed else "none")
    return MtfcError(
        f"{what} rule '{rule}' names dim {dim!r}, which no {holder} of the module has ({hint}); "
        "a layout shared between models may keep such rules with --allow-unused-rules"
    )


def check_rules_used(module: ir.Module, fn: ir.Operation, args, results, body: _Body | None = None) -> None:
    """Every layout rule names a dim of the module, every parameter-layout rule
    a dim of its stored state (parameters, optimizer state, param-class ops).
    `body`: what `_check_body` collected of `fn` (its state dims included,
    when the module has a parameter layout), instead of walking it again."""
    if mir.ALLOW_UNUSED_RULES in module.operation.attributes:
        return
    every, state = body.module_dims(args, results) if body is not None else module_dims(fn, args, results)
    checks = [(mir.module_layout(module), every, "layout", "value")]
    if mir.PARAM_LAYOUT in module.operation.attributes:
        checks.append((mir.module_param_layout(module), state, "parameter layout",
                       "parameter or optimizer state"))
    for rules, have, what, holder in checks:
        for dim, axes in rules.rules:
            if dim not in have:
                raise _unused_rule_error(f"{dim}:{'+'.join(axes)}", dim, have, what, holder)


_MODULE_STRINGS = (mir.MESH, mir.LAYOUT, mir.PARAM_LAYOUT, mir.PARTITIONING, mir.STEP, mir.OPTIMIZER)


def _verify(module: ir.Module, *, where: str = "", allow_unused: bool = False) -> None:
    try:
        for key in _MODULE_STRINGS:
            _string_attr(module.operation.attributes, key, "module")
        kind = mir.partitioning(module)
        if kind not in KINDS:
            raise MtfcError(f"module: unknown mtfc.partitioning {kind!r} (one of {', '.join(KINDS)})")
        layouts = mir.module_layouts(module)
        layouts.validate()
        _check_counts(module, kind, layouts.mesh.size)
        fn = mir.entry_function(module)
        args, results = _interfaces(fn)
        _check_interfaces(args, results)
        body = _check_body(fn, kind, state=mir.PARAM_LAYOUT in module.operation.attributes)
        if body.loops:  # (nothing to check without loops)
            check_loop_dims(module)
        if kind in ("none", "gspmd"):
            _check_layouts_apply(layouts, args, results)
        if not allow_unused:
            check_rules_used(module, fn, args, results, body)
        _check_shardings(fn, kind, layouts, args, results)
        if kind in mir.PER_DEVICE:
            _check_per_device(module, layouts, args, results)
    except MtfcError as e:
        if where:
            raise MtfcError(f"{where}{e}") from None
        raise


def verify_module(module: ir.Module, *, source: str | None = None) -> None:
    """Check `module` against the IR contract (the pass `verify-names`);
    errors are prefixed with `source` (the module's file) when given."""
    with module.context, ir.Location.unknown():
        _verify(module, where=f"{source}: " if source else "")


@register_pass("verify-names", changes=False)
def verify_names(module: ir.Module, options) -> None:
    """Check the IR contract (dims, roles, names, layouts, shardings) of docs/IR.md."""
    _verify(module)
