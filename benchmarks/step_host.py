"""Host time of one train step against the number of state arrays.

    python -m benchmarks.step_host                 # tiny transformer, 1, 2, 4, 8 layers, data layout
    python -m benchmarks.step_host --layers 2 --steps 20

"Host ms" is the wall time from the start of a step until control is back in
Python with the next step's arguments in hand (launch + result handling +
building the next state), not waiting for the devices; each option runs the
same compiled mtfc train step (``explicit``, mesh ``rows:2,cols:4``) from the
same state, and ``jax`` is the plain-JAX step (`benchmarks.runners.JaxSubject`,
``jax.jit``'s C++ dispatch) for comparison:

* ``per-array``: what `mtfc.runtime.train_step` did before issue 14 --
  ``disassemble_into_single_device_arrays``, each result's shards sorted into
  mesh order, each state array rebuilt with
  ``jax.make_array_from_single_device_arrays``;
* ``disassemble``: the same without the sort (the shards already come in mesh order);
* ``handlers``: now (`Program.execute`): ``consume_with_handlers`` with jaxlib's
  C++ array result handlers, state fed back with ``operator.itemgetter``;
* ``jax``: ``jax.jit(...).lower(...).compile()`` called on the arguments.

"python ms" (``handlers`` only): the part of the host time outside
``execute_sharded`` -- picking the arguments, the result handlers, the next
state; the rest is PJRT's own launch, which grows with the number of buffers
in every option, JAX's included.

Timings on a shared machine vary; the table prints the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


python: list[float] = []  # seconds per `handlers` step outside execute_sharded


def options(train, batch):
    """Each option as a function running one step from its own copy of the state, returning what to wait for."""
    import jax

    from mtfc.runtime.train_step import picker

    p = train.program
    position = {dev.id: d for d, dev in enumerate(p.devices)}
    shardings = [a.sharding for a in train.initial_state(0).buffers.values()]  # state order
    state_args = [i for i, _, _ in train.state]
    state_res = [k for _, k, _ in train.state]
    order = state_args + [i for i, _ in train.inputs]
    where = {a: n for n, a in enumerate(order)}
    arguments = picker([where[i] for i in range(len(p.arguments))])
    inputs = tuple(batch[sig.name] for _, sig in train.inputs)

    def per_array(sort: bool):
        box = [tuple(train.initial_state(0).buffers.values())]

        def step():
            results = p.executable.execute_sharded(arguments(box[0] + inputs))
            shards = results.disassemble_into_single_device_arrays()
            if sort:
                shards = [sorted(s, key=lambda a: position[next(iter(a.devices())).id]) for s in shards]
            box[0] = tuple(jax.make_array_from_single_device_arrays(p.results[k].shape, sh, shards[k])
                           for k, sh in zip(state_res, shardings))
            return shards[train.loss_index][0]
        return step

    def handlers():
        state = train.initial_state(0)
        train.launch(state, batch)  # the first launch checks the arguments and outputs once
        state = train.initial_state(0)

        def step():  # train.launch + train.advance, with the time outside execute_sharded kept apart
            start = time.perf_counter()
            args = train._arguments(train._state_of(state.buffers) + train._inputs_of(batch))
            launch = time.perf_counter()
            results = p.executable.execute_sharded(args)
            back = time.perf_counter()
            outs = results.consume_with_handlers(p.result_handlers)
            train.advance(state, outs)
            python.append((launch - start) + (time.perf_counter() - back))
            return outs[train.loss_index]
        return step

    return {"per-array": per_array(True), "disassemble": per_array(False), "handlers": handlers()}


def jax_option(size, layout):
    from benchmarks.runners import JaxSubject, host_data

    js = JaxSubject(size, layout, train=True)
    js.load(host_data(size, True))

    def step():
        out = js.compiled(*js.args)
        js.args[:4] = out[3:7]
        return out[0]
    return step


def measure(step, steps: int, warmup: int = 3) -> dict:
    host, wall = [], []
    for n in range(warmup + steps):
        start = time.perf_counter()
        wait = step()
        mid = time.perf_counter()
        wait.block_until_ready()
        end = time.perf_counter()
        if n >= warmup:
            host.append(mid - start)
            wall.append(end - start)
    return {"host_ms": float(np.median(host) * 1e3), "host_min_ms": float(np.min(host) * 1e3),
            "wall_ms": float(np.median(wall) * 1e3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.step_host", description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="1,2,4,8", help="comma-separated layer counts of the tiny transformer")
    ap.add_argument("--layout", default="data")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    from mtfc.runtime import devices as rt_devices

    rt_devices.ensure_cpu_devices(8)
    from benchmarks import model as bm
    from mtfc import ir as mir
    from mtfc.runtime.train_step import TrainStep

    rows = []
    for layers in [int(x) for x in args.layers.split(",")]:
        size = bm.SIZES["tiny"].with_layers(layers)
        layout = bm.LAYOUTS[args.layout]
        train = TrainStep(bm.compile_mtfc(size, layout, "explicit", train=True))
        batch = train.device_inputs({s.name: np.zeros(s.shape, mir.numpy_dtype(s.dtype))
                                     for s in train.input_signatures})
        steps = {**options(train, batch), "jax": jax_option(size, layout)}
        for _ in range(2):  # twice, interleaved: a change of load hits every option
            for name, step in steps.items():
                python.clear()
                r = measure(step, args.steps)
                if python:
                    r["python_ms"] = float(np.median(python[3:]) * 1e3)
                rows.append({"layers": layers, "state": len(train.state), "results": len(train.program.results),
                             "option": name, **r})
    best = {}
    for r in rows:  # the better of the two rounds
        key = (r["layers"], r["option"])
        if key not in best or r["host_ms"] < best[key]["host_ms"]:
            best[key] = r
    print(f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores; "
          f"median of {args.steps} steps, better of 2 rounds")
    print(f"{'layers':>6} {'state':>5} {'option':<12} {'host ms':>8} {'min':>7} {'wall ms':>8}  python ms")
    for r in best.values():
        extra = f"  {r['python_ms']:9.3f}" if "python_ms" in r else ""
        print(f"{r['layers']:>6} {r['state']:>5} {r['option']:<12} {r['host_ms']:8.3f} {r['host_min_ms']:7.3f} "
              f"{r['wall_ms']:8.3f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
