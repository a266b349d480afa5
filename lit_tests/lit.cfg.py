"""lit configuration: every .mlir file under lit_tests/ is a FileCheck test.

Substitutions: `mtfc` is the console script of the active environment and
`FileCheck` the Python port of LLVM's FileCheck (the `filecheck` package),
both found next to the running Python, then on PATH.
"""

import os
import shutil
import sys

import lit.formats

config.name = "mtfc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".mlir"]
config.excludes = ["Inputs"]
config.test_source_root = os.path.dirname(__file__)


def _tool(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if found is None:
        lit_config.fatal(f"cannot find {name!r}: install the test extras (pip install -e '.[test]')")
    return found


config.substitutions.append(("FileCheck", _tool("filecheck")))
config.substitutions.append(("mtfc", _tool("mtfc")))
config.environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
for var in ("HOME", "PATH", "TMPDIR", "PYTHONPATH"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
