"""`mtfc launch`: the processes' environment, output prefixes, exit statuses,
stopping the others when one fails, jax's abort reports, Ctrl-C, bad command
lines: cheap children (``--version``, the hidden ``--python`` test mode), no
jax, each well under 2 s.  Then a training job of 2 processes x 4 devices
that loses process 1 (kill -9), with and without the launcher, and resumes
from its last checkpoint on 2 processes and on 1 with the losses of the
uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from mtfc.cli import main
from mtfc.runtime import launch as rt_launch

TIMEOUT = 60  # no launch here should take more than a few seconds


def launch(*args, timeout=TIMEOUT, **kwargs):
    """Run ``mtfc launch ARGS`` in a subprocess; (the CompletedProcess, seconds it took)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mtfc.cli", "launch", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)
    return proc, time.monotonic() - start


def python_job(tmp_path, code: str) -> str:
    """A script for ``mtfc launch --python``; it sees ``I`` (its process id) and ``PIDS`` (a folder)."""
    script = tmp_path / "job.py"
    script.write_text("import os, signal, sys, time\n"
                      "I = int(os.environ['MTFC_PROCESS_ID'])\n"
                      f"PIDS = {str(tmp_path)!r}\n"
                      "open(os.path.join(PIDS, f'pid{I}'), 'w').write(str(os.getpid()))\n"
                      + textwrap.dedent(code))
    return str(script)


