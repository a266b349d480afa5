"""A process of a job ending cleanly when another process is lost, or when it is told to stop.

In a job of several processes (`distributed.join`), a lost peer (killed,
crashed, its host gone) is noticed two ways, whichever comes first, and
either ends the survivor with one line and exit status 1::

    error: process 0: lost process 1 of 2 (jax's coordination service has no heartbeat from it; Gloo
    all-reduce failed: ... Connection reset by peer); stopped at step 7; the last checkpoint, step 4, is in ckpt

* `watch_peers`: a thread asks jax's coordination service every second
  which processes are alive (``DistributedRuntimeClient.get_live_nodes``;
  a process counts as lost ``--heartbeat-timeout`` seconds after its last
  heartbeat), so a survivor ends within about the heartbeat timeout
  wherever its main thread waits: in a step, in a checkpoint's barrier, in
  a compile;
* `guard`, around the run: with ``jax_enable_recoverability`` and the
  collective timeout (`distributed.join` sets both) the running step's
  collective raises ``JaxRuntimeError`` (gloo's "Connection reset by
  peer", "Timed out waiting ...") instead of hanging; `guard` keeps that
  error as the line's cause and waits, up to the heartbeat timeout + 2 s
  (at most `LIVENESS_WAIT`), for the service to name the lost process.

The process ends with ``os._exit``: a normal interpreter exit would run
jax's shutdown, which waits for the lost process.

`watch_termination` replaces jax's SIGTERM handling (its preemption
notifier only logs the signal and carries on, so a SIGTERM from ``scancel``,
a scheduler or ``mtfc launch`` would not end the process): SIGTERM ends the
process at once, also while a step is blocked in a collective, with status
143 and one line saying where it stopped (`describe`) -- silently in a
process ``mtfc launch`` started, whose launcher says what happened.

`set_describe` (the training loop) says what a stopped process leaves: the
step reached and the last committed checkpoint.

The process holding the coordination service is process 0: when it is
lost, jax aborts the others at once (status 134) before any of this can
run (docs/multihost.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from typing import Callable

from mtfc.errors import MtfcError
from mtfc.runtime import distributed

LIVENESS_WAIT = 20.0  # at most this long after a failed collective, for the coordination service to name the lost
EXIT_LOST = 1
EXIT_TERMINATED = 143  # 128 + SIGTERM

# what a collective or barrier says when a peer is gone (gloo, XLA's CPU collectives, the coordination service)
_COMMUNICATION = re.compile(r"Gloo|gloo|Connection (reset|closed|refused)|Timed out|timed out|DEADLINE_EXCEEDED|"
                            r"UNAVAILABLE|Socket closed|did not reach|collective", re.S)

_describe: Callable[[], str] | None = None


def set_describe(describe: Callable[[], str] | None) -> None:
    """What this process leaves if it stops now, in words (e.g. ``stopped at
    step 7; the last checkpoint, step 4, is in ckpt``); None: nothing to say."""
    global _describe
    _describe = describe


def _where() -> str:
    if _describe is None:
        return ""
    try:
        text = _describe()
    except Exception:  # a description is never worth a traceback
        return ""
    return f"; {text}" if text else ""


_exit_lock = threading.Lock()
_stderr: int | None = None  # a copy of descriptor 2 as it was when the watching began


def _keep_stderr() -> None:
    """Keep a copy of descriptor 2 for the last line: code that runs later may
    point descriptor 2 elsewhere for a while (checkpoint saves hide orbax's
    own reports), and the line must reach the user's stderr all the same."""
    global _stderr
    if _stderr is None:
        try:
            _stderr = os.dup(2)
        except OSError:
            pass


def _exit_with(line: str | None, status: int) -> None:
    """Print `line` on stderr (after what is already on stdout) and end the
    process now.  The first caller wins: another thread calling it blocks
    until the process is gone (one line, never two)."""
    _exit_lock.acquire()
    try:
        sys.stdout.flush()
    except Exception:
        pass
    if line:
        try:
            os.write(_stderr if _stderr is not None else 2, (line + "\n").encode())
        except OSError:
            pass
    os._exit(status)


# -- which process is lost ----------------------------------------------------------------------

def lost_processes(wait_s: float) -> list[int] | None:
    """The processes of the job jax's coordination service counts as lost;
    None when it cannot say within `wait_s` seconds (or this is no job).

    ``get_live_nodes`` answers once every process it counts as alive has
    asked too, or once it counts the silent ones as lost (no heartbeat for
    ``--heartbeat-timeout`` seconds), so the question is asked in a thread
    and waited for at most `wait_s`."""
    job = distributed.current_job()
    if not job.is_multi_process:
        return None
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return None
    client = jax_distributed.global_state.client
    if client is None:
        return None
    answer: list = []

    def ask():
        try:
            live = set(client.get_live_nodes(list(range(job.num_processes))))
            answer.append(sorted(set(range(job.num_processes)) - live))
        except Exception:
            answer.append(None)

    thread = threading.Thread(target=ask, name="mtfc-live-processes", daemon=True)
    thread.start()
    thread.join(wait_s)
    return answer[0] if answer else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    line = re.sub(r"^(UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED): ", "", line)
    line = re.sub(r"\[[^\]]*\.(cc|h):\d+\] ", "", line)  # gloo's source location
    line = re.sub(r" \[type\.googleapis\.com/[^\]]*\]", "", line)
    return line.strip()


