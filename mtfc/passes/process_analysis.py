"""Analysis `processes`: which collectives cross process boundaries, and their bytes.

Read-only, and it reads only what `mtfc.passes.comm_analysis` read from the
IR (its `Collective` records: kind, replica groups or source-target pairs,
S); it compiles and runs nothing.

**Placement.** With N processes of K = M / N devices each (M the mesh's
device count), the mesh is laid over the global devices in process-major
order: process p holds mesh devices ``p*K .. p*K + K-1`` (row-major mesh
indices, the ids replica groups name in every partitioning mode).  So the
mesh's leading axes span processes: on ``rows:2,cols:4`` with N = 2, ``rows``
spans the two processes and ``cols`` stays inside each; with N = 4 every
``rows`` step and every second ``cols`` step crosses.

**Bytes that cross** (what a device *sends* to a device of another process;
every byte is counted once, at its sender).  n is a group's size, q the
number of processes its members live in, S the collective's per-device
buffer size and b its NCCL-tests bus bytes (`comm_analysis.bus_bytes`, the
bytes each device sends in the algorithm below):

====================  ===========================  ==========================  ========================
kind                  algorithm                    one device (the busiest)    all devices of one group
====================  ===========================  ==========================  ========================
all_reduce,           a ring through the group's   b if q > 1                  q * b if q > 1
all_gather,           members ordered by process,
reduce_scatter        so it crosses q times
all_to_all            direct: S/n to every member  (n - m)/n * S, m the        the sum over members
                                                   members in its own process
collective_permute    direct: S from source to     S if source and target      S per such pair
                      target                       are in different processes
collective_broadcast  a chain ordered by process,  S if q > 1                  (q - 1) * S
                      from the source's
====================  ===========================  ==========================  ========================

A collective's figures are the sum over its groups ("all devices") and the
most any one device sends ("per device").  Over a step, the per-device
figure is the sum of the collectives' per-device figures (the busiest
device's share of each collective: an upper bound on what one device sends
across, and the bytes that set the time over a link of known bandwidth), the
total is the sum of their totals.  With N = 1 nothing crosses.

A collective inside a loop body (``Collective.trips`` > 1, see
`comm_analysis`) crosses once per trip: its `Crossing` is that of one
execution, and the per-step figures (``by_axes``, ``total``: count, crossing,
bytes) count it ``trips`` times.

A collective whose groups cannot be read (a replica-group spelling the HLO
reader does not know, a device id off the mesh) is counted as unknown:
``crosses`` is None and its bytes are not in the totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mtfc.errors import MtfcError
from mtfc.mesh import Mesh
from mtfc.passes.comm_analysis import Collective, _number, bus_bytes

RING_KINDS = ("all_reduce", "all_gather", "reduce_scatter")


def check_process_count(mesh: Mesh, num_processes: int, partitioning: str, what: str = "process count") -> int:
    """`num_processes` if it can host `mesh` process-major, else an `MtfcError`
    (one line, naming the count): at least 1, dividing the mesh's device
    count, and a partitioned module (an unpartitioned one has no per-device
    program whose collectives could cross).  `what` names the count in the
    message (the CLI says ``--processes``).  Returns K, the devices per process."""
    if num_processes < 1:
        raise MtfcError(f"{what} {num_processes}: give at least 1")
    if partitioning == "none":
        raise MtfcError(f"{what} {num_processes}: the module is not partitioned (partitioning 'none'), "
                        "so it has no collectives to place; compile it with --mode explicit, shardy or gspmd")
    if mesh.size % num_processes:
        raise MtfcError(f"{what} {num_processes} does not divide the mesh's {mesh.size} devices "
                        f"({mesh or 'one device'})")
    return mesh.size // num_processes


def process_of(device: int, devices_per_process: int) -> int:
    """The process that holds mesh device `device` (process-major placement)."""
    return device // devices_per_process


@dataclass
class Crossing:
    """How one collective meets the process boundaries (see the module docstring)."""

    crosses: bool | None      # some group (pair) has members in two processes; None: groups unreadable
    processes: int            # most processes one group (pair) touches; 0 when unknown
    bytes_per_device: float   # most bytes one device sends to other processes
    bytes_total: float        # bytes sent to other processes, over all devices

    def as_dict(self) -> dict:
        return {"crosses": self.crosses, "processes": self.processes,
                "bytes_per_device": _number(self.bytes_per_device), "bytes_total": _number(self.bytes_total)}


UNKNOWN = Crossing(crosses=None, processes=0, bytes_per_device=0.0, bytes_total=0.0)


def _groups(c: Collective, mesh: Mesh) -> list[list[int]] | None:
    """The collective's groups as mesh device ids; None when unreadable."""
    if c.kind == "collective_permute":
        groups = [list(p) for p in c.groups]
    else:
        if c.n == 0:  # the HLO reader could not read the groups
            return None
        groups = [list(g) for g in c.groups] or [list(range(mesh.size))]
    if any(not 0 <= d < mesh.size for g in groups for d in g):
        return None
    return groups


