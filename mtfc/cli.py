"""The `mtfc` command line: compile, opt, inspect, run, eval, launch, checkpoint.

Every user mistake ends as one line ``error: ...`` on stderr and exit status
1 (2 for command-line usage errors, as click does); outputs are written to a
temporary name and renamed, so a failed command leaves nothing half-written.
Set ``MTFC_TRACEBACK=1`` to see the Python traceback of an internal error.
Ctrl-C ends a command with one line and exit status 130; a closed stdout (``mtfc
run ... | head``) ends it quietly with 141 (128 + SIGPIPE), like a Unix tool.

This module imports only click and `mtfc.errors` (the DSL and jax load on
first use, `mtfc/__init__.py`); each command imports what it needs, so
``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from mtfc.errors import MtfcError


EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE


def _silence_closed_pipe() -> None:
    """Point stdout and stderr at /dev/null after a write to a closed pipe, so
    that the interpreter's final flush neither fails nor prints "Exception
    ignored" (the Python docs' note on SIGPIPE).  In-process (click's test
    runner) the streams have no file descriptor and are left alone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass
    finally:
        os.close(devnull)


def _fail(message: str, status: int):
    """Print ``error: MESSAGE`` on stderr and exit with `status` (quietly, with
    141, when stderr is a closed pipe too: ``mtfc ... 2>&1 | head``)."""
    try:
        click.echo(f"error: {message}", err=True)
    except BrokenPipeError:
        _silence_closed_pipe()
        sys.exit(EXIT_CLOSED_PIPE)
    sys.exit(status)


