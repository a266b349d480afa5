"""The pass registry and pipeline runner (with numbered per-pass dumps).

A pass is a function ``(module, options) -> None`` that rewrites `module` in
place.  `run_passes` runs a list of them, verifying the module after each
(after a pass registered read-only, only if the module was not known to
verify before it), and when given a dump directory writes ``00-input.mlir``,
``01-<first-pass>.mlir``, ... so every intermediate module can be read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from jax.extend.mlir import ir

from mtfc.errors import MtfcError


@dataclass
class PassOptions:
    """Options shared by all passes (set from the command line)."""

    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Pass:
    name: str
    run: Callable[[ir.Module, PassOptions], None]
    summary: str
    changes: bool = True  # False: the pass only checks (it leaves the module as it was)


PASSES: dict[str, Pass] = {}

# `mtfc compile --mode M` runs PIPELINES[M] after lowering.
PIPELINES: dict[str, list[str]] = {
    "none": ["verify-names"],
    "gspmd": ["verify-names", "attach-shardings"],
    "explicit": ["verify-names", "partition", "fuse-collectives"],
    "shardy": ["verify-names", "sdy-partition", "fuse-collectives"],
}


def register_pass(name: str, *, changes: bool = True):
    """Decorator registering ``fn(module, options)`` as pass `name`; its docstring's
    first line is the pass's summary.  `changes=False`: the pass never changes
    the module (a check), so a module that verified before it still does."""

    def wrap(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        PASSES[name] = Pass(name, fn, summary, changes)
        return fn

    return wrap


def parse_pass_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    for n in names:
        if n not in PASSES:
            raise MtfcError(f"unknown pass {n!r} (known: {', '.join(sorted(PASSES))})")
    return names


def run_passes(
    module: ir.Module,
    names: list[str],
    *,
    options: PassOptions | None = None,
    dump_dir: str | None = None,
    verified: bool = False,
) -> ir.Module:
    """Run passes `names` over `module` in place; return it.  `verified`: the
    module is known to verify (`compile_entry`'s, just lowered and verified),
    so a read-only pass first (verify-names) is not followed by verifying
    it again."""
    from mtfc.files.atomic import write_text_atomic
    from mtfc.files.modules import module_text

    options = options or PassOptions()
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        write_text_atomic(os.path.join(dump_dir, "00-input.mlir"), module_text(module))
    for i, name in enumerate(names, start=1):
        if name not in PASSES:
            raise MtfcError(f"unknown pass {name!r} (known: {', '.join(sorted(PASSES))})")
        with module.context, ir.Location.unknown():
            PASSES[name].run(module, options)
        if PASSES[name].changes or not verified:
            if not module.operation.verify():
                raise AssertionError(f"pass {name} produced a module that does not verify")
            verified = True
        if dump_dir:
            write_text_atomic(os.path.join(dump_dir, f"{i:02d}-{name}.mlir"), module_text(module))
    return module


# Importing the pass modules registers them.
from mtfc.passes import verify_names, attach_shardings, partition, fuse_collectives  # noqa: E402,F401
from mtfc.passes import shardy  # noqa: E402,F401
