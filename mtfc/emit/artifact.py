"""Writing modules in the three formats, chosen by file suffix.

``.mlir``   MLIR text with locations;
``.mlirbc`` MLIR bytecode;
portable    a versioned StableHLO (VHLO) artifact, `--portable`, any suffix.
Reading (which detects the format from the bytes) is `mtfc.files.modules`.
"""

from __future__ import annotations

import io

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo

from mtfc.files.atomic import write_bytes_atomic, write_text_atomic
from mtfc.files.modules import module_text


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