def _handle_errors(fn):
    """Run a command: a user error (`MtfcError`) prints ``error: ...`` and exits
    with its `exit_code` (1; 130 for `Interrupted`), Ctrl-C ``error:
    interrupted`` and 130, a closed stdout nothing and 141; anything else is
    an internal error (3) unless it is an `OSError` about a path."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except MtfcError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            _silence_closed_pipe()
            sys.exit(EXIT_CLOSED_PIPE)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:
            if os.environ.get("MTFC_TRACEBACK"):
                raise
            if isinstance(e, OSError) and e.strerror:
                # A path that cannot be written (a directory, a missing or
                # read-only folder) is the user's mistake, not an internal error.
                path = e.filename2 if e.filename2 is not None else e.filename
                _fail(f"{path!r}: {e.strerror}" if path else e.strerror, 1)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _fail(f"internal error ({type(e).__name__}: {first}); set MTFC_TRACEBACK=1 for details", 3)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mtfc")
def main():
    """mtfc: named-dimension models -> sharded StableHLO -> PJRT."""


_mesh_option = click.option("--mesh", default=None, help='Device mesh, e.g. "rows:2,cols:4" (overrides the model\'s).')
_layout_option = click.option(
    "--layout", default=None, help='Layout rules, e.g. "batch:rows,d_ff:cols" or "batch:rows+cols" (overrides the model\'s).'
)
_compile_layout_option = click.option(
    "--layout", default=None, help='Layout rules, e.g. "batch:rows,d_ff:cols" (overrides the model\'s); "auto": '
    'the layout the search (mtfc layout) predicts fastest, recorded in the module.'
)
_param_layout_option = click.option(
    "--param-layout", default=None,
    help='Layout rules for parameters and optimizer state, e.g. "d_model:rows" for FSDP (default: --layout).',
)
_allow_unused_option = click.option(
    "--allow-unused-rules", is_flag=True,
    help="Let --layout/--param-layout rules name dims the module lacks (a layout shared between models); "
    "recorded in the module.",
)
_dump_option = click.option(
    "--dump-ir-after-all", "dump_dir", default=None, type=click.Path(file_okay=False),
    help="Write the module after each pass to DIR as numbered files.",
)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output file: .mlir (text), .mlirbc (bytecode).")
@_mesh_option
@_compile_layout_option
@click.option(
    "--mode", default=None,
    help="Partitioning: explicit (mtfc's own per-device program, the default), gspmd (mhlo.sharding for "
    "XLA's partitioner), shardy (per-device program by Shardy, a cross-check) or none (global module).",
)
@_param_layout_option
@_allow_unused_option
@click.option("--portable", is_flag=True, help="Write a versioned portable StableHLO artifact.")
@click.option("--entry", "entry_name", default=None, help="The @mtf.entry function to compile, if the file has several.")
@click.option("-D", "--define", "defines", multiple=True, metavar="NAME=VALUE",
              help="Set a module-level constant of the model file before tracing, e.g. -D N_LAYERS=48 "
              "(a Python literal of the constant's type; repeatable).")
@click.option("--train", is_flag=True, help="Build the train step (params, optimizer state, batch) -> "
              "(loss, metrics, new params, new state) from the model's loss.")
@click.option("--optimizer", default=None, help='With --train: optimizer spec, e.g. "adamw:lr=3e-3,clip=1,warmup=10" '
              "(overrides the model's).")
@click.option("--precision", default=None, type=click.Choice(["f32", "bf16"]),
              help="With --train: compute dtype (bf16 keeps f32 master weights and optimizer state).")
@click.option("--tap", "taps", multiple=True, metavar="PATTERN",
              help="Also return the results of the ops whose names match PATTERN (fnmatch over scope/op names, "
              "e.g. 'block0/attention/*'; repeatable) as results tap/<op name>, as mtf.tap does (docs/dsl.md, Taps).")
@_dump_option
@click.option("--network", default=None, help="With --layout auto: the machine the cost model predicts for: "
              "cpu (default), nvlink, infiniband, ici, or a network JSON file (docs/layout-search.md).")
@click.option("--memory-per-device", default=None, metavar="SIZE",
              help="With --layout auto: the per-device memory budget, e.g. 16GiB (docs/layout-search.md).")
@_handle_errors
def compile(model, output, mesh, layout, param_layout, allow_unused_rules, mode, portable, entry_name, defines, train,
            optimizer, precision, taps, dump_dir, network, memory_per_device):  # noqa: A001
    """Compile a model file to StableHLO (--layout auto: the layout the search predicts fastest)."""
    from mtfc.compiler import DEFAULT_MODE, compile_file
    from mtfc.frontend.model import parse_defines
    from mtfc.emit.artifact import write_module
    from mtfc.files.modules import is_module_file
    from mtfc.files.atomic import check_writable
    from mtfc.layout.command import AUTO

    if (optimizer or precision) and not train:
        raise MtfcError("--optimizer and --precision apply to train steps: add --train")
    if is_module_file(model):
        raise MtfcError(f"{model} is a module, not a model file (Python): run it with 'mtfc run {model}' "
                        f"(passes: 'mtfc opt', contents: 'mtfc inspect')")
    auto = layout == AUTO
    if auto and param_layout is not None:
        raise MtfcError("--layout auto chooses the parameter layout too: drop --param-layout")
    if not auto and (network is not None or memory_per_device is not None):
        raise MtfcError("--network and --memory-per-device apply to the layout search: add --layout auto")
    check_writable(output)
    if auto:
        from mtfc.layout.command import compile_auto

        module = compile_auto(
            model, mesh=mesh, mode=mode or DEFAULT_MODE, train=train, network=network,
            memory_per_device=memory_per_device, dump_dir=dump_dir, entry_name=entry_name, optimizer=optimizer,
            precision=precision, defines=parse_defines(defines), taps=taps)
    else:
        module = compile_file(
            model, mesh=mesh, layout=layout, param_layout=param_layout, mode=mode or DEFAULT_MODE, dump_dir=dump_dir,
            entry_name=entry_name, train=train, optimizer=optimizer, precision=precision,
            allow_unused_rules=allow_unused_rules or None, defines=parse_defines(defines), taps=taps,
        )
    write_module(module, output, portable=portable)
    click.echo(f"wrote {output}", err=True)


@main.command("layout")
@click.argument("model", type=click.Path(dir_okay=False))
@_mesh_option
@click.option("--train", is_flag=True, help="Search the train step's layouts (parameter layouts, FSDP/ZeRO, too).")
@click.option("--optimizer", default=None, help="With --train: optimizer spec (overrides the model's).")
@click.option("--precision", default=None, type=click.Choice(["f32", "bf16"]), help="With --train: compute dtype.")
@click.option("--memory-per-device", default=None, metavar="SIZE",
              help="Per-device memory budget, e.g. 16GiB or 512MB: layouts that need more rank last.")
@click.option("--network", default=None,
              help="The machine to predict for: cpu (default), nvlink, infiniband, ici, or a network JSON file.")
@click.option("--top", default=None, type=int, help="Show (and write) the N best candidates (default: 10 shown).")
@click.option("--json", "json_out", default=None, metavar="OUT", help="Also write the ranked candidates to OUT (JSON).")
@click.option("--measure", "measure_k", default=None, type=int, metavar="K",
              help="Compile and run the top K and K lower-ranked candidates on the devices: predicted against "
                   "measured step time, rank correlation (docs/layout-search.md, Measuring).")
@click.option("--calibrate", "calibrate_out", default=None, metavar="OUT",
              help="Fit the network's constants to the measured runs (--measure K, default 4) and save them to "
                   "OUT for --network OUT.")
@click.option("--backend", default="cpu", type=click.Choice(["cpu", "gpu", "tpu"]), show_default=True,
              help="With --measure/--calibrate: the devices to run on.")
@click.option("--entry", "entry_name", default=None, help="The @mtf.entry function, if the file has several.")
@click.option("-D", "--define", "defines", multiple=True, metavar="NAME=VALUE",
              help="Set a module-level constant of the model file before tracing (as mtfc compile -D).")
@_handle_errors
def layout(model, mesh, train, optimizer, precision, memory_per_device, network, top, json_out, measure_k,
           calibrate_out, backend, entry_name, defines):
    """Search the model's layouts on a mesh and print them ranked by predicted
    step time (compute, communication, peak memory; docs/layout-search.md)."""
    from mtfc.files.modules import is_module_file
    from mtfc.frontend.model import parse_defines
    from mtfc.layout.command import layout_command

    if (optimizer or precision) and not train:
        raise MtfcError("--optimizer and --precision apply to train steps: add --train")
    if is_module_file(model):
        raise MtfcError(f"{model} is a module, not a model file (Python): mtfc layout traces a model file")
    layout_command(model, mesh=mesh, train=train, network=network, memory_per_device=memory_per_device, top=top,
                   json_out=json_out, echo=click.echo, entry_name=entry_name, optimizer=optimizer,
                   precision=precision, defines=parse_defines(defines),
                   measure=measure_k, calibrate_out=calibrate_out, backend=backend)


@main.command()
@click.argument("module_file", type=click.Path(dir_okay=False), required=False)
@click.option("--passes", default="", help="Comma-separated passes to run, in order (see --list-passes).")
@click.option("--pipeline", default=None, help="A named pipeline (a --mode of mtfc compile) instead of --passes.")
@_mesh_option
@_layout_option
@_param_layout_option
@_allow_unused_option
@click.option("-o", "--output", default=None, help="Write here instead of stdout (.mlir / .mlirbc).")
@click.option("--no-debug-info", is_flag=True, help="Print without locations.")
@click.option("--list-passes", is_flag=True, help="List the passes and exit.")
@_dump_option
@_handle_errors
def opt(module_file, passes, pipeline, mesh, layout, param_layout, allow_unused_rules, output, no_debug_info,
        list_passes, dump_dir):
    """Run passes over a module file and print the result (like mlir-opt);
    with --list-passes (and no MODULE_FILE), list the passes."""
    from mtfc import ir as mir
    from mtfc.compiler import override_mesh_layout
    from mtfc.emit.artifact import write_module
    from mtfc.files.modules import module_text, read_module
    from mtfc.passes.manager import PASSES, PIPELINES, parse_pass_list, run_passes

    if list_passes:
        others = {"MODULE_FILE": module_file, "--passes": passes or None, "--pipeline": pipeline, "--mesh": mesh,
                  "--layout": layout, "--param-layout": param_layout, "-o": output, "--dump-ir-after-all": dump_dir}
        given = [name for name, value in others.items() if value is not None]
        given += [flag for flag, on in (("--no-debug-info", no_debug_info), ("--allow-unused-rules", allow_unused_rules))
                  if on]
        if given:
            raise click.UsageError(f"--list-passes lists the passes and takes no {given[0]}")
        for p in PASSES.values():
            click.echo(f"{p.name:20s} {p.summary}")
        return
    if module_file is None:
        raise click.UsageError("Missing argument 'MODULE_FILE' (a module to run passes over; or --list-passes).")
    if pipeline is not None and passes:
        raise MtfcError("give --passes or --pipeline, not both")
    context = mir.new_context()
    module = read_module(module_file, context)
    override_mesh_layout(module, mesh, layout, param_layout, allow_unused_rules=allow_unused_rules,
                         source=module_file)
    if pipeline is not None:
        if pipeline not in PIPELINES:
            raise MtfcError(f"unknown pipeline {pipeline!r} (choose from {', '.join(PIPELINES)})")
        names = PIPELINES[pipeline]
    else:
        names = parse_pass_list(passes)
    run_passes(module, names, dump_dir=dump_dir)
    if output:
        write_module(module, output)
    else:
        click.echo(module_text(module, debug_info=not no_debug_info), nl=False)


@main.command()
@click.argument("module_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--compare", is_flag=True,
              help="Also compile the global program through every partitioner (mtfc explicit, shardy, XLA GSPMD) "
                   "and show their collectives side by side.")
@click.option("--predict", is_flag=True,
              help="Also predict, from the global program alone, the collectives the explicit partitioner emits "
                   "(before fuse-collectives), and show them beside the measured explicit program's.")
@click.option("--no-xla", is_flag=True, help="Do not compile a gspmd module to read XLA's collectives and memory.")
@click.option("--backend", default="cpu", type=click.Choice(["cpu", "gpu", "tpu"]), show_default=True,
              help="The PJRT backend that compiles for the XLA figures.")
@click.option("--processes", default=None, type=int,
              help="Place the mesh on N processes (process-major) and show which collectives cross them "
                   "and the bytes that cross.")
@click.option("--all", "show_all", is_flag=True, help="Print every section's full tables instead of the summary.")
@click.option("--section", "sections", multiple=True, metavar="NAME",
              help="Print this section's full table(s) (repeatable): overview, layout-search, arguments, values, "
                   "collectives, processes, memory, comparison, prediction, pipeline, parameters.")
@click.option("--html", "html_file", default=None, metavar="FILE",
              help="Also write a self-contained HTML report: each tensor's layout over the mesh, the collectives "
                   "in program order, the per-device memory timeline.")
@click.option("--show", "show_name", default=None, metavar="NAME",
              help="Print the layout picture of one tensor (an argument/result name or a value's location) "
                   "instead of the summary.")
@_handle_errors
def inspect(module_file, as_json, compare, predict, no_xla, backend, processes, show_all, sections, html_file,
            show_name):
    """Show what a module communicates and why, and its per-device memory: a
    one-screen summary by default; --all or --section NAME for the full tables."""
    from mtfc import ir as mir
    from mtfc.files.modules import read_module
    from mtfc.passes import pipeline_analysis
    from mtfc.tools import report as report_tool

    if show_all and sections:
        raise MtfcError("give --all or --section, not both")
    if as_json and (show_all or sections or show_name):
        raise MtfcError("--json prints the whole report: drop --all, --section and --show")
    known = report_tool.section_names()
    for name in sections:
        if name not in known:
            raise MtfcError(f"--section {name!r}: unknown section (choose from {', '.join(known)})")
    if html_file:
        from mtfc.files.atomic import check_writable

        check_writable(html_file)
    module = read_module(module_file, mir.new_context())
    report = report_tool.inspect_module(module, xla=not no_xla, compare=compare, backend=backend,
                                        source=module_file, processes=processes, predict=predict)
    report["pipeline"] = pipeline_analysis.pipeline_report(module)
    if html_file:
        from mtfc.tools.html_report import write_html

        write_html(report, html_file, title=os.path.basename(module_file))
        click.echo(f"wrote {html_file}", err=True)
    if as_json:
        text = json.dumps(report, indent=2)
    elif show_name is not None:
        from mtfc.mesh import Mesh
        from mtfc.tools.pictures import find_tensor, show_text

        text = "\n".join(show_text(find_tensor(report, show_name), Mesh.parse(report["mesh"])))
    elif sections:
        text = report_tool.render_sections(report, list(sections))
    elif show_all:
        text = report_tool.render_text(report)
    else:
        text = report_tool.render_summary(report) + (
            "\n\nmore: --all (every table), --section NAME, --html FILE, --show TENSOR (mtfc inspect --help)")
    click.echo(text)


@main.command()
@click.argument("module_file", type=click.Path(dir_okay=False))
@click.option("--backend", default="cpu", type=click.Choice(["cpu", "gpu", "tpu"]), show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed for synthetic inputs and parameters.")
@click.option("--inputs", "inputs_file", default=None, type=click.Path(dir_okay=False), help=".npz of inputs by name.")
@click.option("--outputs", "outputs_file", default=None, help="Save outputs to this .npz.")
@click.option("--check", is_flag=True, help="Compare with the unsharded run on one device.")
@click.option("--repeat", default=None, type=click.IntRange(min=1),
              help="Forward modules: timed executions, the median is reported (default 3).")
@click.option("--steps", default=None, type=int,
              help="Train-step modules: steps to run (default 10; after --restore, steps beyond the saved one).")
@click.option("--data", default=None, help="Train-step modules: batches from FILE.npz (arrays by input name) "
              "or FILE.npy (a token stream); default synthetic.")
@click.option("--save", default=None, help="Train-step modules: write a sharded checkpoint to DIR at the end.")
@click.option("--save-every", default=None, type=int, help="Train-step modules: also save every K steps.")
@click.option("--restore", default=None, help="Train-step modules: start from the checkpoint in DIR.")
@click.option("--log", "log_file", default=None,
              help="Train-step modules: per-step JSON lines to FILE (continued, not replaced, after --restore).")
@click.option("--tensorboard", default=None, metavar="DIR",
              help="Train-step modules: loss, metrics and step time as TensorBoard scalars in DIR.")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Run as one process of a job: process 0's address, where it listens (with --num-processes and "
              "--process-id; default: $MTFC_COORDINATOR, else a detected SLURM/Open MPI job, else one process).")
@click.option("--num-processes", default=None, type=int, metavar="N", help="The job's number of processes.")
@click.option("--process-id", default=None, type=int, metavar="I", help="This process's id, 0 to N-1 (0 prints).")
@click.option("--local-devices", default=None, type=int, metavar="K",
              help="CPU: virtual devices per process (N x K must be the mesh; default: mesh size / N).")
@click.option("--initialization-timeout", default=None, type=int, metavar="S",
              help="Seconds for every process to join the job (default 60).")
@click.option("--heartbeat-timeout", default=None, type=int, metavar="S",
              help="Seconds without a heartbeat before a process counts as lost (default 30).")
@click.option("--collective-timeout", default=None, type=int, metavar="S",
              help="Seconds one cross-process collective or barrier may wait for the others (default 30).")
@_handle_errors
def run(module_file, backend, seed, inputs_file, outputs_file, check, repeat,
        steps, data, save, save_every, restore, log_file, tensorboard, coordinator, num_processes, process_id, local_devices,
        initialization_timeout, heartbeat_timeout, collective_timeout):
    """Run a compiled module on a device mesh and summarize its outputs; run the
    training loop of a train-step module.  Alone, or as one of N processes of
    a job (jax.distributed; docs/runtime.md)."""
    from mtfc.runtime.distributed import JobFlags
    from mtfc.runtime.run import run_or_train
    from mtfc.runtime.train import TrainOptions

    job = JobFlags(coordinator, num_processes, process_id, local_devices, initialization_timeout,
                   heartbeat_timeout, collective_timeout)
    ok = run_or_train(
        module_file, TrainOptions(steps, data, save, save_every, restore, log_file, tensorboard), backend=backend, seed=seed,
        inputs_file=inputs_file, outputs_file=outputs_file, check=check, repeat=repeat, echo=click.echo, job=job,
    )
    if not ok:
        sys.exit(1)


@main.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--entry", "entry_name", default=None, help="The @mtf.entry function to run, if the file has several.")
@click.option("-D", "--define", "defines", multiple=True, metavar="NAME=VALUE",
              help="Set a module-level constant of the model file before tracing (as mtfc compile -D).")
@click.option("--seed", default=0, show_default=True, help="Seed for synthetic inputs and parameters (as mtfc run).")
@click.option("--inputs", "inputs_file", default=None, type=click.Path(dir_okay=False), help=".npz of arguments by name.")
@click.option("--outputs", "outputs_file", default=None, help="Save the outputs to this .npz.")
@click.option("--train", is_flag=True, help="Run one train step (the batch of mtfc run's step 0) instead of the forward.")
@click.option("--optimizer", default=None, help="With --train: optimizer spec (overrides the model's).")
@click.option("--precision", default=None, type=click.Choice(["f32", "bf16"]), help="With --train: compute dtype.")
@_handle_errors
def eval_(model, entry_name, defines, seed, inputs_file, outputs_file, train, optimizer, precision):
    """Run a model file op by op on the host, without compiling the whole model
    (print and a debugger work inside it); the compiled unsharded run's numbers."""
    from mtfc.files.modules import is_module_file
    from mtfc.frontend.model import parse_defines
    from mtfc.runtime.eager_run import eval_command

    if (optimizer or precision) and not train:
        raise MtfcError("--optimizer and --precision apply to train steps: add --train")
    if is_module_file(model):
        raise MtfcError(f"{model} is a module, not a model file (Python): mtfc eval runs a model file "
                        f"(a compiled module: 'mtfc run {model}')")
    eval_command(model, entry_name=entry_name, defines=parse_defines(defines), seed=seed, inputs_file=inputs_file,
                 outputs_file=outputs_file, train=train, optimizer=optimizer, precision=precision, echo=click.echo)


