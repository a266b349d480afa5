"""How cost grows: compile time against the number of layers, per-device
memory against the mesh size.  Compile only -- nothing here is executed.

* compile time vs layers: the small transformer (d_model 64) with 1 ... 48
  layers under the ``mixed`` layout on 8 devices; mtfc explicit (lower =
  trace + passes to StableHLO, XLA = PJRT compile) and plain JAX
  (``jit(...).lower``, ``.compile()``), forward and train step;
* memory vs mesh size: the medium transformer's train step under the data,
  tensor and FSDP layouts on meshes of 1, 2, 4 and 8 devices; per-device
  memory from each compiled executable's statistics (arguments + outputs -
  aliased + temporaries) for mtfc explicit and JAX.
"""

from __future__ import annotations

from benchmarks import model as bm

LAYERS = {"forward": [1, 2, 4, 8, 16, 32, 48], "train": [1, 2, 4, 8, 16, 48]}
LAYERS_QUICK = {"forward": [1, 4], "train": [1, 2]}
MESHES = {1: "rows:1,cols:1", 2: "rows:1,cols:2", 4: "rows:2,cols:2", 8: "rows:2,cols:4"}
MEMORY_LAYOUTS = ("data", "tensor", "fsdp")


def compile_vs_layers(layers: dict, backend: str, precision: str, log) -> list[dict]:
    from benchmarks.runners import JaxSubject, MtfcSubject

    layout = bm.LAYOUTS["mixed"] if backend == "cpu" else bm.LAYOUTS["single"]
    rows = []
    for step, counts in layers.items():
        for n in counts:
            size = bm.SIZES["small"].with_layers(n)
            train = step == "train"
            e = MtfcSubject(size, layout, "explicit", train=train, precision=precision, backend=backend)
            j = JaxSubject(size, layout, train=train, precision=precision, backend=backend)
            rows.append({"step": step, "layers": n, "layout": layout.name,
                         "mtfc_lower": e.lower_seconds, "mtfc_xla": e.xla_seconds,
                         "jax_lower": j.lower_seconds, "jax_xla": j.xla_seconds})
            log(f"  compile vs layers: {step:<7} L={n:<3} mtfc {e.lower_seconds:6.2f} + {e.xla_seconds:6.2f} s   "
                f"jax {j.lower_seconds:6.2f} + {j.xla_seconds:6.2f} s")
            del e, j
    return rows


def memory_vs_mesh(size_name: str, meshes: list[int], layouts, backend: str, precision: str, log) -> list[dict]:
    from benchmarks.runners import JaxSubject, MtfcSubject

    size = bm.SIZES[size_name]
    rows = []
    one_device = None  # on one device every layout is the same program: compiled once
    for name in layouts:
        base = bm.LAYOUTS[name]
        for n in meshes:
            layout = bm.Layout(base.name, base.layout if n > 1 else "", base.param_layout if n > 1 else None,
                               MESHES[n])
            if n == 1 and one_device is not None:
                memory = one_device
            else:
                e = MtfcSubject(size, layout, "explicit", train=True, precision=precision, backend=backend)
                j = JaxSubject(size, layout, train=True, precision=precision, backend=backend)
                memory = {"mtfc": e.memory, "jax": j.memory}
                del e, j
                if n == 1:
                    one_device = memory
            rows.append({"layout": name, "devices": n, "mesh": MESHES[n], **memory})
            log(f"  memory vs mesh: {name:<6} n={n}  mtfc {memory['mtfc'].get('peak_bytes', 0) / 1e6:8.1f} MB   "
                f"jax {memory['jax'].get('peak_bytes', 0) / 1e6:8.1f} MB")
    return rows


def run(*, quick: bool, backend: str = "cpu", precision: str = "f32", log=print) -> dict:
    log("scaling: compile time vs layers")
    layers = LAYERS_QUICK if quick else LAYERS
    out = {"compile_vs_layers": compile_vs_layers(layers, backend, precision, log)}
    if backend == "cpu":
        log("scaling: per-device memory vs mesh size")
        size = "small" if quick else "medium"
        out["memory_size"] = size
        out["memory_vs_mesh"] = memory_vs_mesh(size, [1, 8] if quick else [1, 2, 4, 8],
                                               ("tensor", "fsdp") if quick else MEMORY_LAYOUTS, backend, precision, log)
    return out


def report(result: dict) -> str:
    from benchmarks.compare import table

    parts = ["compile time vs layers (small dims, mixed layout, 8 devices): seconds; lower = trace + compile to "
             "StableHLO, XLA = PJRT compile"]
    rows = []
    for r in result["compile_vs_layers"]:
        mtfc, jax = r["mtfc_lower"] + r["mtfc_xla"], r["jax_lower"] + r["jax_xla"]
        rows.append([r["step"], str(r["layers"]), f"{r['mtfc_lower']:.2f}", f"{r['mtfc_xla']:.2f}",
                     f"{r['jax_lower']:.2f}", f"{r['jax_xla']:.2f}", f"{r['mtfc_lower'] / r['jax_lower']:.2f}",
                     f"{mtfc / jax:.2f}"])
    parts.append(table(["step", "layers", "mtfc lower", "mtfc XLA", "jax lower", "jax XLA", "lower xJAX",
                        "total xJAX"], rows, "ll" + "r" * 6))
    if "memory_vs_mesh" in result:
        parts += ["", f"per-device memory vs mesh size ({result['memory_size']} train step; MB = arguments + "
                      "outputs - aliased + temporaries)"]
        rows = []
        for r in result["memory_vs_mesh"]:
            m, j = r["mtfc"].get("peak_bytes"), r["jax"].get("peak_bytes")
            rows.append([r["layout"], str(r["devices"]), r["mesh"],
                         f"{m / 1e6:.1f}" if m else "-", f"{j / 1e6:.1f}" if j else "-",
                         f"{m / j:.2f}" if m and j else "-",
                         f"{r['mtfc'].get('temp_bytes', 0) / 1e6:.1f}", f"{r['jax'].get('temp_bytes', 0) / 1e6:.1f}"])
        parts.append(table(["layout", "devices", "mesh", "mtfc MB", "jax MB", "xJAX", "mtfc temp MB",
                            "jax temp MB"], rows, "lll" + "r" * 5))
    return "\n".join(parts)
