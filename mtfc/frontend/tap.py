"""Intermediate values as results: `mtf.tap` in a model, ``mtfc compile --tap PATTERN``.

A *tap* is an extra result of the compiled module carrying a value the model
computes along the way (docs/dsl.md, "Taps"):

* ``mtf.tap(x, "name")`` returns `x` unchanged and records it under the
  result name ``tap/<scope>/name`` (the name scope it is called in, as
  `get_variable` names parameters);
* ``--tap PATTERN`` (`pattern_taps`) taps, without editing the model, the
  results of every op whose name (``scope/op``, as the op's location in the
  module shows it) or one of whose scopes matches the fnmatch pattern:
  ``tap/<op name>`` (an op with several results: ``tap/<op name>.K`` for
  result K).

Taps are results with ``mtfc.role = "tap"`` and the tapped value's dims;
they are appended after every other result (so a train step's aliases are
unchanged) and are laid out, partitioned and gathered like any result.
Taps add results only: the values, gradients and updates of the other
results are those of the untapped program.  A tap inside a loop body
(`mtf.scan`, `layers.repeat`, `mtf.pipeline`) is refused: return the value
from the body -- the loop stacks it along its dim -- and tap that.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re

from mtfc.errors import MtfcError
from mtfc.frontend.graph import Graph, Tensor, current_graph, fail, user_location

PREFIX = "tap/"
ROLE = "tap"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
# ops whose outputs are not computed values (graph inputs, loop-body placeholders)
_NOT_VALUES = ("variable", "body_input")


def _line(location) -> str:
    return f"{os.path.basename(location[0])}:{location[1]}" if location else "(unknown line)"


def tap(x: Tensor, name: str) -> Tensor:
    """Return `x` unchanged, and make it a result of the module named
    ``tap/<scope>/<name>`` (role ``tap``, `x`'s dims): ``mtfc run
    --outputs`` saves it, forward or train step.  Names are scoped by
    `mtf.scope`; a name tapped twice is an error naming both lines; inside
    a loop body it is an error (tap the loop's stacked result instead)."""
    graph = current_graph()
    if not isinstance(x, Tensor):
        raise fail(f"mtf.tap({name!r}): expected an mtfc tensor, got {type(x).__name__}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"mtf.tap: name {name!r} must be non-empty letters, digits, '_', '.', '-' (and '/' between parts)")
    if graph.parent is not None or graph.unrolled_trip is not None:
        raise fail(f"mtf.tap({name!r}) inside a loop body (mtf.scan, layers.repeat, mtf.pipeline) is not "
                   f"supported: return the value from the body (the loop stacks it along its dim) and tap that")
    if x.op.graph is not None and x.op.graph is not graph:
        graph.capture(x)  # (a loop body's tensor used outside its body: capture's error)
    full = PREFIX + (f"{graph.scope_prefix()}/{name}" if graph.scope_prefix() else name)
    if full in graph.taps:
        raise fail(f"tap {full!r} is made twice: at {_line(graph.taps[full][1])} and here "
                   f"(give one of them another name, or call it in another mtf.scope)")
    graph.taps[full] = (x, user_location())
    return x


def tappable_operations(graph: Graph):
    """The ops of `graph` whose results ``--tap`` may name (not graph inputs)."""
    return [op for op in graph.operations if op.primitive not in _NOT_VALUES and op.outputs]


def _op_results(op) -> list[tuple[str, Tensor]]:
    if len(op.outputs) == 1:
        return [(PREFIX + op.name, op.outputs[0])]
    return [(f"{PREFIX}{op.name}.{k}", t) for k, t in enumerate(op.outputs)]


def _body_names(graph: Graph) -> list[str]:
    """Names of ops inside loop bodies (`Graph` objects in ops' params), for the error of a pattern matching only them."""
    names, stack, seen = [], [graph], set()
    while stack:
        g = stack.pop()
        for op in g.operations:
            for value in op.params.values():
                value = getattr(value, "graph", value)  # a loop's `Body`
                if isinstance(value, Graph) and id(value) not in seen:
                    seen.add(id(value))
                    names.extend(o.name for o in value.operations if o.primitive not in _NOT_VALUES)
                    stack.append(value)
    return names


def matches(op_name: str, pattern: str) -> bool:
    """Whether ``--tap`` `pattern` names the op `op_name`: fnmatch of the
    name itself or of one of its scopes (``block0/attention`` names every op
    in that scope, as ``block0/attention/*`` does)."""
    parts = op_name.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:k]), pattern) for k in range(len(parts), 0, -1))


def pattern_taps(graph: Graph, patterns) -> dict[str, Tensor]:
    """``--tap PATTERN``s -> result name -> tensor: the results of the ops of
    `graph` (the root graph) that a pattern names (`matches`: fnmatch of the
    op's name or a scope of it; ``*`` crosses ``/``), in graph order.  A
    pattern matching no op is an error listing the nearest op names."""
    ops = tappable_operations(graph)
    names = [op.name for op in ops]
    out: dict[str, Tensor] = {}
    for pattern in patterns:
        matched = [op for op in ops if matches(op.name, pattern)]
        if not matched:
            inside = [n for n in _body_names(graph) if matches(n, pattern)]
            if inside:
                raise MtfcError(f"--tap {pattern!r} matches only ops inside loop bodies (e.g. {inside[0]}), which "
                                f"cannot be tapped: tap the loop's result instead")
            near = difflib.get_close_matches(pattern, names, n=5, cutoff=0.0) if names else []
            raise MtfcError(f"--tap {pattern!r} matches no op of the model (nearest: {', '.join(near) or 'none'}; "
                            f"patterns are fnmatch over op names and scopes as in the module's locations, "
                            f"e.g. 'block0/attention')")
        for op in matched:
            out.update(_op_results(op))
    return out


def add_taps(graph: Graph, outputs: dict[str, Tensor], roles: dict[str, str], patterns=(),
             where: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """`outputs` and `roles` with the graph's `mtf.tap`s and the ``--tap``
    `patterns`' taps appended (role ``tap``).  A tap whose name is already an
    output's is an error (`where`: the entry's line); a pattern tap of the
    same tensor as an `mtf.tap` of the same name is one result."""
    taps: dict[str, Tensor] = {name: t for name, (t, _) in graph.taps.items()}
    for name, t in pattern_taps(graph, patterns).items():
        if name in taps and taps[name] is not t:
            raise MtfcError(f"--tap: result {name!r} is also the name of an mtf.tap of another value "
                            f"(at {_line(graph.taps[name][1])}); rename that tap")
        taps[name] = t
    if not taps:
        return outputs, roles
    outputs, roles = dict(outputs), dict(roles)
    for name, t in taps.items():
        if name in outputs:
            raise MtfcError(f"tap {name!r} has the name of one of the module's results; rename the output or the tap",
                            where=where)
        outputs[name], roles[name] = t, ROLE
    return outputs, roles
