"""Joining a multi-process job: which process this is, and `jax.distributed`.

A `Job` says which of how many processes this one is, where the coordinator
listens, how many devices each process brings (``--local-devices``: virtual
CPU devices) and the timeouts.  `resolve_job` finds it, in this order:

1. ``mtfc run`` flags: ``--coordinator HOST:PORT --num-processes N
   --process-id I`` (all three or none);
2. the environment: ``MTFC_COORDINATOR``, ``MTFC_NUM_PROCESSES``,
   ``MTFC_PROCESS_ID`` (all three or none; ``mtfc launch`` sets them);
3. a cluster that ``jax.distributed.initialize()`` detects by itself (SLURM,
   Open MPI, Kubernetes, Cloud TPU: ``jax._src.clusters``), when it really is
   a job of more than one task (``SLURM_NTASKS=1`` is one process);
4. otherwise one process, as without any of this.

``--local-devices K`` / ``MTFC_LOCAL_DEVICES`` and the timeouts come from
their flag, else their environment variable, else the default, whichever of
the above gave the job.  Every value is checked; a bad one is one line
naming the flag or variable (`MtfcError`).

`join` makes this process a member of the job before any backend exists:
gloo collectives on CPU, ``jax_num_cpu_devices = K``, a collective timeout
(``--xla_cpu_collective_timeout_seconds`` in ``XLA_FLAGS``, with
``jax_enable_recoverability``, so a lost peer makes the next collective
raise instead of hanging), jax's preemption service off (it would catch
SIGTERM, and the process would go on), then ``jax.distributed.initialize``
with the coordinator bound on the given host (an IP address;
`bind_address`).  A process that cannot reach the coordinator, or a job
whose processes do not all arrive, ends within the
initialization timeout with one line (jax itself would abort with status
134 some seconds later): processes other than 0 first wait, with their own
bounded retry, for the coordinator's TCP port to accept connections, and a
watchdog ends the process if ``initialize`` is still waiting at the deadline.

Defaults: initialization 60 s, heartbeat 30 s, collective 30 s.  Measured
(2 processes on loopback, process 1 killed with SIGKILL mid-training, with
`failure.py`'s handling): the survivor ends 31-34 s later with a line
naming the lost process.  A killed process 0 (the coordination service)
aborts the others at once.  The collective timeout is also the longest a
process may wait for the others inside a step (a slow peer): raise it for
long gaps.  Skew outside a step (compiling; process 0's ``--check``
reference and ``--outputs``) is waited for at barriers, up to
`PRIMARY_WORK_TIMEOUT` (`wait_for_all`).
"""

from __future__ import annotations

import atexit
import io
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass

from mtfc.errors import MtfcError

DEFAULT_INITIALIZATION_TIMEOUT = 60
DEFAULT_HEARTBEAT_TIMEOUT = 30
DEFAULT_COLLECTIVE_TIMEOUT = 30
# How long the other processes wait, at a barrier of the coordination service
# (not inside a collective, whose timeout is short), for work process 0 does
# alone: the unsharded reference of ``--check``, writing ``--outputs``, the
# summary.  A process that dies meanwhile is noticed sooner, by the peer
# watcher (`failure.watch_peers`) or the heartbeat.
PRIMARY_WORK_TIMEOUT = 900

ENV_COORDINATOR = "MTFC_COORDINATOR"
ENV_NUM_PROCESSES = "MTFC_NUM_PROCESSES"
ENV_PROCESS_ID = "MTFC_PROCESS_ID"
ENV_LOCAL_DEVICES = "MTFC_LOCAL_DEVICES"
ENV_INITIALIZATION_TIMEOUT = "MTFC_INITIALIZATION_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "MTFC_HEARTBEAT_TIMEOUT"
ENV_COLLECTIVE_TIMEOUT = "MTFC_COLLECTIVE_TIMEOUT"

COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_timeout_seconds"


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to assemble the job, without a heartbeat before a process
    counts as lost, and for one collective (or barrier) to complete."""

    initialization: int = DEFAULT_INITIALIZATION_TIMEOUT
    heartbeat: int = DEFAULT_HEARTBEAT_TIMEOUT
    collective: int = DEFAULT_COLLECTIVE_TIMEOUT


@dataclass(frozen=True)
class Job:
    """This process's place in a job.

    `coordinator` is ``HOST:PORT`` (None for one process); `local_devices` is
    the number of devices this process brings (None: as many as the mesh
    needs, one process; on CPU these are virtual devices); `source` says
    where the job came from (``flags``, ``environment``, a cluster's name,
    or ``single process``)."""

    process_id: int = 0
    num_processes: int = 1
    coordinator: str | None = None
    local_devices: int | None = None
    timeouts: Timeouts = Timeouts()
    source: str = "single process"

    @property
    def is_multi_process(self) -> bool:
        return self.num_processes > 1

    def describe(self) -> str:
        if not self.is_multi_process:
            return "1 process"
        return (f"process {self.process_id} of {self.num_processes} (coordinator {self.coordinator}, "
                f"from {self.source})")


@dataclass
class JobFlags:
    """What ``mtfc run`` was given (None: not given)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_devices: int | None = None
    initialization_timeout: int | None = None
    heartbeat_timeout: int | None = None
    collective_timeout: int | None = None


# -- finding the job ----------------------------------------------------------------------------

def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 literal) -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text.strip())
    if not m:
        raise MtfcError(f"{what} {text!r} is not HOST:PORT")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    port = int(port)
    if not 1 <= port <= 65535:
        raise MtfcError(f"{what} {text!r}: port {port} is outside 1-65535")
    return host, port


def _env_int(name: str, *, minimum: int) -> int | None:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise MtfcError(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise MtfcError(f"{name}={value} must be >= {minimum}")
    return value


def _flag_int(value: int | None, flag: str, *, minimum: int) -> int | None:
    if value is not None and value < minimum:
        raise MtfcError(f"{flag} {value} must be >= {minimum}")
    return value


def _timeouts(flags: JobFlags) -> Timeouts:
    def one(value, flag, env, default):
        value = _flag_int(value, flag, minimum=1)
        if value is None:
            value = _env_int(env, minimum=1)
        return default if value is None else value

    return Timeouts(
        one(flags.initialization_timeout, "--initialization-timeout", ENV_INITIALIZATION_TIMEOUT,
            DEFAULT_INITIALIZATION_TIMEOUT),
        one(flags.heartbeat_timeout, "--heartbeat-timeout", ENV_HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT),
        one(flags.collective_timeout, "--collective-timeout", ENV_COLLECTIVE_TIMEOUT, DEFAULT_COLLECTIVE_TIMEOUT),
    )


def _identity(coordinator, num_processes, process_id, names: tuple[str, str, str]):
    """Check one complete (coordinator, N, I) triple; `names` name its three sources."""
    given = [n for n, v in zip(names, (coordinator, num_processes, process_id)) if v is not None]
    if not given:
        return None
    if coordinator is not None:
        parse_address(coordinator, names[0])
    if num_processes is not None and num_processes < 1:
        raise MtfcError(f"{names[1]} {num_processes} must be >= 1")
    if process_id is not None and process_id < 0:
        raise MtfcError(f"{names[2]} {process_id} must be >= 0")
    if len(given) < 3:
        missing = [n for n in names if n not in given]
        raise MtfcError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} "
                        f"{' and '.join(missing)} (a job takes all three)")
    if process_id >= num_processes:
        raise MtfcError(f"{names[2]} {process_id} is outside 0-{num_processes - 1} ({names[1]} {num_processes})")
    return coordinator.strip(), num_processes, process_id


def _env_identity():
    names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    coordinator = os.environ.get(ENV_COORDINATOR) or None
    n = os.environ.get(ENV_NUM_PROCESSES)
    i = os.environ.get(ENV_PROCESS_ID)
    values = []
    for name, text in ((ENV_NUM_PROCESSES, n), (ENV_PROCESS_ID, i)):
        if text is None or not text.strip():
            values.append(None)
            continue
        try:
            values.append(int(text.strip()))
        except ValueError:
            raise MtfcError(f"{name}={text!r} is not an integer") from None
    triple = _identity(coordinator, values[0], values[1], tuple(f"{n}" for n in names))
    return triple


