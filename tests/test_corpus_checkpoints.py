"""The fault corpus for checkpoints (tests/corpus.py's contract).

A corrupt or hand-edited checkpoint (a flipped bit or a changed value in
the orbax store, an array stored with another dtype, a damaged store, a
broken or inconsistent index), a second run saving into the same
directory at the same time, and a full disk: each ends with one error line,
exit status 1, and leaves the previous checkpoint (and everything else)
byte for byte as it was.  Restoring with another data source warns; saved
files get the user's umask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from corpus import fails, process_fails
from mtfc.cli import main
from mtfc.compiler import compile_file
from mtfc.emit.artifact import write_module
from mtfc.runtime import checkpoint

MODEL = '''
import mtfc as mtf
batch = mtf.Dim("batch", 4)
d = mtf.Dim("d", 8)
h = mtf.Dim("h", {hidden})


@mtf.entry(inputs={{"x": mtf.Input([batch, d])}}, mesh="rows:2,cols:2", layout="batch:rows,h:cols",
           optimizer="adamw:lr=0.01")
def model(x):
    y = mtf.layers.dense(x, h, name="fc")
    return {{"loss": mtf.reduce_mean(mtf.square(y))}}
'''


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """"small": a train step with a few KiB of state; "large": one with ~0.5 MiB."""
    folder = tmp_path_factory.mktemp("ckpt_modules")
    out = {}
    for name, hidden in (("small", 16), ("large", 8192)):
        (folder / f"{name}.py").write_text(MODEL.format(hidden=hidden))
        path = folder / f"{name}.mlir"
        write_module(compile_file(str(folder / f"{name}.py"), mode="explicit", train=True), str(path))
        out[name] = str(path)
    return out


def run_ok(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def saved(modules, tmp_path):
    """tmp_path/ck: a checkpoint of step 2."""
    run_ok("run", modules["small"], "--steps", 2, "--save", tmp_path / "ck")
    return tmp_path / "ck"


def _index(ck):
    return json.loads((ck / "index.json").read_text())


def _write_index(ck, index):
    (ck / "index.json").write_text(json.dumps(index))


def _kernel(index):
    return next(a for a in index["arrays"] if a["name"] == "params/fc/kernel")


def _resume(modules, ck, folder, fragments, *, steps=1):
    """Restore `ck` and save back into it: must fail, leaving everything as it was."""
    return fails(["run", modules["small"], "--restore", ck, "--steps", steps, "--save", ck], fragments,
                 folder=folder)


# -- corrupt arrays --------------------------------------------------------------------------------


def _state_file(ck, pattern):
    """The largest file of the orbax store matching `pattern` (a glob under state/)."""
    files = [f for f in (ck / "state").glob(pattern) if f.is_file()]
    assert files, pattern
    return max(files, key=lambda f: f.stat().st_size)


def _flip(file, at):
    data = bytearray(file.read_bytes())
    data[at % len(data)] ^= 0x10
    file.write_bytes(bytes(data))


def test_a_value_changed_in_the_stored_array(modules, saved, tmp_path):
    """The store still decodes, but holds other values: the digest of the block says so."""
    import tensorstore as ts

    store = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{saved / 'state'}",
                                                   "path": "params.fc.kernel/"}}, open=True).result()
    store[0, 12].write(store[0, 12].read().result() + 1).result()
    _resume(modules, saved, tmp_path, [f"checkpoint '{saved}': array 'params/fc/kernel', block [[0, 8], [8, 16]] "
                                       "is corrupt (its sha256 differs from the index's)"])


def test_a_flipped_bit_in_the_store(modules, saved, tmp_path):
    """A bit flipped in the store's data file (its checksummed b-tree, which holds small arrays inline)."""
    _flip(_state_file(saved, "d/*"), 40)
    _resume(modules, saved, tmp_path, [f"cannot read checkpoint '{saved}'", "DATA_LOSS"])


def test_a_flipped_bit_in_a_large_arrays_data(modules, tmp_path):
    """The large module's arrays lie outside the b-tree, zstd-compressed: a flipped
    bit there is caught by the digest (or by zstd), never read silently."""
    ck = tmp_path / "ck"
    run_ok("run", modules["large"], "--steps", 1, "--save", ck)
    _flip(_state_file(ck, "ocdbt.process_0/d/*"), 1 << 16)
    line = fails(["run", modules["large"], "--restore", ck, "--steps", 1, "--save", ck], [f"'{ck}'"],
                 folder=tmp_path)
    assert "is corrupt (its sha256 differs from the index's)" in line or "cannot read checkpoint" in line, line