@main.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="The image to write: .png, .svg or .pdf.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Also plot this metric of the log (repeatable; 'all' for every one).")
@_handle_errors
def plot(log, output, metrics):
    """Plot a training log (`mtfc run --log FILE`): the loss, and metrics, against the step."""
    from mtfc.tools.plot import plot as draw

    steps, panels = draw(log, output, tuple(metrics))
    click.echo(f"wrote {output}: {', '.join(panels)} over {steps} step(s)")


@main.group()
def checkpoint():
    """Look into a checkpoint (`mtfc run --save DIR`) and copy its arrays out."""


@checkpoint.command("export")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, help="The safetensors file to write (e.g. params.safetensors).")
@click.option("--all", "everything", is_flag=True, help="Include the optimizer state, not only the parameters.")
@_handle_errors
def checkpoint_export(directory, output, everything):
    """Write a checkpoint's parameters by name to one safetensors file (bf16 stays bf16)."""
    from mtfc.runtime.checkpoint.export import export

    count, size, step = export(directory, output, everything=everything)
    click.echo(f"wrote {output}: {count} array(s), {size:,} bytes, step {step}")


@checkpoint.command("info")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@_handle_errors
def checkpoint_info(directory):
    """Show a checkpoint's step, model, mesh, layouts and arrays."""
    from mtfc.runtime.checkpoint.export import info_lines

    click.echo("\n".join(info_lines(directory)))