def detect_cluster() -> tuple[str, int, int, str] | None:
    """(coordinator, N, I, cluster name) when this process is one task of a
    multi-task job in a cluster ``jax.distributed.initialize()`` detects by
    itself; None otherwise (no cluster, or a job of one task)."""
    import warnings

    try:
        from jax._src import clusters
    except ImportError:  # a jax without cluster detection
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:  # mpi4py: only when asked for by name
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                present = env.is_env_present()
            if not present:
                continue
            count = int(env.get_process_count())
        except Exception:
            continue
        if count <= 1:
            return None
        name = env.name or env.__name__
        try:
            process = int(env.get_process_id())
            coordinator = env.get_coordinator_address(
                timeout_secs=None, override_coordinator_port=os.environ.get("JAX_COORDINATOR_PORT"))
        except Exception as e:
            raise MtfcError(f"a {name} job of {count} tasks was detected, but its coordinator or this task's id "
                            f"cannot be read: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                            ) from None
        return coordinator, count, process, name
    return None


def resolve_job(flags: JobFlags | None = None) -> Job:
    """This process's job from `flags`, else the environment, else a detected
    cluster, else one process (module docstring)."""
    flags = flags or JobFlags()
    timeouts = _timeouts(flags)
    local = _flag_int(flags.local_devices, "--local-devices", minimum=1)
    if local is None:
        local = _env_int(ENV_LOCAL_DEVICES, minimum=1)
    triple = _identity(flags.coordinator, flags.num_processes, flags.process_id,
                       ("--coordinator", "--num-processes", "--process-id"))
    source = "flags"
    if triple is None:
        triple, source = _env_identity(), "environment"
    if triple is None:
        found = detect_cluster()
        if found is not None:
            triple, source = found[:3], found[3]
    if triple is None:
        return Job(local_devices=local, timeouts=timeouts)
    coordinator, n, i = triple
    if n == 1:
        return Job(local_devices=local, timeouts=timeouts, source=source)
    return Job(i, n, coordinator, local, timeouts, source)


def check_mesh(job: Job, mesh_size: int, backend: str) -> int:
    """The devices each process brings for a mesh of `mesh_size` devices:
    ``--local-devices`` when given (N x K must be the mesh), else
    ``mesh_size / N``."""
    n = job.num_processes
    if job.local_devices is not None:
        if backend != "cpu":
            raise MtfcError(f"--local-devices ({ENV_LOCAL_DEVICES}) sets virtual CPU devices; "
                            f"the {backend} backend has the devices it has")
        if job.local_devices * n != mesh_size:
            raise MtfcError(f"the mesh has {mesh_size} device(s), but {n} process(es) x {job.local_devices} local "
                            f"device(s) give {job.local_devices * n}")
        return job.local_devices
    if mesh_size % n:
        raise MtfcError(f"the mesh's {mesh_size} device(s) cannot be shared by {n} processes "
                        f"(give --local-devices K with {n} x K = {mesh_size})")
    return max(mesh_size // n, 1)


# -- joining ------------------------------------------------------------------------------------

_current: Job = Job()
_joined = False


def current_job() -> Job:
    """The job this process joined (one process until `join`)."""
    return _current


def is_primary() -> bool:
    """Whether this is process 0: the one that prints, checks and writes outputs."""
    return _current.process_id == 0


def _set_collective_timeout(seconds: int) -> None:
    """Put the CPU collective timeout into ``XLA_FLAGS`` (read when the backend is created)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(COLLECTIVE_TIMEOUT_FLAG + "=")]
    flags.append(f"{COLLECTIVE_TIMEOUT_FLAG}={seconds}")
    os.environ["XLA_FLAGS"] = " ".join(flags)


def _wait_for_coordinator(job: Job, deadline: float) -> None:
    """Retry connecting to the coordinator's port until it accepts or `deadline` passes."""
    host, port = parse_address(job.coordinator, "the coordinator")
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MtfcError(f"process {job.process_id}: cannot reach the coordinator {job.coordinator} within "
                            f"{job.timeouts.initialization} s ({last}; is process 0 running? "
                            f"--initialization-timeout sets the wait)")
        try:
            with socket.create_connection((host, port), timeout=min(1.0, max(left, 0.01))):
                return
        except OSError as e:
            last = e.strerror or type(e).__name__
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


def bind_address(coordinator: str) -> str:
    """Where process 0's coordination service listens: the coordinator's own
    address when its host is an IP address (``127.0.0.1:PORT`` stays on
    loopback), else every interface (``[::]:PORT``, jax's default), since a
    host name may resolve, on the host itself, to a loopback alias such as
    127.0.1.1 that the other hosts cannot reach."""
    host, port = parse_address(coordinator, "the coordinator")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"[::]:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _check_can_listen(job: Job) -> None:
    """Process 0: the coordinator's address must be free to listen on."""
    host, port = parse_address(bind_address(job.coordinator), "the coordinator")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise MtfcError(f"process 0: the coordinator host {host!r} cannot be resolved ({e.strerror or e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise MtfcError(f"process 0 cannot listen on the coordinator address {job.coordinator}: "
                            f"{e.strerror or e}") from None


# gloo writes its line in pieces from several threads, so lines arrive
# interleaved: a line made of nothing but these pieces is gloo's.
_GLOO_NOISE = re.compile(
    rb"(?:\[Gloo\] Rank |\d+| is connected to | peer ranks\. |Expected number of connected peer ranks is : |\s+)+")


def _filter_gloo_lines() -> None:
    """Drop gloo's ``[Gloo] Rank R is connected to P peer ranks ...`` lines,
    which XLA's CPU collectives print on file descriptor 1 for every new
    communicator (no setting turns them off), so that a job's output is
    mtfc's own.  Python's `sys.stdout` moves to a duplicate of the original
    descriptor (its lines go straight out, in order); what other code
    writes to descriptor 1 passes a filter thread, line by line."""
    try:
        sys.stdout.flush()
        original = os.dup(1)
    except (OSError, ValueError, AttributeError):
        return
    read, write = os.pipe()
    os.dup2(write, 1)
    os.close(write)
    old = sys.stdout
    sys.stdout = io.TextIOWrapper(io.FileIO(original, "w", closefd=False), encoding=getattr(old, "encoding", None),
                                  errors=getattr(old, "errors", None), line_buffering=True)

    def forward():
        pending = b""
        while True:
            try:
                chunk = os.read(read, 65536)
            except OSError:
                return
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _GLOO_NOISE.fullmatch(line))
            if out:
                os.write(original, out)
        if pending and not _GLOO_NOISE.fullmatch(pending):
            os.write(original, pending)

    threading.Thread(target=forward, name="mtfc-stdout-filter", daemon=True).start()


class _Watchdog:
    """Ends the process with one line if `initialize` is still waiting at the deadline."""

    def __init__(self, job: Job, deadline: float):
        self.job = job
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, args=(deadline,), daemon=True)

    def _watch(self, deadline: float) -> None:
        if self.done.wait(max(deadline - time.monotonic(), 0)):
            return
        job = self.job
        sys.stdout.flush()
        print(f"error: process {job.process_id}: the job of {job.num_processes} processes did not assemble at "
              f"{job.coordinator} within {job.timeouts.initialization} s (a process is missing or cannot reach "
              f"the coordinator; --initialization-timeout sets the wait)", file=sys.stderr, flush=True)
        os._exit(1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()


def join(job: Job, *, backend: str = "cpu", local_devices: int | None = None) -> None:
    """Make this process a member of `job` (before any jax backend exists).

    `local_devices` (default ``job.local_devices``) virtual CPU devices are
    asked for on CPU.  One process: only that.  Several: gloo collectives,
    the collective timeout, then ``jax.distributed.initialize``; ends with
    one line (`MtfcError`, or the watchdog's) when the job does not assemble
    within the initialization timeout.  A process joins one multi-process
    job in its life; joining it again is a no-op."""
    global _current, _joined
    import jax
    from jax._src import xla_bridge

    from mtfc.runtime import devices as rt_devices

    identity = (job.process_id, job.num_processes, job.coordinator)
    if _joined:  # a second run in the same process (tests): the same job, or none
        if identity != (_current.process_id, _current.num_processes, _current.coordinator):
            raise MtfcError(f"this process has joined a job already ({_current.describe()})")
        return
    local_devices = job.local_devices if local_devices is None else local_devices
    if not job.is_multi_process:
        if backend == "cpu" and local_devices:
            rt_devices.ensure_cpu_devices(local_devices)
        _current = job
        return
    if xla_bridge.backends_are_initialized():
        raise MtfcError("cannot join a multi-process job: jax's backend exists already in this process")
    _set_collective_timeout(job.timeouts.collective)
    jax.config.update("jax_enable_recoverability", True)
    # jax's preemption service would turn SIGTERM into a notice the runner never reads
    # (the process would go on): SIGTERM ends a process of a job as it ends one alone.
    jax.config.update("jax_enable_preemption_service", False)
    if backend == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        rt_devices.configure_cpu_allocator()
        jax.config.update("jax_num_cpu_devices", local_devices or 1)
    _filter_gloo_lines()
    deadline = time.monotonic() + job.timeouts.initialization
    if job.process_id == 0:
        _check_can_listen(job)
    else:
        _wait_for_coordinator(job, deadline)
    bind = bind_address(job.coordinator)
    detection = "deactivate" if job.source in ("flags", "environment") else job.source
    with _Watchdog(job, deadline):
        try:
            jax.distributed.initialize(
                job.coordinator, job.num_processes, job.process_id,
                cluster_detection_method=detection,
                # jax aborts the process at its own deadline: the watchdog ends it first, with a line.
                initialization_timeout=job.timeouts.initialization + 30,
                heartbeat_timeout_seconds=job.timeouts.heartbeat,
                coordinator_bind_address=bind,
            )
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MtfcError(f"process {job.process_id}: cannot join the job at {job.coordinator}: {first}") from None
    _current, _joined = job, True
    atexit.register(_leave)  # runs before jax's own clean-up (registered earlier, when jax was imported)
    found = jax.process_count()
    if found != job.num_processes or jax.process_index() != job.process_id:
        raise MtfcError(f"process {job.process_id}: jax joined as process {jax.process_index()} of {found}, "
                        f"not {job.process_id} of {job.num_processes}")


_exit_status: int | None = None


def note_exit_status(status: int) -> None:
    """The status this process will exit with (`run.py` notes it; `_leave` uses it)."""
    global _exit_status
    _exit_status = status


def _leave() -> None:
    """At exit: leave the job in order.  Every process waits for the others
    at a last barrier; then the processes other than 0 end at once
    (``os._exit`` with the status noted by `note_exit_status`), without
    disconnecting from the coordination service, and process 0, which hosts
    the service, shuts it down as jax does.  With
    ``jax_enable_recoverability`` jax's own shutdown has no barrier: a
    process 0 that exits first makes a slower process's disconnect fail,
    and jax aborts that process (status 134) although the job succeeded.
    The barrier waits up to `PRIMARY_WORK_TIMEOUT` (process 0 may still be
    checking or writing); when a process is missing at it (it failed), the
    exit goes on as jax's would."""
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None or not _current.is_multi_process:
        return
    try:
        client.wait_at_barrier("mtfc-exit", int(max(_current.timeouts.collective, PRIMARY_WORK_TIMEOUT) * 1000))
    except Exception:
        return
    if not is_primary() and _exit_status is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        time.sleep(0.05)  # what C++ wrote to descriptor 1 passes the gloo filter
        os._exit(_exit_status)


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Wait until every process of the job reaches the barrier `name` (a no-op
    for one process); `MtfcError` after `timeout_s` (default: the collective
    timeout) naming the barrier."""
    job = _current
    if not job.is_multi_process:
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        raise MtfcError(f"barrier {name!r}: this process has not joined the job")
    seconds = job.timeouts.collective if timeout_s is None else timeout_s
    try:
        client.wait_at_barrier(name, int(seconds * 1000))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        why = "" if first.startswith("DEADLINE_EXCEEDED") else f" ({first})"
        raise MtfcError(f"process {job.process_id}: the other processes did not reach barrier {name!r} within "
                        f"{seconds:g} s{why}") from None


_waits = 0


def wait_for_all(name: str) -> None:
    """A barrier for work whose length differs between processes outside a
    step (compiling, process 0's solo work): waits up to
    `PRIMARY_WORK_TIMEOUT` (at least the collective timeout), so that such
    skew never runs into a collective's short timeout."""
    global _waits
    if _current.is_multi_process:
        _waits += 1  # every process waits the same number of times, so the names agree
        barrier(f"{name}-{_waits}", max(_current.timeouts.collective, PRIMARY_WORK_TIMEOUT))


def primary_says(value: bool, what: str = "mtfc-primary") -> bool:
    """Process 0's `value`, in every process (the others' `value` is ignored):
    how the job agrees on what process 0 alone decided, e.g. a ``--check``.
    The others first wait for process 0 at barrier `what` (up to
    `PRIMARY_WORK_TIMEOUT`), so that its solo work does not run into the
    collective timeout."""
    if not _current.is_multi_process:
        return value
    wait_for_all(what)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value)), is_source=is_primary()))