def assert_all_gone(tmp_path, n):
    for i in range(n):
        pid = int((tmp_path / f"pid{i}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_every_process_runs_mtfc_and_only_process_0_is_unprefixed():
    proc, _ = launch("-n", 3, "--", "--version")
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    version = [line for line in lines if not line.startswith("[")][0]
    assert re.fullmatch(r"mtfc, version \S+", version)
    assert lines == sorted([version, f"[1] {version}", f"[2] {version}"])
    assert proc.stderr == ""


def test_mtfc_runs_errors_come_from_each_process_as_one_line(tmp_path):
    proc, _ = launch("-n", 2, "--", "run", tmp_path / "missing.mlir")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert re.fullmatch(r"(\[1\] )?error: cannot read module '.*missing\.mlir': No such file or directory",
                        lines[0]), proc.stderr
    # then the other process's own line, or, if it was still starting, the launcher's: it stopped that one
    assert all(re.fullmatch(r"(\[1\] )?error: cannot read module .*|error: process [01] exited with status 1; "
                            r"stopped process [01]", line) for line in lines[1:]), proc.stderr
    assert proc.stdout == ""


def test_the_job_is_in_each_processes_environment_and_streams_stay_apart(tmp_path):
    script = python_job(tmp_path, """
        names = ["MTFC_COORDINATOR", "MTFC_NUM_PROCESSES", "MTFC_PROCESS_ID", "MTFC_LOCAL_DEVICES",
                 "MTFC_INITIALIZATION_TIMEOUT", "MTFC_HEARTBEAT_TIMEOUT", "MTFC_COLLECTIVE_TIMEOUT", "MTFC_LAUNCHED"]
        print(" ".join(f"{n}={os.environ.get(n)}" for n in names))
        print(f"to stderr {I}", file=sys.stderr)
    """)
    env = dict(os.environ, MTFC_LOCAL_DEVICES="7", MTFC_HEARTBEAT_TIMEOUT="99")  # stale values do not leak in
    proc, _ = launch("-n", 2, "--local-devices", 4, "--initialization-timeout", 11, "--collective-timeout", 13,
                     "--python", "--", script, env=env)
    assert proc.returncode == 0, proc.stderr
    out = sorted(proc.stdout.splitlines())
    port = re.search(r"MTFC_COORDINATOR=127\.0\.0\.1:(\d+) ", out[1]).group(1)
    common = ("MTFC_LOCAL_DEVICES=4 MTFC_INITIALIZATION_TIMEOUT=11 MTFC_HEARTBEAT_TIMEOUT=None "
              "MTFC_COLLECTIVE_TIMEOUT=13 MTFC_LAUNCHED=1")
    assert out == [f"MTFC_COORDINATOR=127.0.0.1:{port} MTFC_NUM_PROCESSES=2 MTFC_PROCESS_ID=0 {common}",
                   f"[1] MTFC_COORDINATOR=127.0.0.1:{port} MTFC_NUM_PROCESSES=2 MTFC_PROCESS_ID=1 {common}"]
    assert sorted(proc.stderr.splitlines()) == ["[1] to stderr 1", "to stderr 0"]


def test_lines_of_different_processes_are_never_mixed(tmp_path):
    script = python_job(tmp_path, """
        for k in range(1500):
            sys.stdout.write(f"p{I}-{k}-" + "x" * 2000 + "\\n")
    """)
    proc, _ = launch("-n", 3, "--python", "--", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4500
    for line in lines:
        m = re.fullmatch(r"(?:\[(\d)\] )?p(\d)-\d+-x{2000}", line)
        assert m and (m.group(1) or "0") == m.group(2), line[:80]


def test_the_first_failure_is_the_status_and_ends_the_others(tmp_path):
    script = python_job(tmp_path, """
        if I == 1:
            time.sleep(0.3)
            print("error: process 1 gives up", file=sys.stderr)
            sys.exit(3)
        if I == 2:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL, after the grace period, ends it
        time.sleep(60)
    """)
    proc, seconds = launch("-n", 3, "--grace", 1, "--python", "--", script)
    assert proc.returncode == 3
    assert seconds < 15
    assert proc.stderr.splitlines() == ["[1] error: process 1 gives up",
                                        "error: process 1 exited with status 3; stopped processes 0, 2"]
    assert_all_gone(tmp_path, 3)


def test_a_failure_every_process_reports_itself_adds_no_line(tmp_path):
    script = python_job(tmp_path, """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a process the launcher signals late ends by itself
        while not all(os.path.exists(os.path.join(PIDS, f"pid{i}")) for i in range(2)):
            time.sleep(0.01)
        print(f"error: bad input", file=sys.stderr)
        sys.exit(1)
    """)
    proc, _ = launch("-n", 2, "--python", "--", script)
    assert proc.returncode == 1
    assert "error: bad input" in proc.stderr.splitlines()
    assert all(line.endswith("error: bad input") for line in proc.stderr.splitlines()), proc.stderr


def test_a_killed_process_is_named_with_the_last_committed_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "index.json").write_text(json.dumps({"format": "mtfc.checkpoint", "step": 4}))
    script = python_job(tmp_path, """
        if I == 1:
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """)
    proc, seconds = launch("-n", 2, "--python", "--", script, "--save", ckpt)
    assert proc.returncode == 128 + signal.SIGKILL
    assert seconds < 15
    assert proc.stderr.splitlines() == [
        f"error: process 1 was killed by SIGKILL; stopped process 0; the last committed checkpoint is step 4 "
        f"in {ckpt} (--restore {ckpt} continues from it)"]
    assert_all_gone(tmp_path, 2)


ABORT_REPORT = (
    "E1202 01:52:55.860009   17866 coordination_service.cc:1549] Use error polling to propagate the following "
    "error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\\n1\\n"
    "The tasks have crashed.\\n"
    "F1202 01:52:55.860622   17877 client.h:80] Terminating process because the JAX distributed service detected "
    "fatal errors. This most likely indicates that another task died\\n"
    "*** Check failure stack trace: ***\\n"
    "    @     0x7f3196a40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()\\n"
)


def test_a_survivor_aborted_by_jax_is_summarized_not_shown(tmp_path):
    script = python_job(tmp_path, f"""
        if I == 1:
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        if I == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as jax's preemption notifier does
            time.sleep(0.35)
            sys.stderr.write("{ABORT_REPORT}")
            sys.stderr.flush()
            os.abort()
        time.sleep(60)
    """)
    proc, _ = launch("-n", 3, "--python", "--", script)
    assert proc.returncode == 128 + signal.SIGKILL
    assert proc.stderr.splitlines() == [
        "error: process 1 was killed by SIGKILL; jax's distributed service then aborted process 0 (its report is "
        "dropped; --verbose shows it); stopped process 2"]

    proc, _ = launch("-n", 3, "--verbose", "--python", "--", script)
    assert "Terminating process because the JAX distributed service" in proc.stderr
    assert "*** Check failure stack trace: ***" in proc.stderr


def test_an_abort_alone_is_one_line_and_jax_log_lines_pass_when_nothing_fails(tmp_path):
    script = python_job(tmp_path, f"""
        if I == 0:
            sys.stderr.write("W1202 01:52:55.000001   17866 some_file.cc:12] a warning of jax's\\n")
            sys.stderr.flush()
            time.sleep(0.8)  # longer than the launcher holds a C++ log line
            print("done", file=sys.stderr)
        if I == 1:
            time.sleep(1.5)
            sys.stderr.write("{ABORT_REPORT}")
            sys.stderr.flush()
            os.abort()
    """)
    proc, _ = launch("-n", 2, "--python", "--", script)
    assert proc.returncode == 128 + signal.SIGABRT
    assert proc.stderr.splitlines() == [
        "W1202 01:52:55.000001   17866 some_file.cc:12] a warning of jax's", "done",
        "error: process 1 was aborted by jax's distributed service (status 134; --verbose shows its report)"]


def test_ctrl_c_reaches_every_process_and_exits_130(tmp_path):
    script = python_job(tmp_path, """
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print(f"error: interrupted in {I}", file=sys.stderr)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "mtfc.cli", "launch", "-n", "2", "--python", "--", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"pid{i}").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # their handlers are Python's: installed before their script runs
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert sorted(err.splitlines()) == ["[1] error: interrupted in 1", "error: interrupted in 0"]
    assert_all_gone(tmp_path, 2)


@pytest.mark.parametrize("args, message, status", [
    (["-n", "2", "run", "x.mlir"], "error: mtfc launch needs -- before the processes' command: "
                                   "mtfc launch -n N -- run x.mlir", 2),
    (["-n", "2"], "error: mtfc launch needs -- and the processes' command after it, "
                  "e.g. mtfc launch -n 2 -- run train.mlir", 2),
    (["-n", "2", "--"], "error: mtfc launch needs the command after --, e.g. mtfc launch -n 2 -- run train.mlir", 2),
    (["--", "--version"], "error: mtfc launch needs -n N, the number of processes", 1),
    (["-n", "0", "--", "--version"], "error: -n 0 must be >= 1", 1),
    (["--num-processes", "two", "--", "--version"], "error: -n 'two' is not an integer", 1),
    (["-n", "2", "--local-devices", "0", "--", "--version"], "error: --local-devices 0 must be >= 1", 1),
    (["-n", "2", "--port", "70000", "--", "--version"], "error: --port 70000 must be 1-65535", 1),
    (["-n", "2", "--heartbeat-timeout", "-5", "--", "--version"], "error: --heartbeat-timeout -5 must be >= 1", 1),
    (["-n", "2", "--grace", "0", "--", "--version"], "error: --grace 0 must be more than 0 and at most 3600 seconds",
     1),
    (["-n", "2", "--steps", "3", "--", "run"], "error: mtfc launch: no such option --steps (the processes' "
                                               "command and its options go after --)", 2),
    (["-n", "2", "--", "launch", "-n", "2", "--", "--version"],
     "error: the command after -- is what each process runs; it cannot be launch again", 1),
])
def test_bad_command_lines_are_one_line_errors(args, message, status):
    result = CliRunner().invoke(main, ["launch", *args])
    assert (result.exit_code, result.output) == (status, message + "\n")


def test_launch_inside_a_launched_process_is_refused():
    result = CliRunner().invoke(main, ["launch", "-n", "2", "--", "--version"],
                                env={"MTFC_LAUNCHED": "1", "MTFC_PROCESS_ID": "1"})
    assert (result.exit_code, result.output) == (
        1, "error: mtfc launch cannot run inside a launched process (this is process 1 of a job mtfc launch "
           "started)\n")


def test_a_port_in_use_is_an_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["launch", "-n", "2", "--port", str(port), "--", "--version"])
    assert result.exit_code == 1
    assert re.fullmatch(rf"error: --port {port}: cannot use 127\.0\.0\.1:{port} \(.+\)\n", result.output)


def test_the_held_port_cannot_be_taken_but_a_coordinator_can_listen_on_it():
    port, holder = rt_launch.reserve_port(None)
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        with socket.socket() as coordinator:  # gRPC sets SO_REUSEADDR (and SO_REUSEPORT) too
            coordinator.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            coordinator.bind(("127.0.0.1", port))
            coordinator.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    finally:
        holder.close()


def test_the_checkpoint_note_reads_the_committed_step(tmp_path):
    assert rt_launch.checkpoint_note(("run", "t.mlir", "--steps", "5")) is None
    missing = tmp_path / "none"
    assert rt_launch.checkpoint_note(("run", "t.mlir", f"--save={missing}")) == \
        f"no checkpoint is committed in {missing}"
    (tmp_path / "index.json").write_text(json.dumps({"step": 12}))
    assert rt_launch.checkpoint_note(("run", "--save", str(tmp_path), "t.mlir")) == \
        f"the last committed checkpoint is step 12 in {tmp_path} (--restore {tmp_path} continues from it)"


def test_the_stderr_filter_holds_jax_lines_briefly_and_drops_them_in_a_failure():
    failing = [False]
    f = rt_launch.StderrFilter(1, lambda: failing[0])
    log = b"E1202 01:52:55.860009   17866 x.cc:1] something\n"
    assert f.feed(log, 0.0) == []
    assert f.feed(b"a continuation\n", 0.1) == []
    assert f.tick(0.2) == []
    assert f.tick(0.0 + rt_launch.HOLD_SECONDS) == [log, b"a continuation\n"]
    assert f.feed(b"plain\n", 1.0) == [b"plain\n"]
    assert f.feed(log, 2.0) == []
    assert f.feed(b"error: mtfc's own line\n", 2.1) == [log, b"error: mtfc's own line\n"]
    failing[0] = True
    assert f.feed(log, 3.0) == []
    assert f.finish() == []
    assert f.feed(b"error: still shown\n", 4.0) == [b"error: still shown\n"]


def test_a_survivors_line_names_the_lost_process_and_only_communication_failures_count(monkeypatch):
    from jax.errors import JaxRuntimeError

    from mtfc.errors import MtfcError
    from mtfc.runtime import distributed, failure

    monkeypatch.setattr(distributed, "_current", distributed.Job(0, 3, "127.0.0.1:1234"))
    gloo = JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read "
                           "error [127.0.0.1]:44227: Connection reset by peer "
                           "[type.googleapis.com/tensorflow.CoordinationServiceError='']")
    failure.set_describe(lambda: "stopped at step 7; the last checkpoint, step 4, is in ckpt")
    try:
        assert failure.lost_line(gloo, [2]) == (
            "error: process 0: lost process 2 of 3 (jax's coordination service has no heartbeat from it; Gloo "
            "all-reduce failed: Read error [127.0.0.1]:44227: Connection reset by peer); stopped at step 7; the last "
            "checkpoint, step 4, is in ckpt")
        assert failure.lost_line(gloo, None).startswith(
            "error: process 0: lost contact with the other processes of the job (Gloo all-reduce failed: ")
    finally:
        failure.set_describe(None)
    assert failure._is_job_failure(gloo)
    assert failure._is_job_failure(JaxRuntimeError("UNKNOWN: Timed out waiting 30000ms for recv operation"))
    assert failure._is_job_failure(MtfcError("process 1: the other processes did not reach 'mtfc-save' within 30 s"))
    assert not failure._is_job_failure(JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4 bytes"))
    assert not failure._is_job_failure(MtfcError("the loss is nan after step 3; stopping (...)"))
    assert not failure._is_job_failure(ValueError("Gloo"))  # not jax's, not mtfc's
    with pytest.raises(MtfcError, match="the loss is nan"), failure.guard():  # passes on what is not a lost peer
        raise MtfcError("the loss is nan after step 3")


SIGTERM_SCRIPT = """
import ctypes, sys
from mtfc.runtime import distributed, failure
distributed._current = distributed.Job(1, 2, "127.0.0.1:1234")
failure.set_describe(lambda: "stopped at step 3; the last checkpoint, step 2, is in ckpt")
failure.watch_termination(quiet=QUIET)
print("ready", flush=True)
libc = ctypes.CDLL(None)
while True:
    libc.sleep(30)  # blocked in C, as in a collective
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_sigterm_ends_a_job_process_at_once_even_when_blocked_in_c(quiet):
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT.replace("QUIET", str(quiet))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.1)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        seconds = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert seconds < 5
    assert err == ("" if quiet else "error: process 1: terminated (SIGTERM); stopped at step 3; the last checkpoint, "
                                    "step 2, is in ckpt\n")


# -- a training job that loses a process (needs multi-process training and collective checkpoints) -----

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 8  # the uninterrupted run's steps
SAVE_EVERY = 3
QUICK = ["--collective-timeout", "5", "--heartbeat-timeout", "3"]  # a lost peer ends a survivor within ~10 s


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTFC_") and k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def losses(path) -> list[float]:
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def lines_in(path) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def wait_for(condition, seconds: float, what: str, procs=()):
    deadline = time.monotonic() + seconds
    while not condition():
        for p in procs:
            assert p.poll() is None, f"a process ended early ({p.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def checkpoint_step(path):
    return rt_launch.committed_step(str(path))


def wait_to_kill(ckpt, log, procs):
    """Wait until a checkpoint is committed and the log is a step past it
    (the next save is SAVE_EVERY - 1 steps away): the moment to kill."""
    wait_for(lambda: (checkpoint_step(ckpt) or 0) >= SAVE_EVERY, 120, "a committed checkpoint", procs)
    step = checkpoint_step(ckpt)
    wait_for(lambda: lines_in(log) >= step + 1, 60, "a step past the checkpoint", procs)


@pytest.fixture(scope="module")
def train_module(tmp_path_factory):
    from test_cli import invoke

    folder = tmp_path_factory.mktemp("kill")
    path = folder / "train.mlir"
    invoke("compile", os.path.join(ROOT, "examples", "mlp.py"), "--train", "-o", path,
           "--layout", "batch:rows+cols", "--mode", "explicit")
    reference = folder / "reference.jsonl"  # 1 process x 8 devices, uninterrupted
    invoke("run", path, "--steps", TOTAL_STEPS, "--log", reference)
    return path, losses(reference)


def start_job(folder, args: list[str], n: int = 2, k: int = 4):
    """The processes of a job started by hand (no launcher), as srun would."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(n):
        env = clean_env()
        env.update({"MTFC_COORDINATOR": f"127.0.0.1:{port}", "MTFC_NUM_PROCESSES": str(n),
                    "MTFC_PROCESS_ID": str(i), "MTFC_LOCAL_DEVICES": str(k)})
        procs.append(subprocess.Popen([sys.executable, "-m", "mtfc.cli", *map(str, args)], cwd=folder, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def assert_close_losses(actual, expected):
    from conftest import assert_close

    assert len(actual) == len(expected)
    assert_close(actual, expected)


def test_a_killed_process_ends_the_survivor_with_one_line_and_the_run_resumes_alike(train_module, tmp_path):
    path, reference = train_module
    ckpt, log = tmp_path / "ckpt", tmp_path / "killed.jsonl"
    procs = start_job(tmp_path, ["run", path, "--steps", 400, "--save", ckpt, "--save-every", SAVE_EVERY,
                                 "--log", log, *QUICK])
    try:
        wait_to_kill(ckpt, log, procs)
        procs[1].kill()  # kill -9 process 1
        killed = time.monotonic()
        out, err = procs[0].communicate(timeout=60)
        seconds = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    kept = checkpoint_step(ckpt)
    ran = losses(log)
    assert procs[0].returncode == 1
    # the heartbeat timeout (the peer watcher), or the collective timeout then naming the lost process (+ slack)
    assert seconds < 5 + 3 + 2 + 10
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(
        re.escape("error: process 0: lost process 1 of 2 (jax's coordination service has no heartbeat from it")
        + r"(; Gloo [^\n]+)?\); stopped at step (\d+)" + re.escape(f"; the last checkpoint, step {kept}, is in {ckpt}"),
        err.rstrip("\n")), err
    # the step reached: the last one logged, or the next, launched when the collective failed (as for Ctrl-C)
    assert int(re.search(r"stopped at step (\d+)", err).group(1)) in (len(ran), len(ran) + 1)
    assert len(ran) >= kept + 1
    # the steps before the kill are the uninterrupted run's (2 processes sum in another order than 1: close)
    assert_close_losses(ran, reference[:len(ran)])

    # resume on 2 processes: the killed run's own steps again, exactly, then on to TOTAL_STEPS
    resumed2 = tmp_path / "resumed2.jsonl"
    proc, _ = launch("-n", 2, "--local-devices", 4, "--", "run", path, "--restore", ckpt,
                     "--steps", TOTAL_STEPS - kept, "--log", resumed2, cwd=tmp_path, env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"restored step {kept} from {ckpt}" in proc.stdout
    again = losses(resumed2)
    assert again[:len(ran) - kept] == ran[kept:]
    assert_close_losses(again, reference[kept:])

    # resume on 1 process x 8 devices: the uninterrupted single-process losses
    from test_cli import invoke

    resumed1 = tmp_path / "resumed1.jsonl"
    invoke("run", path, "--restore", ckpt, "--steps", TOTAL_STEPS - kept, "--log", resumed1)
    assert_close_losses(losses(resumed1), reference[kept:])
    assert_close_losses(losses(resumed1), again)


def _children(launcher: subprocess.Popen) -> dict[int, int]:
    """The launched processes: process id -> pid (by their environment; Linux's /proc)."""
    found = {}
    for task in os.listdir(f"/proc/{launcher.pid}/task"):
        with open(f"/proc/{launcher.pid}/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as env:
                        variables = env.read().split(b"\0")
                except OSError:
                    continue
                for v in variables:
                    if v.startswith(b"MTFC_PROCESS_ID="):
                        found[int(v.split(b"=")[1])] = int(pid)
    return found


def test_under_the_launcher_a_killed_process_is_one_line_with_the_checkpoint(train_module, tmp_path):
    path, _ = train_module
    ckpt, log = tmp_path / "ckpt", tmp_path / "killed.jsonl"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "mtfc.cli", "launch", "-n", "2", "--local-devices", "4", "--grace", "30", "--", "run",
         str(path),
         "--steps", "400", "--save", str(ckpt), "--save-every", str(SAVE_EVERY), "--log", str(log)],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = {}
    try:
        wait_to_kill(ckpt, log, [launcher])
        children = _children(launcher)
        os.kill(children[1], signal.SIGKILL)
        killed = time.monotonic()
        out, err = launcher.communicate(timeout=60)
        seconds = time.monotonic() - killed
    finally:
        if launcher.poll() is None:  # the test failed: end the job, the launched processes first
            for pid in (children or _children(launcher)).values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            launcher.kill()
            launcher.communicate()
    kept = checkpoint_step(ckpt)
    assert launcher.returncode == 128 + signal.SIGKILL
    # the launcher's SIGTERM ends process 0 at once, inside a collective (jax's own handler would ignore it,
    # and SIGKILL would come only after the 30 s grace)
    assert seconds < 15
    assert err.splitlines() == [
        f"error: process 1 was killed by SIGKILL; stopped process 0; the last committed checkpoint is step {kept} "
        f"in {ckpt} (--restore {ckpt} continues from it)"], err
    assert f"saved step {kept} to {ckpt}" in out
