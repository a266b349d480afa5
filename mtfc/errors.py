"""The one exception type users see.

`MtfcError` is raised for every mistake in user input: a model file, a mesh
string, layout rules, a module handed to `mtfc opt`/`mtfc run`.  Its message is
one line that names the culprit; the CLI prints it as ``error: <message>`` and
exits non-zero without a traceback.  Internal invariants use ``assert``.
"""


class MtfcError(Exception):
    """A user-facing error with a one-line message naming the culprit; the
    CLI exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class Interrupted(MtfcError):
    """The user stopped the command (Ctrl-C, SIGINT); the message says where
    it stopped.  Exit status 130 (128 + SIGINT), as a shell reports it."""

    exit_code = 130


_show_warnings = True


def show_warnings(on: bool) -> None:
    """Turn `warn` on or off (off in the processes of a job other than process 0)."""
    global _show_warnings
    _show_warnings = on


def warn(message: str) -> None:
    """A warning for the user: one line ``warning: MESSAGE`` on stderr (a
    configuration mtfc will not silently ignore, or a choice it made)."""
    import sys

    if not _show_warnings:
        return
    print(f"warning: {message}", file=sys.stderr, flush=True)
