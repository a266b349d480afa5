"""`mtfc run`: read and verify a module, join the job (one process, or one
of several: `distributed.py`), then train it (a train-step module,
`train.py`) or run it forward (`forward.py`).  In a multi-process job only
process 0 prints (and writes ``--outputs`` and ``--log``); the others print
nothing but errors."""

from __future__ import annotations

from typing import Callable

from mtfc import ir as mir
from mtfc import errors
from mtfc.errors import MtfcError
from mtfc.runtime import distributed, failure
from mtfc.files.modules import read_module
from mtfc.passes.verify_names import verify_module
from mtfc.runtime.forward import run_command
from mtfc.runtime.train import TrainOptions, train_command

DEFAULT_REPEAT = 3  # timed executions of a forward run


def run_or_train(module_file: str, options: TrainOptions, *, backend: str, seed: int, inputs_file, outputs_file,
                 check: bool, repeat: int | None, echo: Callable[[str], None],
                 job: distributed.JobFlags | None = None) -> bool:
    """`mtfc run`: the training loop for a train-step module, the forward run
    otherwise; `job`: the ``--coordinator`` ... flags (`distributed.resolve_job`)."""
    found = distributed.resolve_job(job)  # bad job flags or MTFC_* variables fail first
    context = mir.new_context()
    module = read_module(module_file, context)
    verify_module(module, source=module_file)  # nothing runs a module that breaks the IR contract
    kind = mir.step_kind(module)
    if kind == "train" and repeat is not None:
        raise MtfcError(f"--repeat is for forward modules; {module_file} is a train-step module (use --steps)")
    if kind not in (None, "train"):
        raise MtfcError(f"{module_file}: unknown mtfc.step {kind!r} (the runner knows \"train\")")
    given = options.given()
    if kind is None and given:
        raise MtfcError(
            f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} a train-step module "
            f"(mtfc.step = \"train\"); "
            f"{module_file} is a forward module"
        )
    join_job(found, module, module_file, backend)
    if not distributed.is_primary():
        echo = _quiet
        errors.show_warnings(False)
    if found.is_multi_process:
        failure.watch_termination()  # SIGTERM ends the process, also inside a collective
        failure.watch_peers()  # a lost process ends this one within the heartbeat timeout, wherever it is
    try:
        with failure.guard():  # a lost process ends this one with one line (failure.py)
            if kind == "train":
                ok = train_command(module, module_file, options, backend=backend, seed=seed,
                                   outputs_file=outputs_file, inputs_file=inputs_file, check=check, echo=echo)
            else:
                ok = run_command(module_file, backend=backend, seed=seed, inputs_file=inputs_file,
                                 outputs_file=outputs_file, check=check,
                                 repeat=DEFAULT_REPEAT if repeat is None else repeat, echo=echo, module=module)
    except MtfcError as e:
        distributed.note_exit_status(e.exit_code)
        raise
    except KeyboardInterrupt:
        distributed.note_exit_status(errors.Interrupted.exit_code)
        raise
    except BaseException:
        distributed.note_exit_status(3)  # the CLI's status for an internal error
        raise
    distributed.note_exit_status(0 if ok else 1)
    return ok


def _quiet(line: str) -> None:
    """A process other than 0 prints nothing but errors."""


def join_job(job: distributed.Job, module, module_file: str, backend: str) -> None:
    """Join `job` with as many devices per process as `module`'s mesh needs."""
    if mir.partitioning(module) == "none":
        if job.is_multi_process:
            raise MtfcError(f"{module_file} is a global module (partitioning none) for one device; it cannot run "
                            f"across {job.num_processes} processes (compile it with a mesh and --mode)")
        size = 1
    else:
        size = max(mir.module_mesh(module).size, 1)
    distributed.join(job, backend=backend, local_devices=distributed.check_mesh(job, size, backend))
