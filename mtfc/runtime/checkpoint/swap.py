"""The file-system side of a save: one saver per directory, a temporary next to
it, and the atomic swap that makes the new checkpoint DIR.

A saver holds ``flock`` on ``.DIR.lock`` next to DIR (the file holds its
pid; a second saver fails with a line naming it), builds the checkpoint in
``.DIR.tmp-HOST-PID-RANDOM`` (HOST and PID of the saving process: a
temporary whose owner is dead is removed by the next save), and swaps it
with DIR: ``renameat2(RENAME_EXCHANGE)`` on Linux, else two renames (a crash
between them leaves the previous checkpoint under ``.DIR.old-*``, which
restoring finds).  Either way DIR is the previous checkpoint or the new one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import re
import shutil
import socket
import tempfile

from mtfc.errors import MtfcError
from mtfc.runtime.checkpoint.index import old_prefix


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", ".", name)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file and directory under `path` (orbax's writes included)."""
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def temp_prefix(path: str) -> str:
    return f".{os.path.basename(os.path.normpath(path))}.tmp-"


def owner_tag() -> str:
    """HOST-PID of this process, as a temporary directory's name carries it."""
    return f"{_safe(socket.gethostname()).replace('-', '.')}-{os.getpid()}-"


def _owner_alive(name: str, prefix: str) -> bool:
    """Whether the temporary `name` (``PREFIX HOST-PID-RANDOM``) belongs to a live
    process of this host other than this one (temporaries of other hosts count as live)."""
    rest = name[len(prefix):].split("-")
    if len(rest) < 3 or not rest[1].isdigit():
        return False  # an older mtfc's temporary, or a stray: no owner to wait for
    host, pid = rest[0], int(rest[1])
    if host != _safe(socket.gethostname()).replace("-", "."):
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_temporary(path: str) -> str:
    """Remove the temporaries of dead savers of `path`; make and return a new one
    (with the user's umask)."""
    parent = os.path.dirname(path)
    prefix = temp_prefix(path)
    for stale in glob.glob(os.path.join(parent, glob.escape(prefix) + "*")):
        if not _owner_alive(os.path.basename(stale), prefix):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix + owner_tag())
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700
    return tmp


def lock_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


class SaveLock:
    """Exclusive ``flock`` on ``.DIR.lock`` next to the checkpoint for the length
    of one save; the file holds the saver's pid and is removed when done.

    The holder unlinks the file before unlocking, so a process that locked a
    file since unlinked retries on the new one (inode check)."""

    def __init__(self, path: str, shown: str):
        self.file = lock_path(path)
        self.shown = shown
        self.fd = -1

    def acquire(self) -> None:
        for _ in range(100):
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise MtfcError(f"{self.shown}: another mtfc run{who} is saving here") from None
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise AssertionError(f"could not lock {self.file}")

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.file)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


def commit(tmp: str, path: str) -> None:
    """Make the finished temporary `tmp` the checkpoint `path` (the previous one, if any, is removed)."""
    if not os.path.exists(path):
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous checkpoint
    else:
        # No atomic exchange: move the old checkpoint aside first.  A crash between
        # the two renames leaves it intact under .DIR.old-*, which `resolve` finds.
        old = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=old_prefix(path))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(os.path.dirname(path))