class _LaunchCommand(click.Command):
    """``mtfc launch``: everything after the first ``--`` is the processes'
    command, passed on untouched (``ctx.meta["mtfc.launch.args"]``; None
    without ``--``)."""

    def parse_args(self, ctx, args):
        if "--" in args:
            k = args.index("--")
            ctx.meta["mtfc.launch.args"] = tuple(args[k + 1:])
            args = args[:k]
        else:
            ctx.meta["mtfc.launch.args"] = None
        return super().parse_args(ctx, args)


@main.command(cls=_LaunchCommand, options_metavar="-n N [OPTIONS] -- ARGS...",
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-n", "--num-processes", "processes", default=None, metavar="N",
              help="Start N processes of `mtfc ARGS...` on this machine (one job, coordinator on 127.0.0.1).")
@click.option("--local-devices", default=None, metavar="K",
              help="CPU: virtual devices per process (MTFC_LOCAL_DEVICES; default: mesh size / N).")
@click.option("--port", default=None, metavar="P", help="The coordinator's port (default: a free one).")
@click.option("--initialization-timeout", default=None, metavar="S",
              help="Seconds for every process to join the job (default 60).")
@click.option("--heartbeat-timeout", default=None, metavar="S",
              help="Seconds without a heartbeat before a process counts as lost (default 30).")
