"""`mtfc run`: read and verify a module, then train it (a train-step module,
`train.py`) or run it forward (`forward.py`)."""

from __future__ import annotations

from typing import Callable

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.files.modules import read_module
from mtfc.passes.verify_names import verify_module
from mtfc.runtime.forward import run_command
from mtfc.runtime.train import TrainOptions, train_command

DEFAULT_REPEAT = 3  # timed executions of a forward run


def run_or_train(module_file: str, options: TrainOptions, *, backend: str, seed: int, inputs_file, outputs_file,
                 check: bool, repeat: int | None, echo: Callable[[str], None]) -> bool:
    """`mtfc run`: the training loop for a train-step module, the forward run otherwise."""
    context = mir.new_context()
    module = read_module(module_file, context)
    verify_module(module, source=module_file)  # nothing runs a module that breaks the IR contract
    kind = mir.step_kind(module)
    if kind == "train":
        if repeat is not None:
            raise MtfcError(f"--repeat is for forward modules; {module_file} is a train-step module (use --steps)")
        return train_command(module, module_file, options, backend=backend, seed=seed, outputs_file=outputs_file,
                             inputs_file=inputs_file, check=check, echo=echo)
    if kind is not None:
        raise MtfcError(f"{module_file}: unknown mtfc.step {kind!r} (the runner knows \"train\")")
    given = options.given()
    if given:
        raise MtfcError(
            f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} a train-step module "
            f"(mtfc.step = \"train\"); "
            f"{module_file} is a forward module"
        )
    return run_command(module_file, backend=backend, seed=seed, inputs_file=inputs_file, outputs_file=outputs_file,
                       check=check, repeat=DEFAULT_REPEAT if repeat is None else repeat, echo=echo, module=module)