def crossing(c: Collective, mesh: Mesh, num_processes: int) -> Crossing:
    """The `Crossing` of one collective with `num_processes` processes."""
    k = mesh.size // num_processes
    groups = _groups(c, mesh)
    if groups is None:
        return UNKNOWN
    size = c.bytes
    busiest, total, most = 0.0, 0.0, 1
    for g in groups:
        procs = [process_of(d, k) for d in g]
        q = len(set(procs))
        most = max(most, q)
        if q == 1:
            continue
        if c.kind == "collective_permute":
            busiest, total = max(busiest, size), total + size
        elif c.kind in RING_KINDS:
            b = bus_bytes(c.kind, len(g), size)
            busiest, total = max(busiest, b), total + q * b
        elif c.kind == "all_to_all":
            n = len(g)
            for p in procs:
                sent = (n - procs.count(p)) / n * size
                busiest, total = max(busiest, sent), total + sent
        elif c.kind == "collective_broadcast":
            busiest, total = max(busiest, size), total + (q - 1) * size
        else:
            raise ValueError(f"unknown collective kind {c.kind!r}")
    return Crossing(crosses=most > 1, processes=most, bytes_per_device=busiest, bytes_total=total)


def axis_placement(mesh: Mesh, num_processes: int) -> list[dict]:
    """Per mesh axis: the most processes one of its device groups touches
    (``processes``) and ``"inside"`` (every group inside one process),
    ``"across"`` (in every group each member in its own process) or
    ``"partly"`` (anything between)."""
    k = mesh.size // num_processes
    out = []
    for name, size in mesh.axes:
        spread = [len({process_of(d, k) for d in g}) for g in mesh.groups([name])]
        q = max(spread)
        where = "inside" if q == 1 else "across" if min(spread) == size else "partly"
        out.append({"axis": name, "size": size, "processes": q, "placement": where})
    return out


def _axes_label(c: Collective) -> str:
    if c.axes is None:
        return f"part of {'+'.join(c.spans)}" if c.spans else "?"
    return "+".join(c.axes) or "(none)"


def process_report(collectives: Sequence[Collective], mesh: Mesh, num_processes: int, partitioning: str,
                   what: str = "process count") -> dict:
    """The report section for `num_processes` (errors as `check_process_count`):

    ``{"num_processes", "devices_per_process", "placement": "process-major",
    "axes": axis_placement, "ops": [Crossing.as_dict() per collective, in
    order, one execution each], "by_axes": {axes label: {count, crossing,
    bytes_per_device, bytes_total}}, "total": {count, crossing, unknown,
    bytes_per_device, bytes_total}}``, per step (a collective in a loop
    counted once per trip).  An axes label is the collective's mesh axes joined with
    ``+`` (``part of cols`` for groups that are no whole axes)."""
    k = check_process_count(mesh, num_processes, partitioning, what)
    found = [crossing(c, mesh, num_processes) for c in collectives]
    by_axes: dict[str, dict] = {}
    total = {"count": 0, "crossing": 0, "unknown": 0, "bytes_per_device": 0.0, "bytes_total": 0.0}
    for c, x in zip(collectives, found):
        trips = getattr(c, "trips", 1)
        row = by_axes.setdefault(_axes_label(c), {"count": 0, "crossing": 0, "bytes_per_device": 0.0,
                                                  "bytes_total": 0.0})
        for r in (row, total):
            r["count"] += trips
            r["crossing"] += trips * bool(x.crosses)
            r["bytes_per_device"] += trips * x.bytes_per_device
            r["bytes_total"] += trips * x.bytes_total
        total["unknown"] += trips * (x.crosses is None)
    for r in list(by_axes.values()) + [total]:
        r["bytes_per_device"] = _number(r["bytes_per_device"])
        r["bytes_total"] = _number(r["bytes_total"])
    return {
        "num_processes": num_processes, "devices_per_process": k, "placement": "process-major",
        "axes": axis_placement(mesh, num_processes),
        "ops": [x.as_dict() for x in found], "by_axes": by_axes, "total": total,
    }
