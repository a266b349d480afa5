"""Module text and atomic file writes (temporary name, then rename)."""

from __future__ import annotations

import os
import tempfile

from jax.extend.mlir import ir


def module_text(module: ir.Module, *, debug_info: bool = True) -> str:
    """The module as MLIR text; with `debug_info`, locations (op names, model lines) too."""
    return module.operation.get_asm(enable_debug_info=debug_info)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())