def test_an_array_stored_with_another_dtype(modules, saved, tmp_path):
    """state/ holds the kernel as float64 where index.json says f32: an error, no conversion."""
    from mtfc.runtime.checkpoint import store

    _, values = checkpoint.read_all(saved)
    import shutil

    import jax

    shutil.rmtree(saved / "state")
    arrays = {tuple(name.split("/")): jax.device_put(v.astype(np.float64) if name == "params/fc/kernel" else v)
              for name, v in values.items()}
    jax.config.update("jax_enable_x64", True)
    try:
        arrays[("params", "fc", "kernel")] = jax.device_put(values["params/fc/kernel"].astype(np.float64))
        store.write(str(saved / "state"), arrays, 60)
    finally:
        jax.config.update("jax_enable_x64", False)
    _resume(modules, saved, tmp_path, [f"checkpoint '{saved}': array 'params/fc/kernel' is stored as float64 [8, 16], "
                                       "index.json says f32 [8, 16]"])


def test_an_index_whose_dtype_differs_from_the_module(modules, saved, tmp_path):
    index = _index(saved)
    _kernel(index)["dtype"] = "f16"
    _write_index(saved, index)
    _resume(modules, saved, tmp_path, ["'params/fc/kernel' is f16 in the checkpoint, f32 in the module"])


@pytest.mark.parametrize("case, damage, fragment", [
    ("no state", lambda ck: __import__("shutil").rmtree(ck / "state"), "the checkpoint has no state/ directory"),
    ("no orbax metadata", lambda ck: (ck / "state" / "_METADATA").unlink(), "_METADATA"),
    ("a truncated manifest", lambda ck: os.truncate(ck / "state" / "manifest.ocdbt", 20), "DATA_LOSS"),
])
def test_a_damaged_store(modules, saved, tmp_path, case, damage, fragment):
    damage(saved)
    _resume(modules, saved, tmp_path, [f"'{saved}'", fragment])


# -- broken indexes --------------------------------------------------------------------------------


def _edit(change):
    def edit(index):
        change(index)
        return index
    return edit


INDEX_EDITS = {
    "negative step": (_edit(lambda i: i.update(step=-1)), "'step' is -1, not a number of steps"),
    "step as text": (_edit(lambda i: i.update(step="2")), "'step' is \"2\", not a number of steps"),
    "no step": (_edit(lambda i: i.pop("step")), "index.json has no 'step'"),
    "no arrays": (_edit(lambda i: i.pop("arrays")), "index.json has no list of 'arrays'"),
    "no shape": (_edit(lambda i: _kernel(i).pop("shape")), "array #"),
    "shape as text": (_edit(lambda i: _kernel(i).update(shape="8x16")), "'shape' is \"8x16\", not a list"),
    "unknown dtype": (_edit(lambda i: _kernel(i).update(dtype="f64")), "array 'params/fc/kernel': unknown dtype 'f64'"),
    "slices outside": (_edit(lambda i: _kernel(i)["shards"][0].update(slices=[[0, 9], [0, 8]])),
                       "has slices [[0, 9], [0, 8]], outside the array's shape [8, 16]"),
    "overlapping shards": (_edit(lambda i: _kernel(i)["shards"][1].update(slices=[[0, 8], [4, 12]])),
                           "overlap"),
    "missing shard": (_edit(lambda i: _kernel(i)["shards"].pop()), "its shards cover 64 of its 128 values"),
    "shard without slices": (_edit(lambda i: _kernel(i)["shards"][0].pop("slices")), "shard #0 has no 'slices'"),
    "a name orbax cannot hold": (_edit(lambda i: _kernel(i).update(name="params/fc")),
                                 "array name 'params/fc' is a prefix of 'params/fc/bias'"),
    "no digest": (_edit(lambda i: _kernel(i)["shards"][0].pop("sha256")), "has no sha256 digest"),
    "mesh as a number": (_edit(lambda i: i.update(mesh=4)), "'mesh' is 4, of the wrong type"),
}


@pytest.mark.parametrize("case", sorted(INDEX_EDITS))
def test_a_broken_index(modules, saved, tmp_path, case):
    edit, fragment = INDEX_EDITS[case]
    _write_index(saved, edit(_index(saved)))
    _resume(modules, saved, tmp_path, [f"{saved}: index.json", fragment])