def lost_line(error: BaseException | None, lost: list[int] | None) -> str:
    """The one line a survivor prints (module docstring); `error`: what
    failed in this process, if anything did."""
    job = distributed.current_job()
    me = f"process {job.process_id}"
    cause = _first_line(error) if error is not None else None
    if lost:
        names = ", ".join(map(str, lost))
        who = f"lost process{'es' if len(lost) > 1 else ''} {names} of {job.num_processes}"
        why = f"jax's coordination service has no heartbeat from {'them' if len(lost) > 1 else 'it'}"
        if cause:
            why += f"; {cause}"
    else:
        who = "lost contact with the other processes of the job"
        why = cause or "no answer"
    return f"error: {me}: {who} ({why}){_where()}"


def _is_job_failure(error: BaseException) -> bool:
    """Whether `error` can come from a lost peer (a collective's or barrier's failure)."""
    try:
        from jax.errors import JaxRuntimeError
    except ImportError:  # pragma: no cover - jax always has it
        JaxRuntimeError = ()  # noqa: N806
    if isinstance(error, JaxRuntimeError):
        return bool(_COMMUNICATION.search(str(error)))
    return isinstance(error, MtfcError) and bool(_COMMUNICATION.search(str(error)))


@contextlib.contextmanager
def guard():
    """Around the work of one process of a job: a failure caused by a lost
    process ends this one with `lost_line` and status 1 (module docstring);
    any other error passes on.  A no-op for one process.  Clears
    `set_describe` at the end."""
    try:
        if not distributed.current_job().is_multi_process:
            yield
            return
        _keep_stderr()
        try:
            yield
        except Exception as e:
            if not _is_job_failure(e):
                raise
            global _cause
            _cause = e
            wait = min(LIVENESS_WAIT, distributed.current_job().timeouts.heartbeat + 2.0)
            if _watcher is not None and _watcher.is_alive():
                _watcher.join(wait)  # it ends the process, with the line, once the service names the lost
                lost = None
            else:
                lost = lost_processes(wait_s=wait)
            _exit_with(lost_line(e, lost), EXIT_LOST)
    finally:
        set_describe(None)  # the next run in this process describes itself


# -- the peers' heartbeats ----------------------------------------------------------------------

WATCH_INTERVAL = 1.0  # seconds between two questions to the coordination service

_watcher: threading.Thread | None = None
_cause: BaseException | None = None  # what failed in this process (`guard`), for the watcher's line
_leaving = False


def watch_peers() -> None:
    """From now on a thread asks jax's coordination service, every
    `WATCH_INTERVAL` seconds, which processes of the job are alive
    (``get_live_nodes``: every process asks, and the answer comes once all
    the live ones have); when it counts one as lost (no heartbeat for
    ``--heartbeat-timeout`` seconds) this process ends with `lost_line` and
    status 1, wherever its main thread is -- in a step, a checkpoint's
    barrier, a compile.  Every process of the job runs it (`run.py`).
    Stops quietly at exit and if the service stops answering.  Once per
    process; a no-op for one process."""
    global _watcher
    job = distributed.current_job()
    if not job.is_multi_process or (_watcher is not None and _watcher.is_alive()):
        return
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return
    client = jax_distributed.global_state.client
    if client is None:
        return
    _keep_stderr()
    import atexit

    def leave():
        global _leaving
        _leaving = True

    atexit.register(leave)  # runs before the job is left (registered after distributed.join's)
    everyone = list(range(job.num_processes))

    def watch() -> None:
        while not _leaving:
            try:
                live = set(client.get_live_nodes(everyone))
            except Exception:
                return  # the service is gone or shutting down: jax itself reports that
            lost = sorted(set(everyone) - live)
            if lost and not _leaving:
                _exit_with(lost_line(_cause, lost), EXIT_LOST)
            time.sleep(WATCH_INTERVAL)

    _watcher = threading.Thread(target=watch, name="mtfc-watch-peers", daemon=True)
    _watcher.start()


# -- SIGTERM ------------------------------------------------------------------------------------

_watching = False


def watch_termination(*, quiet: bool | None = None) -> None:
    """From now on SIGTERM ends this process at once with status 143 and one
    line (`describe`; none when `quiet`, default: when ``mtfc launch``
    started it).  Works while the main thread is blocked in a collective: the
    signal's number reaches a thread through ``signal.set_wakeup_fd``.  Only
    from the main thread (elsewhere: nothing is changed)."""
    global _watching
    if _watching or threading.current_thread() is not threading.main_thread():
        return
    if quiet is None:
        from mtfc.runtime.launch import ENV_LAUNCHED

        quiet = bool(os.environ.get(ENV_LAUNCHED))
    _keep_stderr()
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.signal(signal.SIGTERM, lambda number, frame: None)  # Python's C handler writes to the wakeup fd
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    if previous not in (-1, write):  # someone else's wakeup fd: leave theirs, and SIGTERM as jax had it
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)
        return
    _watching = True
    job = distributed.current_job()

    def wait() -> None:
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                line = None if quiet else f"error: process {job.process_id}: terminated (SIGTERM){_where()}"
                _exit_with(line, EXIT_TERMINATED)

    threading.Thread(target=wait, name="mtfc-sigterm", daemon=True).start()
