"""``mtfc launch -n N -- ARGS...``: the N processes of one job on this machine.

`launch` starts N processes of ``mtfc ARGS...`` (this Python,
``python -m mtfc.cli``) with the job in their environment --
``MTFC_COORDINATOR=127.0.0.1:PORT``, ``MTFC_NUM_PROCESSES=N``,
``MTFC_PROCESS_ID=I``, and ``MTFC_LOCAL_DEVICES`` and the timeouts when given
(`mtfc.runtime.distributed` reads them) -- and supervises them:

* **Output.** Each child's stdout goes to stdout and its stderr to stderr,
  line by line and never mixed mid-line; process 0's lines are plain, the
  others' start with ``[I] ``.
* **Port.** Without ``--port`` the coordinator's port is one the kernel
  hands out (bind port 0 on 127.0.0.1).  The launcher keeps that socket
  bound (``SO_REUSEADDR``, never listening) until the job ends, so no other
  program can take the port between choosing it and process 0 listening on
  it, while process 0's coordinator (which also sets ``SO_REUSEADDR``) can.
* **Exit status.** The first non-zero status a process exits with (128 + the
  signal for a process killed by one), 0 when all succeed, 130 after Ctrl-C.
* **Failure.** When a process fails, the launcher ends the others: SIGTERM
  to each one's process group (each child leads its own session), SIGKILL
  after ``--grace`` seconds; only processes it started.  It then prints one
  line: which process failed and how, which it stopped, and -- when ARGS
  save checkpoints (``--save DIR``) -- the last committed checkpoint.
* **jax's abort reports.** A process that jax's coordination service aborts
  (status 134, "Terminating process because the JAX distributed service
  detected fatal errors" and a C++ stack dump) shows as one line; its report,
  and jax's C++ log lines about a failure the launcher has already seen, are
  dropped (``--verbose`` passes every line through).  Outside a failure, jax's
  C++ log lines pass, at most `HOLD_SECONDS` late.
* **Signals.** Ctrl-C (SIGINT) is forwarded to every process (they end with
  their own line, e.g. the step and checkpoint reached); a second Ctrl-C, or
  `grace` seconds without them ending, kills them.  SIGTERM to the launcher
  ends the processes the same way (status 143).

This module imports no jax: the launcher itself starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from mtfc.errors import MtfcError

ENV_LAUNCHED = "MTFC_LAUNCHED"  # set in every launched process: a launch inside a launch is refused
ENV_COORDINATOR = "MTFC_COORDINATOR"
ENV_NUM_PROCESSES = "MTFC_NUM_PROCESSES"
ENV_PROCESS_ID = "MTFC_PROCESS_ID"
ENV_LOCAL_DEVICES = "MTFC_LOCAL_DEVICES"
ENV_TIMEOUTS = {"initialization": "MTFC_INITIALIZATION_TIMEOUT", "heartbeat": "MTFC_HEARTBEAT_TIMEOUT",
                "collective": "MTFC_COLLECTIVE_TIMEOUT"}

DEFAULT_GRACE = 5.0  # seconds between SIGTERM (or a forwarded SIGINT) and SIGKILL
HOLD_SECONDS = 0.5  # how long jax's C++ log lines are held, in case an abort report follows
POLL_SECONDS = 0.05

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# jax's C++ (absl) log line: "E1202 01:52:55.860009   17866 coordination_service.cc:1549] ..."
_ABSL_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+\S+:\d+\]")
_ABORT_MARKER = b"Terminating process because the JAX distributed service detected fatal errors"
_STACK_LINE = re.compile(rb"^(\*\*\* Check failure stack trace: \*\*\*|\s+@\s+0x[0-9a-f]+)")
# mtfc's own lines and Python's tracebacks are never part of a C++ log message
_OWN_LINE = re.compile(rb"^(error: |warning: |Traceback \(most recent call last\))")


class UsageMistake(MtfcError):
    """A malformed ``mtfc launch`` command line (no ``--``, no command): status 2, as click's usage errors."""

    exit_code = 2


@dataclass(frozen=True)
class LaunchOptions:
    """What ``mtfc launch`` was given, checked (`check_options`).

    `args` follow ``mtfc`` in every process (or, with `python`, follow this
    Python: ``python ARGS...``, a test mode that needs no mtfc command)."""

    processes: int
    args: tuple[str, ...]
    local_devices: int | None = None
    port: int | None = None
    timeouts: dict[str, int] = field(default_factory=dict)  # "initialization" / "heartbeat" / "collective"
    grace: float = DEFAULT_GRACE
    verbose: bool = False
    python: bool = False