def test_index_that_is_not_json(modules, saved, tmp_path):
    text = (saved / "index.json").read_text()
    (saved / "index.json").write_text(text[: len(text) // 2])
    _resume(modules, saved, tmp_path, [f"cannot read checkpoint index '{saved / 'index.json'}'"])


# -- concurrent saves ------------------------------------------------------------------------------

HOLDING_SAVER = """
import os, sys, time
from mtfc.runtime import checkpoint
real = checkpoint.save
def save(path, entries, meta, **kw):
    def hold(tmp):  # everything written, lock held: wait for the test's go
        open("ready", "w").close()
        deadline = time.time() + 120
        while not os.path.exists("go") and time.time() < deadline:
            time.sleep(0.05)
    real(path, entries, meta, _before_commit=hold)
checkpoint.save = save
from mtfc.cli import main
sys.argv = ["mtfc", "run", MODULE, "--steps", "3", "--save", "ck"]
main()
"""


def test_a_second_run_saving_into_the_same_directory(modules, saved, tmp_path):
    """Run A is in the middle of saving into ck (its temporary written, not yet
    swapped in) when run B saves there too: B fails with one line naming A,
    and takes nothing of A's; then A completes, and ck is A's checkpoint."""
    script = f"MODULE = {modules['small']!r}\n" + textwrap.dedent(HOLDING_SAVER)
    env = {k: v for k, v in os.environ.items() if k != "MTFC_TRACEBACK"}
    a = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "ready").exists():
            assert a.poll() is None and time.time() < deadline, a.communicate()
            time.sleep(0.05)
        assert any(n.startswith(".ck.tmp-") for n in os.listdir(tmp_path))  # A's live temporary
        process_fails(["run", modules["small"], "--steps", 1, "--save", "ck"],
                      [f"error: ck: another mtfc run (pid {a.pid}) is saving here"], folder=tmp_path)
        (tmp_path / "go").touch()
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 0, err
    assert checkpoint.load_index(saved)["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["ck", "go", "ready"]  # no lock file, no temporary left
    run_ok("run", modules["small"], "--restore", saved, "--steps", 1)


def test_a_temporary_of_a_dead_saver_is_removed_a_live_ones_kept(modules, saved, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = checkpoint.swap.owner_tag().split("-")[0]
    (tmp_path / f".ck.tmp-{host}-{int(dead.stdout)}-abc").mkdir()
    live = tmp_path / f".ck.tmp-{host}-1-abc"  # pid 1 is alive
    live.mkdir()
    run_ok("run", modules["small"], "--restore", saved, "--steps", 1, "--save", saved)
    assert sorted(os.listdir(tmp_path)) == sorted(["ck", live.name])


# -- a full disk -----------------------------------------------------------------------------------


def _used_bytes(folder) -> int:
    """The tmpfs pages the files under `folder` take."""
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(-(-os.path.getsize(os.path.join(root, f)) // 4096) * 4096 for f in files)
    return total


@pytest.fixture
def small_disk(modules, tmp_path, monkeypatch):
    """A directory that holds one checkpoint of the "large" module but not two:
    a size-limited tmpfs where mounting is allowed (root), else a directory
    whose shard writer fails with ENOSPC once one checkpoint's worth is written."""
    run_ok("run", modules["large"], "--steps", 1, "--save", tmp_path / "probe")  # as full as the saves below
    one = _used_bytes(tmp_path / "probe")
    disk = tmp_path / "disk"
    disk.mkdir()
    size = one + one // 2
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    if not mounted:  # orbax's writes fail with tensorstore's ENOSPC once the disk would be over `size`
        real = checkpoint.store.write

        def limited(state, arrays, timeout):
            real(state, arrays, timeout)
            if _used_bytes(disk) > size:
                raise ValueError(f'RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file "{state}": '
                                 "No space left on device [os_error_code='28']")

        monkeypatch.setattr(checkpoint.store, "write", limited)
    try:
        yield disk
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_a_save_that_runs_out_of_space(modules, small_disk):
    ck = small_disk / "ck"
    run_ok("run", modules["large"], "--steps", 1, "--save", ck)
    # a real process where the disk is real (orbax's threads report the failure too: kept off stderr)
    check = process_fails if os.path.ismount(small_disk) else fails
    check(["run", modules["large"], "--restore", ck, "--steps", 1, "--save", ck],
          [f"error: {ck}: No space left on device"], folder=small_disk)
    assert checkpoint.load_index(ck)["step"] == 1
    assert sorted(os.listdir(small_disk)) == ["ck"]


# -- restore warnings, umask -----------------------------------------------------------------------


def test_restore_with_another_data_source_warns(modules, tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((3, 4, 8), np.float32))
    run_ok("run", modules["small"], "--steps", 1, "--data", tmp_path / "a.npz", "--save", tmp_path / "ck")
    result = CliRunner().invoke(main, ["run", modules["small"], "--restore", str(tmp_path / "ck"), "--steps", "1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"warning: {tmp_path / 'ck'} was trained on {os.path.realpath(tmp_path / 'a.npz')} "
                     "(3 steps); this run reads synthetic batches"]
    # the same file again (by another path): no warning
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(main, ["run", modules["small"], "--restore", "ck", "--steps", "1",
                                           "--data", "a.npz"])
    finally:
        os.chdir("/")
    assert result.exit_code == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_get_the_users_umask(modules, tmp_path, umask):
    old = os.umask(umask)
    try:
        run_ok("run", modules["small"], "--steps", 1, "--save", tmp_path / "ck")
    finally:
        os.umask(old)
    ck = tmp_path / "ck"
    assert os.stat(ck).st_mode & 0o777 == 0o777 & ~umask
    for root, dirs, files in os.walk(ck):  # orbax's files and directories too
        for name in dirs:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == 0o777 & ~umask, name
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == 0o666 & ~umask, name


# -- checkpoints of earlier mtfc versions (index version 2: .npy shards) --------------------------


def _as_version_2(ck, folder):
    """Rewrite the checkpoint `ck` in mtfc's version 2 format (as mtfc 0.1 wrote it) at `folder`."""
    import hashlib

    index, values = checkpoint.read_all(ck)
    folder.mkdir()
    arrays = []
    for k, a in enumerate(index["arrays"]):
        shards = []
        for j, s in enumerate(a["shards"]):
            block = values[a["name"]][tuple(slice(lo, hi) for lo, hi in s["slices"])]
            stored = np.array(block.view(np.uint16) if a["dtype"] == "bf16" else block, order="C")
            name = f"{k:04d}-{a['name'].replace('/', '.')}.{j}.npy"
            np.save(folder / name, stored)
            shards.append({"file": name, "slices": s["slices"], "devices": s["devices"],
                           "sha256": hashlib.sha256(stored.tobytes()).hexdigest()})
        arrays.append({key: a[key] for key in ("name", "role", "dims", "shape", "dtype", "layout")} | {"shards": shards})
    meta = {key: v for key, v in index.items() if key not in ("format", "version", "processes", "arrays", "_dir")}
    _write_index(folder, {"format": "mtfc.checkpoint", "version": 2, **meta, "arrays": arrays})
    return values


def test_a_version_2_checkpoint_is_still_read(modules, saved, tmp_path):
    values = _as_version_2(saved, tmp_path / "old")
    out = run_ok("run", modules["small"], "--restore", tmp_path / "old", "--steps", 0, "--save", tmp_path / "new")
    assert f"restored step 2 from {tmp_path / 'old'}" in out
    index, moved = checkpoint.read_all(tmp_path / "new")
    assert index["version"] == 3 and set(moved) == set(values)
    for name, value in values.items():
        assert moved[name].dtype == value.dtype and moved[name].tobytes() == value.tobytes(), name


def test_a_flipped_bit_in_a_version_2_shard(modules, saved, tmp_path):
    _as_version_2(saved, tmp_path / "old")
    shard = tmp_path / "old" / _kernel(_index(tmp_path / "old"))["shards"][1]["file"]
    _flip(shard, -3)  # in the data, past the header
    _resume(modules, tmp_path / "old", tmp_path, [f"checkpoint shard '{shard}' of array 'params/fc/kernel' is corrupt",
                                                  "sha256"])


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf"])
def test_a_bad_checkpoint_timeout_fails_before_training(modules, tmp_path, monkeypatch, value):
    monkeypatch.setenv("MTFC_CHECKPOINT_TIMEOUT", value)
    fails(["run", modules["small"], "--steps", 1, "--save", tmp_path / "ck"],
          [f"error: MTFC_CHECKPOINT_TIMEOUT={value!r} is not a number of seconds > 0"], folder=tmp_path)
