"""Host sources (`mtfc.runtime.sources`): every kind gives, for any block, the
block of the one global array it stands for -- so each process can build and
read only the blocks of its own devices.

* blocks of every source, cut by mtfc layouts over several meshes (and by
  ranges that follow no layout), reassemble exactly to the whole array;
* synthesized blocks equal the whole synthesized array bit for bit, for every
  initializer kind and dtype, and the whole follows the documented key
  scheme (one generator per tile, keyed by seed, step, name and the tile);
* ``.npy`` and stored ``.npz`` members are memory-mapped and a block reads
  only its rows (the bytes it materializes, measured with tracemalloc);
* token-stream batches equal the windows the loop documents;
* a data file that is bad only in rows a process never reads still fails
  when it is opened (values are checked up front, whole, in every process).
"""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.index_ranges import IndexRange
from mtfc.mesh import LayoutRules, Mesh, tensor_layout
from mtfc.runtime import synthetic
from mtfc.runtime.data import NpzBatches, TokenBatches
from mtfc.runtime.file_sources import FileSource, TokenWindowSource, open_npy, open_npz
from mtfc.runtime.sources import ArraySource, as_source, materialize
from mtfc.runtime.synthetic import SyntheticSource, synthesize, tile_shape

# (mesh, layout rules): a 2-D mesh with both dims split, one dim split over two
# axes, the other dim split, and nothing split (replicated on every device).
LAYOUTS = [("rows:2,cols:2", "a:rows,b:cols"), ("rows:2,cols:2", "a:rows+cols"),
           ("x:4", "b:x"), ("x:2,y:3", "a:y"), ("x:2", "")]


def layout_blocks(dims, shape):
    """Every device's block under each of `LAYOUTS` that fits `shape` (at least
    three), as global index ranges."""
    used = 0
    for mesh_text, rules_text in LAYOUTS:
        try:
            layout = tensor_layout(dims, shape, LayoutRules.parse(rules_text), Mesh.parse(mesh_text))
        except MtfcError:  # a dim not divisible by its axes
            continue
        used += 1
        yield [layout.shard_slices(d) for d in range(layout.mesh.size)]
    assert used >= 3, (dims, shape)


def odd_blocks(shape, count=6, seed=0):
    """Ranges that follow no layout (uneven, empty, single elements)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        block = []
        for n in shape:
            lo, hi = sorted(int(v) for v in rng.integers(0, n + 1, 2))
            block.append(slice(lo, hi))
        yield tuple(block)
    yield tuple(slice(0, 0) for _ in shape)
    yield tuple(slice(n - 1, n) for n in shape)


def assert_blocks_reassemble(source, whole):
    """Each layout's device blocks, written into an empty array, rebuild `whole`
    exactly (replicas too), and odd blocks equal the same range of `whole`."""
    assert tuple(source.shape) == whole.shape and np.dtype(source.dtype) == whole.dtype
    dims = [f"d{i}" for i in range(len(whole.shape))]
    dims[:2] = ["a", "b"][:len(dims)]
    for blocks in layout_blocks(dims, whole.shape):
        rebuilt = np.zeros_like(whole)
        for index in blocks:
            block = source.block(index)
            assert block.flags.c_contiguous and block.dtype == whole.dtype
            np.testing.assert_array_equal(block, whole[index], strict=True)
            rebuilt[index] = block
        np.testing.assert_array_equal(rebuilt, whole, strict=True)
    for index in odd_blocks(whole.shape):
        np.testing.assert_array_equal(source.block(index), whole[index], strict=True)


def sig(shape, dtype="f32", init="normal:1.0", name="w"):
    return mir.Signature(0, name, "parameter", [f"d{i}" for i in range(len(shape))], tuple(shape), dtype, init)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of at most 24 values, so small arrays span many tiles."""
    monkeypatch.setattr(synthetic, "TILE_ELEMENTS", 24)


