"""`mtfc run` as 2 processes x 4 CPU devices equals 1 process x 8 devices.

Each launch starts real processes on loopback (MTFC_* variables, a free
port, a timeout) and runs several modules in each process through the CLI's
own entry point (`main(..., standalone_mode=False)` once per module), so
the file pays for few launches: one for every forward module in every mode
(with --check), one for the training runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from corpus import fails, process_fails
from conftest import assert_close
from test_cli import invoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
MODES = ("explicit", "gspmd", "shardy")
FORWARD = [(model, mode) for model in ("mlp", "transformer") for mode in MODES]
# (name, compile flags) of the mlp's train step on rows:2,cols:4
TRAIN = {
    "data": ["--layout", "batch:rows+cols", "--mode", "explicit"],
    "tensor": ["--layout", "d_hidden:rows+cols", "--mode", "gspmd"],
    "fsdp": ["--layout", "batch:rows+cols", "--param-layout", "d_hidden:rows+cols", "--mode", "explicit"],
}
STEPS = 5

# A process of a job: run each (expected exit status, mtfc arguments) of
# argv[1] (JSON) through the CLI.
DRIVER = """
import json, sys
from mtfc.cli import main
from mtfc.errors import MtfcError
from mtfc.runtime import distributed
for expected, args in json.loads(sys.argv[1]):
    try:
        main(args, standalone_mode=False)
        status = 0
    except SystemExit as e:
        status = e.code or 0
    if status != expected:
        sys.exit(f"mtfc {' '.join(args)}: exit status {status}, not {expected}")
distributed.note_exit_status(0)
if distributed.is_primary():  # a barrier the others never reach times out, and the job goes on
    try:
        distributed.barrier("alone", 1)
    except MtfcError as e:
        print("barrier:", e)
