"""Atomic file writes (a temporary name in the same folder, then a rename) and
the check that an output path can be written.  Below `emit/` and `runtime/`:
it imports nothing of mtfc but its errors."""

from __future__ import annotations

import os
import secrets

from mtfc.errors import MtfcError


def _create_temporary(folder: str, name: str) -> tuple[int, str]:
    """Create a new, empty temporary file for `name` in `folder`; return (fd, path).

    It is created with mode 0666 minus the process's umask, as `open(path,
    "w")` would create `name` itself (`tempfile.mkstemp` would make it 0600,
    and the rename would keep that)."""
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def check_writable(path: str) -> None:
    """Fail (an `MtfcError` naming `path`) when `path` cannot be written: it is
    a directory, or its folder exists and is not writable.  Commands call it
    before long work, so that a bad output path fails first and alone."""
    if os.path.isdir(path):
        raise MtfcError(f"{path!r}: Is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
        raise MtfcError(f"{path!r}: Permission denied")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder,
    renamed into place: `path` holds either its old content or all of `data`,
    never part of it; the file gets the user's umask (like `open(path, "w")`)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temporary(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """`write_bytes_atomic` of `text` as UTF-8."""
    write_bytes_atomic(path, text.encode())
