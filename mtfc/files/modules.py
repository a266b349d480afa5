"""Reading module files (text, bytecode, portable artifacts), telling modules
from model files, and printing modules.  Below `emit/` and `runtime/`: the
compiler writes modules (`mtfc.emit.artifact`), the runner and `opt` read them.
"""

from __future__ import annotations

import os
import re

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo

from mtfc import ir as mir
from mtfc.errors import MtfcError

BYTECODE_MAGIC = b"ML\xefR"


def module_text(module: ir.Module, *, debug_info: bool = True) -> str:
    """The module as MLIR text; with `debug_info`, locations (op names, model lines) too."""
    return module.operation.get_asm(enable_debug_info=debug_info)


_PYTHON_IMPORT = re.compile(rb"^(import|from)\s+mtfc\b", re.MULTILINE)


def is_model_file(path: str, data: bytes) -> bool:
    """Whether `path` (holding `data`) is a model file rather than a module: a
    ``.py`` name, or text with a line importing mtfc (no line of MLIR text
    starts with ``import``/``from``)."""
    if path.endswith(".py"):
        return True
    return not data.startswith(BYTECODE_MAGIC) and _PYTHON_IMPORT.search(data) is not None


def is_module_file(path: str) -> bool:
    """Whether `path` holds a module rather than a model file: a ``.mlir`` or
    ``.mlirbc`` name, or bytecode (a portable artifact too) whatever its name."""
    if path.endswith((".mlir", ".mlirbc")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(BYTECODE_MAGIC)) == BYTECODE_MAGIC
    except OSError:
        return False  # the model-file loader says what is wrong with the path


def read_module(path: str, context: ir.Context) -> ir.Module:
    """Read text, bytecode or a portable artifact into `context`."""
    try:
        if path == "-":
            import sys

            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise MtfcError(f"cannot read module {path!r}: {e.strerror}") from None
    if is_model_file(path, data):
        stem = os.path.splitext(path)[0] if path.endswith(".py") else path
        raise MtfcError(
            f"{path} is a model file (Python), not a module: compile it first with "
            f"'mtfc compile {path} -o {stem}.mlir'"
        )
    if data.startswith(BYTECODE_MAGIC):
        # MLIR reports why a portable artifact did not deserialize through the
        # context's diagnostics; keep them off stderr and fall back to plain
        # bytecode, whose parse error (if any) becomes our one-line error.
        handler = context.attach_diagnostic_handler(lambda diagnostic: True)
        try:
            module = stablehlo.deserialize_portable_artifact(context, data)
        except Exception:
            module = None
        finally:
            handler.detach()
        return module if module is not None else mir.parse_module(data, context, source=path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise MtfcError(f"{path} is neither MLIR text nor bytecode") from None
    return mir.parse_module(text, context, source=path)
