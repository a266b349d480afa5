"""One process of a checkpoint job (tests/test_checkpoint_multiprocess.py).

    python checkpoint_worker.py save|restore|die DIR LAYOUT PORT NUM_PROCESSES PROCESS_ID

Each process has 8 / NUM_PROCESSES virtual CPU devices; the mesh is
``rows:2,cols:4`` over the global devices in process-major order.  LAYOUT
names how the arrays are split (LAYOUTS).  ``save`` writes the arrays of
`reference` through `mtfc.runtime.checkpoint.save`; ``restore`` reads them
back and checks every shard this process holds against `reference`, bit for
bit; ``die``: process 1 exits before writing, the others must fail with one
line.  Prints ``ok`` (or ``error: ...``) and exits 0 (or 1).
"""

from __future__ import annotations

import os
import sys

MESH = "rows:2,cols:4"
ARRAYS = [  # name, role, dims, shape, dtype
    ("params/w", "parameter", ["d_in", "d_out"], (8, 16), "f32"),
    ("params/b", "parameter", ["d_out"], (16,), "bf16"),
    ("opt/w/m", "optimizer_state", ["d_in", "d_out"], (8, 16), "f32"),
    ("opt/step", "optimizer_state", [], (), "i32"),
]
LAYOUTS = {  # dim -> mesh axes
    "tensor": {"d_out": ("cols",)},
    "rows_cols": {"d_in": ("rows",), "d_out": ("cols",)},
    "rows": {"d_in": ("rows",)},
    "replicated": {},
}


def reference():
    """The arrays, from a fixed seed (plain NumPy: the independent reference)."""
    import ml_dtypes
    import numpy as np

    rng = np.random.default_rng(20260101)
    out = {}
    for name, _, _, shape, dtype in ARRAYS:
        if dtype == "i32":
            out[name] = np.array(rng.integers(0, 1000), dtype=np.int32).reshape(shape)
        else:
            values = rng.standard_normal(shape).astype(np.float32)
            out[name] = values.astype(ml_dtypes.bfloat16) if dtype == "bf16" else values
    return out


def main(argv):
    mode, path, layout_name, port, count, me = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5])
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 8 // count)
    if count > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=me,
                                   initialization_timeout=60, heartbeat_timeout_seconds=120)
    import numpy as np

    from mtfc import ir as mir
    from mtfc.errors import MtfcError
    from mtfc.mesh import Mesh, TensorLayout
    from mtfc.runtime import checkpoint
    from mtfc.runtime.host_data import jax_sharding, shard_to_devices

    mesh = Mesh.parse(MESH)
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))  # process-major
    rules = LAYOUTS[layout_name]
    targets = []
    for k, (name, role, dims, shape, dtype) in enumerate(ARRAYS):
        sig = mir.Signature(k, name, role, dims, shape, dtype)
        targets.append((sig, TensorLayout(tuple(dims), shape, tuple(rules.get(d, ()) for d in dims), mesh)))
    want = reference()
    try:
        if mode in ("save", "die"):
            if mode == "die" and me == 1:
                os._exit(9)  # lost before writing anything
            entries = [checkpoint.Entry(sig, layout, shard_to_devices(want[sig.name], layout, devices))
                       for sig, layout in targets]
            checkpoint.save(path, entries, {"step": 5, "model": "worker", "mesh": MESH, "layout": layout_name})
        else:
            index = checkpoint.load_index(path)
            checkpoint.check_matches(index, [sig for sig, _ in targets], path)
            arrays = checkpoint.restore(index, targets, devices)
            for sig, layout in targets:
                array = arrays[sig.name]
                assert array.sharding.is_equivalent_to(jax_sharding(layout, devices), len(sig.shape))
                shards = array.addressable_shards
                assert len(shards) == 8 // count, (sig.name, len(shards))
                for shard in shards:
                    got, expected = np.asarray(shard.data), want[sig.name][shard.index]
                    assert got.dtype == expected.dtype, (sig.name, got.dtype)
                    assert got.tobytes() == expected.tobytes(), (sig.name, shard.index)
            print(f"processes {index['processes']}")
    except MtfcError as e:
        print(f"error: {e}", flush=True)
        os._exit(1)  # a peer may be gone: no distributed shutdown
    print("ok", flush=True)
    if count > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
