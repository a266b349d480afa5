"""A checkpoint's ``index.json``: mtfc's metadata beside the arrays, its
validation, and the check that it matches a module's state.

Version 3 (orbax arrays under ``state/``)::

    {"format": "mtfc.checkpoint", "version": 3, "step": 10,
     "model": "mlp_train", "optimizer": "sgd:lr=0.1", "seed": 0,
     "mesh": "rows:2,cols:4", "layout": "batch:rows", "param_layout": "...",
     "partitioning": "gspmd", "processes": 1, "data": {...},
     "arrays": [{"name": "params/w1", "role": "parameter",
                 "dims": ["d_in", "d_hidden"], "shape": [8, 32], "dtype": "f32",
                 "layout": [[], ["cols"]],
                 "shards": [{"slices": [[0, 8], [0, 8]], "devices": [0, 4],
                             "sha256": "9f86d0..."}, ...]}]}

``shards`` lists each distinct block of the layout the array was saved with:
its global index range (start, stop per dim), the mesh devices that held it
and the sha256 of its data bytes (C order).  Versions 1 and 2 (mtfc's own
``.npy`` shards) have a ``file`` per shard; version 1 has no digests.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout

FORMAT = "mtfc.checkpoint"
VERSION = 3
READS = (1, 2, 3)  # 1, 2: .npy shards (1 without digests); 3: orbax arrays
INDEX = "index.json"
STATE = "state"  # the orbax checkpoint's directory inside a version 3 checkpoint


def distinct_shards(layout: TensorLayout) -> list[tuple[tuple[slice, ...], list[int]]]:
    """The distinct blocks of a layout, each with the mesh devices holding it (mesh order)."""
    blocks: dict[tuple, list[int]] = {}
    for d in range(layout.mesh.size or 1):
        key = tuple((s.start, s.stop) for s in layout.shard_slices(d))
        blocks.setdefault(key, []).append(d)
    return [(tuple(slice(a, b) for a, b in key), devs) for key, devs in blocks.items()]


def old_prefix(path: str) -> str:
    """The name prefix of a previous checkpoint set aside by a non-atomic swap."""
    return f".{os.path.basename(os.path.normpath(path))}.old-"


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INDEX))


def resolve(path: str) -> str:
    """The directory holding the checkpoint `path` names (a previous one set
    aside by an interrupted non-atomic save, if `path` itself is missing)."""
    if is_checkpoint(path):
        return path
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        olds = sorted(glob.glob(os.path.join(parent, glob.escape(old_prefix(path)) + "*")))
        olds = [o for o in olds if is_checkpoint(o)]
        if olds:
            return olds[-1]
        raise MtfcError(f"checkpoint {path!r} does not exist")
    raise MtfcError(f"{path!r} is not an mtfc checkpoint (no {INDEX})")


def load_index(path: str) -> dict:
    """The validated index of the checkpoint `path` names (`validate_index`),
    with ``_dir`` set to the directory holding it."""
    where = resolve(path)
    file = os.path.join(where, INDEX)
    try:
        with open(file) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise MtfcError(f"cannot read checkpoint index {file!r}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise MtfcError(f"{path!r}: {INDEX} is not an mtfc checkpoint index")
    if index.get("version") not in READS:
        raise MtfcError(f"{path!r}: checkpoint version {index.get('version')} "
                        f"(this mtfc reads versions {', '.join(map(str, READS))})")
    validate_index(index, f"{path}: {INDEX}")
    if index["version"] >= 3 and not os.path.isdir(os.path.join(where, STATE)):
        raise MtfcError(f"{path!r}: the checkpoint has no {STATE}/ directory (its arrays)")
    index["_dir"] = where
    return index


def index_text(index: dict) -> str:
    """index.json: one line per top-level key, per array and per shard (readable, diffable)."""
    lines = []
    for key, value in index.items():
        if key != "arrays":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    arrays = []
    for a in index["arrays"]:
        head = json.dumps({k: v for k, v in a.items() if k != "shards"})[:-1]
        shards = ",\n".join(f"      {json.dumps(s)}" for s in a["shards"])
        arrays.append(f"    {head}, \"shards\": [\n{shards}\n    ]}}")
    lines.append('  "arrays": [\n' + ",\n".join(arrays) + "\n  ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


_META_TYPES = {"model": str, "optimizer": (str, type(None)), "mesh": str, "layout": str, "param_layout": str,
               "partitioning": str, "seed": (int, type(None)), "data": dict, "processes": int}
_ARRAY_FIELDS = {"name": str, "role": str, "dims": list, "shape": list, "dtype": str, "layout": list, "shards": list}
_SHARD_FIELDS = {"slices": list, "devices": list}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need_fields(obj, fields: dict, what: str) -> None:
    if not isinstance(obj, dict):
        raise MtfcError(f"{what} is a {type(obj).__name__}, not an object")
    for key, kind in fields.items():
        if key not in obj:
            raise MtfcError(f"{what} has no {key!r}")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise MtfcError(f"{what}: {key!r} is {json.dumps(obj[key])}, not a {kind.__name__}")


def validate_index(index: dict, where: str) -> None:
    """Fail with one line naming the field unless `index` is well-formed: a step
    >= 0, the documented fields with their types, known dtypes, shard files
    inside the checkpoint (versions 1, 2), and shard blocks that lie in the
    array and cover it exactly once (`where` prefixes the message)."""
    if "step" not in index:
        raise MtfcError(f"{where} has no 'step'")
    if not _is_int(index["step"]) or index["step"] < 0:
        raise MtfcError(f"{where}: 'step' is {json.dumps(index['step'])}, not a number of steps (an integer >= 0)")
    for key, kind in _META_TYPES.items():
        if key in index and (not isinstance(index[key], kind) or isinstance(index[key], bool)):
            raise MtfcError(f"{where}: {key!r} is {json.dumps(index[key])}, of the wrong type")
    if not isinstance(index.get("arrays"), list):
        raise MtfcError(f"{where} has no list of 'arrays'")
    names = set()
    for k, array in enumerate(index["arrays"]):
        _need_fields(array, _ARRAY_FIELDS, f"{where}: array #{k}")
        what = f"{where}: array {array['name']!r}"
        if array["name"] in names:
            raise MtfcError(f"{what} appears twice")
        names.add(array["name"])
        shape = array["shape"]
        if not all(_is_int(n) and n >= 0 for n in shape) or len(array["dims"]) != len(shape):
            raise MtfcError(f"{what}: shape {json.dumps(shape)} is not {len(array['dims'])} sizes >= 0 (one per dim)")
        try:
            mir.numpy_dtype(array["dtype"])
        except (KeyError, ValueError):
            raise MtfcError(f"{what}: unknown dtype {array['dtype']!r}") from None
        _validate_shards(array, shape, what, index.get("version"))
    if index.get("version", VERSION) >= 3:
        tree_keys(names, where)


def _validate_shards(array: dict, shape: list, what: str, version) -> None:
    blocks = []
    for j, shard in enumerate(array["shards"]):
        fields = dict(_SHARD_FIELDS, file=str) if version in (1, 2) else _SHARD_FIELDS
        _need_fields(shard, fields, f"{what}: shard #{j}")
        slices = shard["slices"]
        label = repr(shard["file"]) if "file" in fields else f"#{j}"
        if "file" in fields:
            file = shard["file"]
            if os.path.basename(file) != file or file in ("", ".", "..") or file == INDEX:
                raise MtfcError(f"{what}: shard #{j}: file {file!r} is not a shard file name inside the checkpoint")
        ok = len(slices) == len(shape) and all(
            isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1]) and 0 <= r[0] <= r[1] <= n
            for r, n in zip(slices, shape))
        if not ok:
            raise MtfcError(f"{what}: shard {label} has slices {json.dumps(slices)}, "
                            f"outside the array's shape {json.dumps(shape)}")
        if version != 1 and not (isinstance(shard.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", shard["sha256"])):
            raise MtfcError(f"{what}: shard {label} has no sha256 digest")
        blocks.append((label, [tuple(r) for r in slices]))
    for a in range(len(blocks)):
        for b in range(a + 1, len(blocks)):
            (fa, ra), (fb, rb) = blocks[a], blocks[b]
            if all(max(x[0], y[0]) < min(x[1], y[1]) for x, y in zip(ra, rb)):
                raise MtfcError(f"{what}: shards {fa} and {fb} overlap")
    volume = sum(int(np.prod([hi - lo for lo, hi in r])) for _, r in blocks)
    if volume != int(np.prod(shape)):
        raise MtfcError(f"{what}: its shards cover {volume} of its {int(np.prod(shape))} values")


def tree_keys(names, where: str) -> dict[str, tuple[str, ...]]:
    """Each array name's path in the orbax tree: the name split at ``/``
    (``params/fc/kernel`` -> ``["params"]["fc"]["kernel"]``).  Names that
    would collide there (one a prefix of another, an empty part, or the same
    orbax parameter name once the parts are joined with ``.``) fail."""
    keys = {}
    dotted: dict[str, str] = {}
    for name in names:
        parts = tuple(name.split("/"))
        if any(p == "" for p in parts):
            raise MtfcError(f"{where}: array name {name!r} has an empty part between '/'")
        other = dotted.setdefault(".".join(parts), name)
        if other != name:
            raise MtfcError(f"{where}: array names {other!r} and {name!r} are the same orbax parameter")
        keys[name] = parts
    for name, parts in keys.items():
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            if prefix in keys:
                raise MtfcError(f"{where}: array name {prefix!r} is a prefix of {name!r} (orbax stores a tree)")
    return keys


def check_matches(index: dict, sigs: list[mir.Signature], path: str) -> None:
    """Fail with one line listing what differs between the checkpoint and the module's state."""
    saved = {a["name"]: a for a in index["arrays"]}
    wanted = {s.name: s for s in sigs}
    problems = []
    for name, sig in wanted.items():
        a = saved.get(name)
        if a is None:
            problems.append(f"{sig.role} {name!r} is not in the checkpoint")
            continue
        if tuple(a["shape"]) != sig.shape:
            problems.append(f"{name!r} has shape {list(a['shape'])} in the checkpoint, {list(sig.shape)} in the module")
        if a["dtype"] != sig.dtype:
            problems.append(f"{name!r} is {a['dtype']} in the checkpoint, {sig.dtype} in the module")
        if a["role"] != sig.role:
            problems.append(f"{name!r} is {a['role']} in the checkpoint, {sig.role} in the module")
    for name in saved:
        if name not in wanted:
            problems.append(f"the checkpoint's {saved[name]['role']} {name!r} is not in the module")
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise MtfcError(f"checkpoint {path!r} does not match the module: {'; '.join(problems[:4])}{more}")