# -- arrays held whole ------------------------------------------------------------------------

def test_array_source_blocks():
    whole = np.arange(8 * 6, dtype=np.int32).reshape(8, 6)
    assert_blocks_reassemble(ArraySource(whole), whole)
    assert as_source(whole).block((slice(0, 8), slice(0, 6))) is not whole  # a copy
    scalar = ArraySource(np.float32(3.5))
    assert scalar.block(()).shape == () and materialize(scalar) == np.float32(3.5)


def test_a_block_outside_the_array_is_refused():
    source = SyntheticSource(sig((4, 4)), 0)
    for bad in [(slice(0, 5), slice(0, 4)), (slice(0, 4),), (slice(2, 1), slice(0, 4)), (slice(0, 4, 2), slice(0, 4))]:
        with pytest.raises(ValueError, match="block index"):
            source.block(bad)


class CountingSource(ArraySource):
    """An array source that records the blocks asked of it."""

    def __init__(self, array):
        super().__init__(array)
        self.asked = []

    def block(self, index):
        self.asked.append(tuple((s.start, s.stop) for s in index))
        return super().block(index)


def test_feeding_asks_each_distinct_block_once():
    """Replicas share one read (a replicated parameter is synthesized once),
    every device gets its block, and the global array is the whole."""
    import jax

    from mtfc.runtime.host_data import shard_to_devices

    whole = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    layout = tensor_layout(["a", "b"], whole.shape, LayoutRules.parse("a:rows"), Mesh.parse("rows:2,cols:4"))
    devices = jax.devices("cpu")[:8]
    source = CountingSource(whole)
    array = shard_to_devices(source, layout, devices)
    assert sorted(source.asked) == [((0, 4), (0, 4)), ((4, 8), (0, 4))]
    for shard in array.addressable_shards:
        d = devices.index(shard.device)
        np.testing.assert_array_equal(np.asarray(shard.data), whole[layout.shard_slices(d)])
    np.testing.assert_array_equal(np.asarray(array), whole)
    np.testing.assert_array_equal(np.asarray(shard_to_devices(SyntheticSource(sig((8, 4)), 1), layout, devices)),
                                  synthesize(sig((8, 4)), 1))


def test_the_rows_a_process_reads():
    """docs/runtime.md, "Data": on a process-major mesh, process p's devices
    p*K ... p*K+K-1 hold a contiguous share of the batch when its dim spans
    the processes, and all of it when it is laid inside a process."""
    def rows(mesh, rules, processes):
        layout = tensor_layout(["batch", "d"], (16, 4), LayoutRules.parse(rules), Mesh.parse(mesh))
        per = layout.mesh.size // processes
        out = []
        for p in range(processes):
            held = {r for d in range(p * per, (p + 1) * per) for r in range(*layout.shard_slices(d)[0].indices(16))}
            out.append((min(held), max(held) + 1, len(held)))
        return out

    assert rows("data:8", "batch:data", 2) == [(0, 8, 8), (8, 16, 8)]
    assert rows("data:2,model:4", "batch:data", 2) == [(0, 8, 8), (8, 16, 8)]
    assert rows("data:2,model:4", "batch:model", 2) == [(0, 16, 16), (0, 16, 16)]
    assert rows("data:2,model:4", "", 2) == [(0, 16, 16), (0, 16, 16)]


# -- synthesized ------------------------------------------------------------------------------

KINDS_BY_DTYPE = {
    "f32": ["normal:0.5", "truncated_normal:0.02", "uniform:-1,3", "constant:0.25", "randint:-4,9"],
    "bf16": ["normal:0.5", "truncated_normal:0.02", "uniform:-1,3", "constant:0.25"],
    "f16": ["normal:2.0", "uniform:0,1"],
    "i32": ["randint:-100,100", "constant:7"],
    "ui32": ["randint:0,1000"],
    "i1": ["randint:0,2", "constant:1"],
}