def _int_value(text, flag: str, *, minimum: int, maximum: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise MtfcError(f"{flag} {text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        span = f"{minimum}-{maximum}" if maximum is not None else f">= {minimum}"
        raise MtfcError(f"{flag} {value} must be {span}")
    return value


def check_options(processes, args, *, local_devices=None, port=None, initialization_timeout=None,
                  heartbeat_timeout=None, collective_timeout=None, grace=None, verbose=False,
                  python=False) -> LaunchOptions:
    """`LaunchOptions` from the command line's values (strings or ints);
    `MtfcError` with one line naming the flag for a bad one, for an empty
    ARGS, for ``launch`` as ARGS, and inside a launched process."""
    if os.environ.get(ENV_LAUNCHED):
        raise MtfcError(f"mtfc launch cannot run inside a launched process (this is process "
                        f"{os.environ.get(ENV_PROCESS_ID, '?')} of a job mtfc launch started)")
    n = _int_value(processes, "-n", minimum=1)
    if n is None:
        raise MtfcError("mtfc launch needs -n N, the number of processes")
    args = tuple(args)
    if not args:
        raise UsageMistake("mtfc launch needs the command after --, e.g. mtfc launch -n 2 -- run train.mlir")
    if not python and args[0] == "launch":
        raise MtfcError("the command after -- is what each process runs; it cannot be launch again")
    timeouts = {}
    for name, value in (("initialization", initialization_timeout), ("heartbeat", heartbeat_timeout),
                        ("collective", collective_timeout)):
        seconds = _int_value(value, f"--{name}-timeout", minimum=1)
        if seconds is not None:
            timeouts[name] = seconds
    if grace is None:
        grace_s = DEFAULT_GRACE
    else:
        try:
            grace_s = float(grace)
        except ValueError:
            raise MtfcError(f"--grace {grace!r} is not a number of seconds") from None
        if not 0 < grace_s <= 3600:
            raise MtfcError(f"--grace {grace_s:g} must be more than 0 and at most 3600 seconds")
    return LaunchOptions(n, args, _int_value(local_devices, "--local-devices", minimum=1),
                         _int_value(port, "--port", minimum=1, maximum=65535), timeouts, grace_s, verbose, python)


# -- the port -----------------------------------------------------------------------------------

def reserve_port(port: int | None) -> tuple[int, socket.socket]:
    """(the coordinator's port, a socket holding it).  The socket is bound to
    127.0.0.1:port with ``SO_REUSEADDR`` and never listens: other programs
    cannot bind the port while it is held, process 0's coordinator can (see
    the module docstring).  A given `port` someone listens on already is an
    error."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", port or 0))
    except OSError as e:
        holder.close()
        raise MtfcError(f"--port {port}: cannot use 127.0.0.1:{port} ({e.strerror or e})") from None
    return holder.getsockname()[1], holder


# -- the processes ------------------------------------------------------------------------------

def child_environment(options: LaunchOptions, process_id: int, coordinator: str,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of process `process_id`: `base` (default: this one's)
    with the job's ``MTFC_*`` variables.  Variables the options leave out are
    removed, so that a stale ``MTFC_LOCAL_DEVICES`` cannot leak in."""
    env = dict(os.environ if base is None else base)
    env.update({ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(options.processes),
                ENV_PROCESS_ID: str(process_id), ENV_LAUNCHED: "1", "PYTHONUNBUFFERED": "1"})
    env.pop(ENV_LOCAL_DEVICES, None)
    if options.local_devices is not None:
        env[ENV_LOCAL_DEVICES] = str(options.local_devices)
    for name, variable in ENV_TIMEOUTS.items():
        env.pop(variable, None)
        if name in options.timeouts:
            env[variable] = str(options.timeouts[name])
    return env


def child_command(options: LaunchOptions) -> list[str]:
    """``python -m mtfc.cli ARGS...`` (this interpreter), or ``python ARGS...``."""
    if options.python:
        return [sys.executable, *options.args]
    return [sys.executable, "-m", "mtfc.cli", *options.args]


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_status(returncode: int) -> int:
    """A `Popen.returncode` as a shell reports it: 128 + N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Output:
    """The launcher's stdout and stderr: whole lines, one writer at a time."""

    def __init__(self, stdout=None, stderr=None):
        self.streams = {"stdout": stdout or sys.stdout.buffer, "stderr": stderr or sys.stderr.buffer}
        self.lock = threading.Lock()

    def write(self, stream: str, lines: list[bytes]) -> None:
        if not lines:
            return
        with self.lock:
            out = self.streams[stream]
            try:
                out.write(b"".join(lines))
                out.flush()
            except (BrokenPipeError, ValueError):
                pass  # a closed terminal or pipe: the processes' own fate decides the status

    def say(self, text: str) -> None:
        """One line of the launcher's own on stderr."""
        self.write("stderr", [text.encode() + b"\n"])


class StderrFilter:
    """What of one process's stderr reaches the terminal (the module
    docstring, "jax's abort reports").

    jax's C++ log lines (and the lines that continue them) are held for up
    to `HOLD_SECONDS`, in order with what follows them; if the abort marker
    arrives, the held lines and everything after are dropped (the
    launcher's last line says the process was aborted); if the launcher is handling a failure (`failing()`),
    held lines are dropped, otherwise released.  mtfc's own ``error:`` and
    ``warning:`` lines always pass.  With `verbose` every line passes at once."""

    def __init__(self, process_id: int, failing, verbose: bool = False):
        self.process_id = process_id
        self.failing = failing
        self.verbose = verbose
        self.held: list[bytes] = []
        self.held_since = 0.0
        self.aborted = False
        self.dropped = 0

    def feed(self, line: bytes, now: float) -> list[bytes]:
        if _ABORT_MARKER in line:
            self.aborted = True  # the launcher's last line says so
            if not self.verbose:
                self.dropped += len(self.held)
                self.held = []
        if self.verbose:
            return [line]
        if self.aborted:
            self.dropped += 1
            return []
        if _OWN_LINE.match(line):
            return self._release() + [line]
        if self.held or _ABSL_LINE.match(line) or _STACK_LINE.match(line):
            if not self.held:
                self.held_since = now
            self.held.append(line)
            return []
        return [line]

    def tick(self, now: float) -> list[bytes]:
        """Release (or drop) lines held longer than `HOLD_SECONDS`."""
        if self.held and now - self.held_since >= HOLD_SECONDS:
            return self._release()
        return []

    def finish(self) -> list[bytes]:
        """The process's stderr has ended."""
        return self._release()

    def _release(self) -> list[bytes]:
        held, self.held = self.held, []
        if self.failing():
            self.dropped += len(held)
            return []
        return held


class Child:
    """One launched process, its process group and the threads reading its output."""

    def __init__(self, process_id: int, popen: subprocess.Popen):
        self.process_id = process_id
        self.popen = popen
        self.readers: list[threading.Thread] = []
        self.filter: StderrFilter | None = None
        self.returncode: int | None = None
        self.signalled: int | None = None  # the last signal the launcher sent

    @property
    def prefix(self) -> bytes:
        return b"" if self.process_id == 0 else b"[%d] " % self.process_id

    def send(self, number: int) -> None:
        """Signal this child's process group (it leads its own session), while it runs."""
        if self.returncode is not None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, number)
            self.signalled = number
        except (ProcessLookupError, PermissionError):
            pass


def _relay(child: Child, stream, name: str, output: Output, lock: threading.Lock) -> None:
    """Copy `child`'s `stream` to `output`, line by line with its prefix."""
    while True:
        line = stream.readline()
        if not line:
            break
        if not line.endswith(b"\n"):
            line += b"\n"
        if name == "stderr":
            with lock:
                lines = child.filter.feed(line, time.monotonic())
        else:
            lines = [line]
        output.write(name, [child.prefix + ln for ln in lines])
    if name == "stderr":
        with lock:
            lines = child.filter.finish()
        output.write(name, [child.prefix + ln for ln in lines])
    stream.close()


def saved_checkpoint(args: tuple[str, ...]) -> str | None:
    """The ``--save DIR`` (or ``--save=DIR``) the processes were given, if any."""
    found = None
    for k, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--save" and k + 1 < len(args):
            found = args[k + 1]
        elif arg.startswith("--save="):
            found = arg[len("--save="):]
    return found


def committed_step(path: str) -> int | None:
    """The step of the checkpoint committed in `path` (its ``index.json``,
    which every checkpoint format version has), None if there is none."""
    try:
        with open(os.path.join(path, "index.json")) as f:
            step = json.load(f).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def checkpoint_note(args: tuple[str, ...]) -> str | None:
    """What a failed job leaves to ``--restore`` from, in words (None without ``--save``)."""
    path = saved_checkpoint(args)
    if path is None:
        return None
    step = committed_step(path)
    if step is None:
        return f"no checkpoint is committed in {path}"
    return f"the last committed checkpoint is step {step} in {path} (--restore {path} continues from it)"


def _how(child: Child) -> str:
    """How `child` ended, in words."""
    rc = child.returncode
    if child.filter.aborted:
        return "was aborted by jax's distributed service (status 134; --verbose shows its report)"
    if rc < 0:
        return f"was killed by {signal_name(-rc)}"
    return f"exited with status {rc}"


class Launcher:
    """Starts and supervises the processes of one launch (module docstring)."""

    def __init__(self, options: LaunchOptions, output: Output | None = None):
        self.options = options
        self.output = output or Output()
        self.children: list[Child] = []
        self.lock = threading.Lock()  # the stderr filters' state
        self.first_failure: Child | None = None
        self.interrupted: int | None = None  # the signal that asked the launcher to stop
        self.stop_deadline: float | None = None
        self.killed = False

    def failing(self) -> bool:
        return self.first_failure is not None or self.interrupted is not None

    # -- starting ---------------------------------------------------------------------------

    def _start(self, coordinator: str) -> None:
        """Start every process, then the threads that read their output."""
        command = child_command(self.options)
        for i in range(self.options.processes):
            popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_environment(self.options, i, coordinator),
                                     start_new_session=True)
            child = Child(i, popen)
            child.filter = StderrFilter(i, self.failing, self.options.verbose)
            self.children.append(child)
        for child in self.children:
            for stream, name in ((child.popen.stdout, "stdout"), (child.popen.stderr, "stderr")):
                thread = threading.Thread(target=_relay, args=(child, stream, name, self.output, self.lock),
                                          name=f"mtfc-launch-{child.process_id}-{name}", daemon=True)
                thread.start()
                child.readers.append(thread)

    # -- stopping ---------------------------------------------------------------------------

    def _running(self) -> list[Child]:
        return [c for c in self.children if c.returncode is None]

    def _stop(self, first_signal: int) -> None:
        """Send `first_signal` to every running child; SIGKILL follows after the grace period."""
        for child in self._running():
            child.send(first_signal)
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.options.grace

    def _kill_all(self) -> None:
        for child in self._running():
            child.send(signal.SIGKILL)
        self.killed = True

    def _on_signal(self, number, frame) -> None:
        if self.interrupted is not None:
            self._kill_all()  # a second Ctrl-C: at once
            return
        self.interrupted = number
        self._stop(number)

    # -- the loop ---------------------------------------------------------------------------

    def _reap(self) -> None:
        failed = []
        for child in self._running():
            rc = child.popen.poll()
            if rc is None:
                continue
            child.returncode = rc
            if rc != 0:
                failed.append(child)
        if not failed or self.first_failure is not None or self.interrupted is not None:
            return
        for child in failed:  # their stderr first, so that an abort report is recognized as one
            for reader in child.readers:
                reader.join(timeout=1.0)
        # of processes found ended together, one jax aborted is a consequence, not the cause
        self.first_failure = next((c for c in failed if not c.filter.aborted), failed[0])
        self._stop(signal.SIGTERM)

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            with self.lock:
                lines = child.filter.tick(now)
            self.output.write("stderr", [child.prefix + ln for ln in lines])
        if self.stop_deadline is not None and now >= self.stop_deadline and not self.killed and self._running():
            self._kill_all()

    def run(self) -> int:
        """Start the processes, wait for all of them, return the launch's exit status."""
        port, holder = reserve_port(self.options.port)
        handlers = {}
        try:
            for number in (signal.SIGINT, signal.SIGTERM):
                handlers[number] = signal.signal(number, self._on_signal)
        except ValueError:  # not the main thread: no signal forwarding
            pass
        try:
            self._start(f"127.0.0.1:{port}")
            while self._running():
                self._reap()
                self._tick()
                if self._running():
                    time.sleep(POLL_SECONDS)
        finally:
            if self._running():  # the launcher itself is failing: take the processes with it
                self._kill_all()
                for child in self._running():
                    child.popen.wait()
            for number, handler in handlers.items():
                signal.signal(number, handler)
            holder.close()
        for child in self.children:
            for reader in child.readers:
                reader.join(timeout=2.0)
        return self._finish()

    def _finish(self) -> int:
        if self.interrupted is not None:
            return EXIT_INTERRUPTED if self.interrupted == signal.SIGINT else EXIT_TERMINATED
        first = self.first_failure
        if first is None:
            return 0
        others = [c for c in self.children if c is not first]
        aborted = [c.process_id for c in others if c.filter.aborted]
        # stopped: signalled by the launcher and ended by a signal (or by mtfc's SIGTERM handler: 143)
        stopped = [c.process_id for c in others
                   if c.signalled is not None and exit_status(c.returncode) > 128 and not c.filter.aborted]
        if first.returncode > 0 and not first.filter.aborted and not stopped and not aborted:
            return exit_status(first.returncode)  # it said why itself, and the others ended by themselves
        parts = [f"error: process {first.process_id} {_how(first)}"]
        if aborted:
            parts.append(f"jax's distributed service then aborted process{'es' if len(aborted) > 1 else ''} "
                         f"{', '.join(map(str, aborted))} (its report is dropped; --verbose shows it)")
        if stopped:
            parts.append(f"stopped process{'es' if len(stopped) > 1 else ''} "
                         f"{', '.join(map(str, stopped))}")
        note = checkpoint_note(self.options.args)
        if note:
            parts.append(note)
        self.output.say("; ".join(parts))
        return exit_status(first.returncode)


def launch(options: LaunchOptions) -> int:
    """Run the job `options` describes; its exit status (module docstring)."""
    return Launcher(options).run()
