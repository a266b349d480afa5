"""The one exception type users see.

`MtfcError` is raised for every mistake in user input: a model file, a mesh
string, layout rules, a module handed to `mtfc opt`/`mtfc run`.  Its message is
one line that names the culprit; the CLI prints it as ``error: <message>`` and
exits non-zero without a traceback.  Internal invariants use ``assert``.
"""


class MtfcError(Exception):
    """A user-facing error with a one-line message naming the culprit."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