@pytest.mark.parametrize("dtype, init", [(d, k) for d, kinds in KINDS_BY_DTYPE.items() for k in kinds])
def test_synthesized_blocks_equal_the_whole_array(small_tiles, dtype, init):
    s = sig((8, 6, 3), dtype, init)
    source = SyntheticSource(s, seed=5, step=2)
    assert len(list(itertools.product(*[range(-(-n // t)) for n, t in zip(s.shape, source.tile)]))) > 4
    whole = synthesize(s, 5, 2)
    assert whole.dtype == np.dtype(mir.numpy_dtype(dtype)) and whole.shape == (8, 6, 3)
    assert_blocks_reassemble(source, whole)


def reference_synthesis(s, seed, step=None):
    """The documented scheme, written out: the array's tiles in grid order, each
    drawn whole from a generator keyed by sha256("seed[/step]/name") and the tile's number."""
    key = f"{seed}/{s.name}" if step is None else f"{seed}/{step}/{s.name}"
    entropy = int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "little")
    tile = tile_shape(s.shape)
    grid = [-(-n // t) for n, t in zip(s.shape, tile)]
    out = np.empty(s.shape, mir.numpy_dtype(s.dtype))
    for number, coords in enumerate(itertools.product(*map(range, grid))):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(number,))))
        where = tuple(slice(c * t, min((c + 1) * t, n)) for c, t, n in zip(coords, tile, s.shape))
        out[where] = rng.standard_normal(tuple(w.stop - w.start for w in where)) * 0.5
    return out


def test_synthesis_follows_its_key_scheme(small_tiles):
    s = sig((7, 5), "f32", "normal:0.5")
    np.testing.assert_array_equal(synthesize(s, 3), reference_synthesis(s, 3), strict=True)
    np.testing.assert_array_equal(synthesize(s, 3, 4), reference_synthesis(s, 3, 4), strict=True)
    # a different seed, step or name is a different stream
    others = [synthesize(s, 4), synthesize(s, 3, 5), synthesize(sig((7, 5), "f32", "normal:0.5", name="v"), 3)]
    assert all(not np.array_equal(o, synthesize(s, 3)) for o in others)


def test_synthesized_values_follow_their_initializer():
    """Statistics over many tiles (default tile size): the scaling is the
    initializer's, for the whole array, whatever the block."""
    big = sig((1024, 512), "f32", "normal:0.02")
    values = synthesize(big, 0)
    assert len(range(0, 1024, SyntheticSource(big, 0).tile[0])) > 1
    assert abs(values.std() - 0.02) < 0.0002 and abs(values.mean()) < 0.0002
    block = SyntheticSource(big, 0).block((slice(0, 8), slice(100, 164)))
    assert abs(block.std() - 0.02) < 0.003  # the block is scaled as the whole, not by its own shape
    truncated = synthesize(sig((256, 256), "f32", "truncated_normal:0.5"), 1)
    assert np.abs(truncated).max() <= 1.0 and (np.abs(truncated) == 1.0).any()
    uniform = synthesize(sig((256, 256), "f32", "uniform:-1,3"), 1)
    assert uniform.min() >= -1 and uniform.max() < 3 and abs(uniform.mean() - 1) < 0.02
    ints = synthesize(sig((256, 256), "i32", "randint:2,9"), 1)
    assert set(np.unique(ints)) == set(range(2, 9))
    assert (synthesize(sig((3, 3), "f32", "constant:0.25"), 1) == 0.25).all()


def test_synthesized_scalars_and_empty_arrays():
    scalar = SyntheticSource(sig((), "f32", "constant:2"), 0)
    assert scalar.block(()).shape == () and scalar.block(()) == 2
    assert synthesize(sig((), "f32"), 0).shape == ()
    assert synthesize(sig((0, 4), "f32"), 0).shape == (0, 4)


def test_tiles_depend_on_the_shape_alone():
    assert tile_shape((4096, 4096)) == (512, 512)
    assert tile_shape((8, 4096, 4096)) == (8, 128, 256)
    assert tile_shape((10,)) == (10,) and tile_shape(()) == ()
    assert tile_shape((7, 5), limit=6) == (2, 3)


# -- files ------------------------------------------------------------------------------------

def test_npy_and_npz_members_are_memory_mapped(tmp_path):
    a = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    f = np.asfortranarray(np.arange(6 * 4, dtype=np.int64).reshape(6, 4))
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "d.npz", a=a, f=f, s=np.float32(2.5))
    np.savez_compressed(tmp_path / "c.npz", a=a)
    assert isinstance(open_npy(str(tmp_path / "a.npy"), "data"), np.memmap)
    arrays = open_npz(str(tmp_path / "d.npz"), "data")
    assert isinstance(arrays["a"], np.memmap) and isinstance(arrays["f"], np.memmap)
    compressed = open_npz(str(tmp_path / "c.npz"), "data")["a"]
    assert not isinstance(compressed, np.memmap)  # compressed members are read whole
    for array, want in [(arrays["a"], a), (arrays["f"], f), (compressed, a)]:
        assert_blocks_reassemble(FileSource(array, want.dtype), want)
    assert FileSource(arrays["s"], np.float32).block(()) == np.float32(2.5)
    # cast to the input's dtype block by block
    assert_blocks_reassemble(FileSource(arrays["f"], np.float32), f.astype(np.float32))


def test_a_block_of_a_file_reads_only_its_rows(tmp_path):
    """A block of a 16 MiB member materializes its own bytes, not the file's."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=a)
    np.save(tmp_path / "x.npy", a)
    for array in (open_npz(str(tmp_path / "d.npz"), "data")["x"], open_npy(str(tmp_path / "x.npy"), "data")):
        source = FileSource(array[512:1024], np.float32)  # a run of examples: a lazy view
        tracemalloc.start()
        try:
            block = source.block((slice(16, 32), slice(0, 2048)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(block, a[528:544])
        assert peak < 4 * block.nbytes, peak  # 128 KiB asked; reading the member would be 16 MiB


def npz_batches(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    sigs = [mir.Signature(i, n, "input", ["a", "b"], (4, 4), "f32") for i, n in enumerate(("x", "y"))]
    return NpzBatches(str(tmp_path / "d.npz"), sigs, seed=0)


def test_npz_batches_are_sources_of_the_documented_rows(tmp_path):
    steps = np.arange(5 * 4 * 4, dtype=np.float64).reshape(5, 4, 4)
    batches = npz_batches(tmp_path, x=steps, y=-steps)
    for step in (0, 3, 7):
        batch = batches.batch(step)
        assert isinstance(batch["x"], FileSource) and isinstance(batch["x"].view, np.memmap)
        assert_blocks_reassemble(batch["x"], steps[step % 5].astype(np.float32))
        assert_blocks_reassemble(batch["y"], -steps[step % 5].astype(np.float32))
    examples = np.arange(10 * 4, dtype=np.int32).reshape(10, 4)
    batches = npz_batches(tmp_path, x=examples)
    assert batches.length == 2 and batches.synthesized == ["y"]
    for step in (0, 1, 2):
        b = step % 2
        assert_blocks_reassemble(batches.batch(step)["x"], examples[b * 4:(b + 1) * 4].astype(np.float32))
        assert isinstance(batches.batch(step)["y"], SyntheticSource)


def old_token_batch(stream, step, n, length, windows, shift):
    """The token loop's batches as the runtime built them before sources."""
    starts = ((step * n + np.arange(n)) % windows) * length
    return np.stack([stream[s + shift:s + shift + length] for s in starts]).astype(np.int32)


def test_token_stream_sources_equal_the_windows(tmp_path):
    stream = (np.arange(500) * 7 % 31).astype(np.int64)
    np.save(tmp_path / "t.npy", stream)
    tok = mir.Signature(0, "tokens", "input", ["a", "b"], (4, 8), "i32")
    tgt = mir.Signature(1, "targets", "input", ["a", "b"], (4, 8), "i32")
    batches = TokenBatches(str(tmp_path / "t.npy"), [tok, tgt], seed=0)
    assert batches.windows == 62
    for step in (0, 1, 15, 16, 40):
        batch = batches.batch(step)
        assert isinstance(batch["tokens"], TokenWindowSource) and isinstance(batch["tokens"].stream, np.memmap)
        for name, shift in (("tokens", 0), ("targets", 1)):
            assert_blocks_reassemble(batch[name], old_token_batch(stream, step, 4, 8, 62, shift))


# -- values checked up front ------------------------------------------------------------------

def test_a_bad_value_in_rows_never_read_fails_at_open(tmp_path):
    """Validation is whole and up front: every process, whichever rows it reads,
    gives the same line before the first step."""
    stream = np.zeros(400, np.int32)
    stream[397] = 99  # in no window of the first steps (nor in any: windows end at 392)
    np.save(tmp_path / "t.npy", stream)
    tok = mir.Signature(0, "tokens", "input", ["batch", "length"], (2, 8), "i32")
    vocab = {"tokens": IndexRange(0, 16, "vocab")}
    with pytest.raises(MtfcError, match=r"t.npy: token id 99 at position 397 is outside \[0, 16\)"):
        TokenBatches(str(tmp_path / "t.npy"), [tok], 0, vocab)
    examples = np.zeros((40, 3), np.int64)
    examples[39, 2] = 2**40
    np.savez(tmp_path / "d.npz", x=examples)
    x = mir.Signature(0, "x", "input", ["batch", "d"], (4, 3), "i32")
    with pytest.raises(MtfcError, match=r"d.npz: array 'x': value 1099511627776 at index \(39, 2\) is outside"):
        NpzBatches(str(tmp_path / "d.npz"), [x], 0)


def test_values_are_checked_in_bounded_chunks(tmp_path, monkeypatch):
    """The up-front check reads a memory map a run of rows at a time and still
    names the first bad value by its global position."""
    from mtfc.runtime import data

    monkeypatch.setattr(data, "_CHUNK", 7)
    examples = np.zeros((50, 3), np.int32)
    examples[31, 1], examples[44, 0] = -1, 20
    np.savez(tmp_path / "d.npz", x=examples)
    x = mir.Signature(0, "x", "input", ["batch", "d"], (4, 3), "i32")
    with pytest.raises(MtfcError, match=r"value -1 at index \(31, 1\) is outside \[0, 16\)"):
        NpzBatches(str(tmp_path / "d.npz"), [x], 0, {"x": IndexRange(0, 16, "vocab")})


def test_unreadable_files_name_themselves(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(MtfcError, match="cannot read data .*bad.npz"):
        open_npz(str(tmp_path / "bad.npz"), "data")
    np.save(tmp_path / "o.npy", np.array([{}], dtype=object), allow_pickle=True)
    with pytest.raises(MtfcError, match="cannot read data .*o.npy"):
        open_npy(str(tmp_path / "o.npy"), "data")
    np.savez(tmp_path / "o.npz", a=np.array([{}], dtype=object))
    with pytest.raises(MtfcError, match="cannot read inputs .*o.npz"):
        open_npz(str(tmp_path / "o.npz"), "inputs")


def test_bf16_members(tmp_path):
    a = np.arange(16, dtype=np.float32).reshape(4, 4).astype(ml_dtypes.bfloat16)
    np.save(tmp_path / "b.npy", a.astype(np.float32))
    source = FileSource(open_npy(str(tmp_path / "b.npy"), "data"), ml_dtypes.bfloat16)
    assert_blocks_reassemble(source, a)
