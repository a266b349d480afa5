"""MLIR -> MLIR passes over named StableHLO, and the pipelines that chain them.

Each pass lives in its own module with a docstring stating what it requires
of its input and what it guarantees of its output.  `manager` registers them
by name; `PIPELINES` names the sequences `mtfc compile --mode` runs.
"""

from mtfc.passes.manager import PASSES, PIPELINES, Pass, run_passes  # noqa: F401
