"""Collective checkpoints across processes (loopback, 2 processes x 4 CPU devices).

A checkpoint saved by 2 processes restores in 1 (8 devices), and one saved
by 1 restores in 2, on another layout too: every shard each restoring
process holds equals the NumPy reference bit for bit (bf16 included).  A
process lost during a save makes the other fail with one line within the
checkpoint timeout, and the previous checkpoint stays as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from corpus import tree
from test_multiprocess import finish, free_port

WORKER = os.path.join(os.path.dirname(__file__), "checkpoint_worker.py")


def job(mode, path, layout, processes, *, env=None, timeout=120):
    """Run `processes` workers; return [(exit status, stdout, stderr)] in process order."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]),
        **(env or {})}
    procs = [subprocess.Popen([sys.executable, WORKER, mode, str(path), layout, str(port), str(processes), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
             for i in range(processes)]
    return finish(procs, timeout=timeout)


def assert_ok(results, processes_saved=None):
    for i, (code, out, err) in enumerate(results):
        assert code == 0 and out.strip().endswith("ok"), (i, code, out, err[-3000:])
        if processes_saved is not None:
            assert f"processes {processes_saved}" in out, out


@pytest.mark.parametrize("saved_by, restored_by, save_layout, restore_layout", [
    (2, 1, "rows_cols", "rows_cols"),
    (1, 2, "tensor", "rows"),
])
def test_save_in_some_processes_restore_in_others(tmp_path, saved_by, restored_by, save_layout, restore_layout):
    ck = tmp_path / "ck"
    assert_ok(job("save", ck, save_layout, saved_by))
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no lock, no temporary left
    stores = sorted(n for n in os.listdir(ck / "state") if n.startswith("ocdbt.process_"))
    assert stores == [f"ocdbt.process_{i}" for i in range(saved_by)]  # each process wrote its own shards
    assert_ok(job("restore", ck, restore_layout, restored_by), processes_saved=saved_by)


def test_a_process_lost_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    assert_ok(job("save", ck, "rows_cols", 1))
    before = tree(tmp_path)
    start = time.time()
    results = job("die", ck, "tensor", 2, env={"MTFC_CHECKPOINT_TIMEOUT": "4"})
    assert results[1][0] == 9
    code, out, err = results[0]
    assert code == 1, (code, out, err[-3000:])
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines == [f"error: {ck}: process 1 did not check its blocks within 4 s "
                     "(MTFC_CHECKPOINT_TIMEOUT); the previous checkpoint is kept"], (out, err[-2000:])
    assert time.time() - start < 60
    assert tree(tmp_path) == before  # the previous checkpoint, byte for byte; no lock or temporary left
    assert_ok(job("restore", ck, "rows_cols", 1))


def test_training_resumes_bit_for_bit_across_process_counts(tmp_path):
    """`mtfc run --save/--restore` end to end, 2 processes x 4 devices and 1 x 8
    (the mlp's FSDP train step), in one launch: a checkpoint saved by 2
    processes restores in 1 with every bit, one saved by 1 restores in 2 with
    every bit (restore, --steps 0, save), and 1 process training on from the
    checkpoint the 2 processes wrote equals the uninterrupted run, bit for bit."""
    from test_cli import invoke
    from test_multiprocess import EXAMPLES, TRAIN, finish, losses, start

    from mtfc.runtime import checkpoint

    module = tmp_path / "train.mlir"
    invoke("compile", os.path.join(EXAMPLES, "mlp.py"), "--train", "-o", module, *TRAIN["fsdp"])
    invoke("run", module, "--steps", 3, "--save", tmp_path / "ck1")
    job = finish(start(2, 4, [(0, ["run", str(module), "--steps", "3", "--save", str(tmp_path / "ck2")]),
                              (0, ["run", str(module), "--steps", "0", "--restore", str(tmp_path / "ck1"),
                                   "--save", str(tmp_path / "moved2")])]))
    assert all(code == 0 for code, _, _ in job), [
        (code, out[-1500:], "\n".join(line for line in err.splitlines() if not line.lstrip().startswith("@"))[-3000:])
        for code, out, err in job]
    assert "restored step 3 from" in job[0][1]
    invoke("run", module, "--steps", 0, "--restore", tmp_path / "ck2", "--save", tmp_path / "moved1")
    invoke("run", module, "--steps", 3, "--restore", tmp_path / "moved2", "--save", tmp_path / "resumed1",
           "--log", tmp_path / "resumed1.jsonl")
    invoke("run", module, "--steps", 6, "--save", tmp_path / "full1", "--log", tmp_path / "full1.jsonl")

    def same(a, b):
        (ia, va), (ib, vb) = checkpoint.read_all(tmp_path / a), checkpoint.read_all(tmp_path / b)
        assert ia["step"] == ib["step"] and set(va) == set(vb)
        for name in va:
            assert va[name].dtype == vb[name].dtype and va[name].tobytes() == vb[name].tobytes(), (a, b, name)
        return ia["processes"], ib["processes"]

    assert same("ck2", "moved1") == (2, 1)
    assert same("ck1", "moved2") == (1, 2)
    assert same("full1", "resumed1") == (1, 1)
    assert losses(tmp_path / "resumed1.jsonl") == losses(tmp_path / "full1.jsonl")[3:]