@click.option("--collective-timeout", default=None, metavar="S",
              help="Seconds one cross-process collective or barrier may wait for the others (default 30).")
@click.option("--grace", default=None, metavar="S",
              help="Seconds a process gets to end after SIGTERM or Ctrl-C before SIGKILL (default 5).")
@click.option("--verbose", is_flag=True,
              help="Pass every line of the processes' stderr through, jax's abort reports included.")
@click.option("--python", is_flag=True, hidden=True, help="Test mode: each process runs `python ARGS...`.")
@click.pass_context
@_handle_errors
def launch(ctx, processes, local_devices, port, initialization_timeout, heartbeat_timeout, collective_timeout,
           grace, verbose, python):
    """Run `mtfc ARGS...` as the N processes of one job on this machine:
    mtfc launch -n N [OPTIONS] -- ARGS...  (docs/multihost.md)."""
    from mtfc.runtime import launch as rt_launch

    args = ctx.meta.get("mtfc.launch.args")
    if ctx.args:
        unknown = [a for a in ctx.args if a.startswith("-")]
        if unknown:
            raise rt_launch.UsageMistake(f"mtfc launch: no such option {unknown[0]} (the processes' command "
                                         f"and its options go after --)")
        raise rt_launch.UsageMistake(f"mtfc launch needs -- before the processes' command: "
                                     f"mtfc launch -n N -- {' '.join(ctx.args)}")
    if args is None:
        raise rt_launch.UsageMistake("mtfc launch needs -- and the processes' command after it, "
                                     "e.g. mtfc launch -n 2 -- run train.mlir")
    options = rt_launch.check_options(
        processes, args, local_devices=local_devices, port=port, initialization_timeout=initialization_timeout,
        heartbeat_timeout=heartbeat_timeout, collective_timeout=collective_timeout, grace=grace,
        verbose=verbose, python=python)
    status = rt_launch.launch(options)
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main(prog_name="mtfc")