distributed.barrier("end", 60)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(n: int, k: int, runs: list[tuple[int, list[str]]], *, extra_env: dict | None = None,
          driver: str = DRIVER) -> list[subprocess.Popen]:
    """Start `n` processes of `k` CPU devices each running `runs` ((expected
    exit status, mtfc arguments) each) through `driver`."""
    port = free_port()
    procs = []
    for i in range(n):
        env = {key: v for key, v in os.environ.items() if not key.startswith("MTFC_") and key != "XLA_FLAGS"}
        env.update({"PYTHONPATH": ROOT, "MTFC_COORDINATOR": f"127.0.0.1:{port}", "MTFC_NUM_PROCESSES": str(n),
                    "MTFC_PROCESS_ID": str(i), "MTFC_LOCAL_DEVICES": str(k), **(extra_env or {})})
        procs.append(subprocess.Popen([sys.executable, "-c", driver, json.dumps(runs)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], *, timeout: float = 150) -> list[tuple[int, str, str]]:
    """[(exit status, stdout, stderr)] by process id; a process still running
    after `timeout` seconds is killed (and the test fails on its status)."""
    results = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """The examples' forward modules in every mode and the mlp's train steps."""
    folder = tmp_path_factory.mktemp("modules")
    paths = {}
    for model, mode in FORWARD:
        paths[model, mode] = folder / f"{model}_{mode}.mlir"
        invoke("compile", os.path.join(EXAMPLES, f"{model}.py"), "-o", paths[model, mode], "--mode", mode)
    for name, flags in TRAIN.items():
        paths[name] = folder / f"train_{name}.mlir"
        invoke("compile", os.path.join(EXAMPLES, "mlp.py"), "--train", "-o", paths[name], *flags)
    paths["diverges"] = folder / "train_diverges.mlir"
    invoke("compile", os.path.join(EXAMPLES, "mlp.py"), "--train", "-o", paths["diverges"], "--optimizer", "sgd:lr=1e30")
    return paths


def load(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def losses(path) -> list[float]:
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f]


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_two_processes_equal_one_in_every_mode_and_train_alike(modules, tmp_path):
    rng = np.random.default_rng(7)
    mlp_inputs = {"x": rng.standard_normal((64, 32)).astype(np.float32),
                  "labels": rng.integers(0, 16, 64).astype(np.int32),
                  "params/fc1/kernel": rng.standard_normal((32, 128)).astype(np.float32) / 6,
                  "params/fc1/bias": rng.standard_normal(128).astype(np.float32),
                  "params/fc2/kernel": rng.standard_normal((128, 16)).astype(np.float32) / 11,
                  "params/fc2/bias": rng.standard_normal(16).astype(np.float32)}
    np.savez(tmp_path / "mlp_in.npz", **mlp_inputs)

    def forward_args(model, mode, where):
        extra = ["--inputs", str(tmp_path / "mlp_in.npz")] if model == "mlp" else []
        check = ["--check"] if where == "two" else []  # (the single-process --check is tested elsewhere)
        return ["run", str(modules[model, mode]), "--repeat", "1", "--seed", "5",
                "--outputs", str(tmp_path / f"{where}_{model}_{mode}.npz"), *check, *extra]

    def train_args(name, where):
        return ["run", str(modules[name]), "--steps", str(STEPS), "--seed", "2",
                "--log", str(tmp_path / f"{where}_{name}.jsonl"), "--outputs", str(tmp_path / f"{where}_{name}.npz")]

    runs = [forward_args(model, mode, "two") for model, mode in FORWARD] + [train_args(n, "two") for n in TRAIN]
    # a loss that turns NaN at step 2 stops every process there, with the same line
    diverge = ["run", str(modules["diverges"]), "--steps", "4", "--log", str(tmp_path / "nan.jsonl")]
    job = start(2, 4, [(0, args) for args in runs] + [(1, diverge)])
    try:  # the single-process runs meanwhile, here (a core is often idle while the job's processes wait)
        for model, mode in FORWARD:
            invoke(*forward_args(model, mode, "one"))
        for name in TRAIN:
            invoke(*train_args(name, "one"))
    finally:
        (rc0, out0, err0), (rc1, out1, err1) = finish(job)
    assert rc0 == 0 and rc1 == 0, (rc0, err0[-2000:], rc1, err1[-2000:])
    nan_line = "error: the loss is nan after step 2; stopping (no checkpoint was saved (no --save))\n"
    assert out1 == "" and err1 == nan_line, (out1, err1)  # process 1 prints nothing but errors
    assert "[Gloo]" not in out0 and err0 == nan_line, (out0, err0)
    assert [json.loads(line)["step"] for line in open(tmp_path / "nan.jsonl")] == [1, 2]
    assert out0.count("check: passed") == len(FORWARD) and "FAILED" not in out0
    assert out0.count("8 cpu device(s) in 2 processes, mesh rows:2,cols:4") == len(runs) + 1
    assert "barrier: process 0: the other processes did not reach barrier 'alone' within 1 s\n" in out0
    for model, mode in FORWARD:
        one, two = load(tmp_path / f"one_{model}_{mode}.npz"), load(tmp_path / f"two_{model}_{mode}.npz")
        assert set(one) == set(two)
        for key in one:
            assert_close(two[key], one[key])
    # and against NumPy: the mlp from its given inputs and parameters
    p = mlp_inputs
    y = gelu(p["x"].astype(np.float64) @ p["params/fc1/kernel"] + p["params/fc1/bias"]) @ p["params/fc2/kernel"] \
        + p["params/fc2/bias"]
    log_z = np.log(np.exp(y - y.max(1, keepdims=True)).sum(1)) + y.max(1)
    loss = np.mean(log_z - y[np.arange(64), p["labels"]])
    for mode in MODES:
        two = load(tmp_path / f"two_mlp_{mode}.npz")
        assert_close(two["y"], y)
        assert_close(two["loss"], loss)
    for name in TRAIN:
        one, two = losses(tmp_path / f"one_{name}.jsonl"), losses(tmp_path / f"two_{name}.jsonl")
        assert len(one) == len(two) == STEPS
        assert_close(two, one)
        assert len(set(one)) == STEPS  # the steps train: each loss differs
        state_one, state_two = load(tmp_path / f"one_{name}.npz"), load(tmp_path / f"two_{name}.npz")
        assert set(state_one) == set(state_two)
        for key in state_one:
            assert_close(state_two[key], state_one[key])


def test_bad_job_values_are_one_line_errors(modules, tmp_path, monkeypatch):
    module = modules["mlp", "explicit"]
    job = ["--coordinator", "127.0.0.1:1234", "--num-processes", "2"]
    for args, fragments in [
        (["--coordinator", "localhost"], ["--coordinator", "'localhost'", "HOST:PORT"]),
        (["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"], ["port 99999"]),
        (job, ["--coordinator and --num-processes need --process-id"]),
        (["--process-id", "1"], ["--process-id needs --coordinator and --num-processes"]),
        (job[:2] + ["--num-processes", "0", "--process-id", "0"], ["--num-processes 0 must be >= 1"]),
        (job + ["--process-id", "2"], ["--process-id 2 is outside 0-1"]),
        (job + ["--process-id", "-1"], ["--process-id -1 must be >= 0"]),
        (["--local-devices", "0"], ["--local-devices 0 must be >= 1"]),
        (["--local-devices", "4"], ["the mesh has 8 device(s), but 1 process(es) x 4 local device(s) give 4"]),
        (job + ["--process-id", "1", "--local-devices", "3"], ["2 process(es) x 3 local device(s) give 6"]),
        (["--heartbeat-timeout", "-5"], ["--heartbeat-timeout -5 must be >= 1"]),
        (["--initialization-timeout", "0"], ["--initialization-timeout 0 must be >= 1"]),
        (["--collective-timeout", "-1"], ["--collective-timeout -1 must be >= 1"]),
    ]:
        fails(["run", module, *args], fragments, folder=tmp_path)
    for env, fragments in [
        ({"MTFC_NUM_PROCESSES": "two"}, ["MTFC_NUM_PROCESSES='two' is not an integer"]),
        ({"MTFC_COORDINATOR": "127.0.0.1:1", "MTFC_NUM_PROCESSES": "2"},
         ["MTFC_COORDINATOR and MTFC_NUM_PROCESSES need MTFC_PROCESS_ID"]),
        ({"MTFC_LOCAL_DEVICES": "-2"}, ["MTFC_LOCAL_DEVICES=-2 must be >= 1"]),
        ({"MTFC_COLLECTIVE_TIMEOUT": "x"}, ["MTFC_COLLECTIVE_TIMEOUT='x' is not an integer"]),
    ]:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            fails(["run", module], fragments, folder=tmp_path)


def test_a_process_that_cannot_reach_the_coordinator_fails_within_the_timeout(modules, tmp_path):
    module = modules["mlp", "explicit"]
    start = time.monotonic()
    line = process_fails(["run", module, "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
                          "--process-id", "1", "--initialization-timeout", "2"],
                         ["process 1: cannot reach the coordinator 127.0.0.1:", "within 2 s"], folder=tmp_path)
    assert time.monotonic() - start < 30, line
    start = time.monotonic()  # process 0 alone: the others never come
    line = process_fails(["run", module, "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
                          "--process-id", "0", "--initialization-timeout", "1"],
                         ["process 0: the job of 2 processes did not assemble at 127.0.0.1:", "within 1 s"],
                         folder=tmp_path)
    assert time.monotonic() - start < 30, line


def test_the_job_comes_from_flags_else_environment_else_a_detected_cluster(monkeypatch):
    from mtfc.runtime.distributed import JobFlags, resolve_job

    for key in [k for k in os.environ if k.startswith(("MTFC_", "SLURM_", "OMPI_"))]:
        monkeypatch.delenv(key)
    assert not resolve_job().is_multi_process
    slurm = {"SLURM_JOB_ID": "1234", "SLURM_STEP_NODELIST": "node[07-08]", "SLURM_NTASKS": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert not resolve_job().is_multi_process  # a SLURM job of one task is one process
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    job = resolve_job()
    # jax's own rule: the first node, port 61440 + job id mod 4096
    assert (job.process_id, job.num_processes, job.coordinator, job.source) == (1, 2, "node07:62674", "slurm")
    monkeypatch.setenv("MTFC_COORDINATOR", "10.0.0.1:5000")
    monkeypatch.setenv("MTFC_NUM_PROCESSES", "4")
    monkeypatch.setenv("MTFC_PROCESS_ID", "3")
    monkeypatch.setenv("MTFC_HEARTBEAT_TIMEOUT", "12")
    job = resolve_job()
    assert (job.process_id, job.num_processes, job.coordinator, job.source) == (3, 4, "10.0.0.1:5000", "environment")
    assert (job.timeouts.initialization, job.timeouts.heartbeat, job.timeouts.collective) == (60, 12, 30)
    job = resolve_job(JobFlags("127.0.0.1:6000", 2, 0, heartbeat_timeout=5))
    assert (job.process_id, job.num_processes, job.coordinator, job.source) == (0, 2, "127.0.0.1:6000", "flags")
    assert job.timeouts.heartbeat == 5


# A process of a job whose process 0 is slow at what it does alone: building
# the unsharded reference of `--check` takes 6 s more, twice the job's
# collective timeout.
SLOW_PRIMARY_DRIVER = """
import time
import mtfc.runtime.forward, mtfc.runtime.train
from mtfc.runtime.execute import Program
class SlowReference(Program):
    def __init__(self, *args, unsharded=False, **kwargs):
        if unsharded:
            time.sleep(6)
        super().__init__(*args, unsharded=unsharded, **kwargs)
mtfc.runtime.forward.Program = mtfc.runtime.train.Program = SlowReference
""" + DRIVER


def test_the_others_wait_for_process_0s_own_work_beyond_the_collective_timeout(modules, tmp_path):
    """Process 0 alone runs the unsharded reference of `--check` (and writes
    the outputs); the other processes wait for it at a barrier of the
    coordination service, not inside a collective, so a check that takes
    longer than the collective timeout (here 6 s against 3 s) passes in
    forward and train runs alike, and the job ends with status 0."""
    runs = [["run", str(modules["mlp", "explicit"]), "--repeat", "1", "--check"],
            ["run", str(modules["data"]), "--steps", "2", "--check"]]
    procs = start(2, 4, [(0, args) for args in runs], extra_env={"MTFC_COLLECTIVE_TIMEOUT": "3"},
                  driver=SLOW_PRIMARY_DRIVER)
    (rc0, out0, err0), (rc1, out1, err1) = finish(procs)
    assert rc0 == 0 and rc1 == 0, (rc0, err0[-2000:], rc1, err1[-2000:])
    assert out0.count("check: passed") == 2 and "FAILED" not in out0, out0
    assert "trained steps 1-2" in out0 and out1 == ""
