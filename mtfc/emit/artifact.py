"""Writing and reading modules in the three formats, chosen by file suffix.

``.mlir``   MLIR text with locations;
``.mlirbc`` MLIR bytecode;
portable    a versioned StableHLO (VHLO) artifact, `--portable`, any suffix.
Reading detects the format from the bytes.
"""

from __future__ import annotations

import io
import os
import re

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo

from mtfc import ir as mir
from mtfc.emit.text import module_text, write_bytes_atomic, write_text_atomic
from mtfc.errors import MtfcError

_BYTECODE_MAGIC = b"ML\xefR"


def write_module(module: ir.Module, path: str, *, portable: bool = False) -> None:
    if portable:
        text = module_text(module, debug_info=False)
        version = stablehlo.get_current_version()
        data = stablehlo.serialize_portable_artifact_str(text, version)
        write_bytes_atomic(path, data if isinstance(data, bytes) else data.encode("latin1"))
    elif path.endswith(".mlirbc"):
        buffer = io.BytesIO()
        module.operation.write_bytecode(buffer)
        write_bytes_atomic(path, buffer.getvalue())
    else:
        write_text_atomic(path, module_text(module))


_PYTHON_IMPORT = re.compile(rb"^(import|from)\s+mtfc\b", re.MULTILINE)


def is_model_file(path: str, data: bytes) -> bool:
    """Whether `path` (holding `data`) is a model file rather than a module: a
    ``.py`` name, or text with a line importing mtfc (no line of MLIR text
    starts with ``import``/``from``)."""
    if path.endswith(".py"):
        return True
    return not data.startswith(_BYTECODE_MAGIC) and _PYTHON_IMPORT.search(data) is not None


def is_module_file(path: str) -> bool:
    """Whether `path` holds a module rather than a model file: a ``.mlir`` or
    ``.mlirbc`` name, or bytecode (a portable artifact too) whatever its name."""
    if path.endswith((".mlir", ".mlirbc")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(_BYTECODE_MAGIC)) == _BYTECODE_MAGIC
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
    if data.startswith(_BYTECODE_MAGIC):
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
