"""Einsum, reductions, softmax, reshaping (rename, replace, transpose,
reshape, broadcast), slice/pad/concat/shift, one_hot, gather and creation ops:
each compiled and run under several layouts on the 2x4 mesh, against NumPy
references written here."""

from __future__ import annotations

import numpy as np

import mtfc as mtf
from opcheck import BF16, check, layouts

B, S, D = mtf.Dim("batch", 8), mtf.Dim("seq", 8), mtf.Dim("d", 16)
H = mtf.Dim("h", 8)
HEADS, K, M = mtf.Dim("heads", 4), mtf.Dim("k", 8), mtf.Dim("memory", 8)
V = mtf.Dim("vocab", 16)


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ----------------------------------------------------------------- einsum


@layouts("", "batch:rows", "d:cols", "h:cols", "batch:rows,d:cols", "batch:rows+cols")
def test_einsum_two_operands(layout):
    def model(x, y, w, s, xb, wb):
        return {
            "matmul": mtf.einsum([x, w], [B, H]),
            "matmul_inferred": mtf.einsum([x, w]),
            "matmul_transposed_output": mtf.einsum([x, w], [H, B]),
            "full_contraction_inferred": mtf.einsum([x, y]),
            "row_dot_batch_dim": mtf.einsum([x, y], [B]),
            "elementwise_product": mtf.einsum([x, y], [B, D]),
            "sum_of_squares_inferred": mtf.einsum([x, x]),
            "outer_inferred": mtf.einsum([x, s]),
            "partial_sum": mtf.einsum([x, s], [S]),
            "matmul_bf16": mtf.einsum([xb, wb], [B, H]),
        }

    def reference(data):
        x, y, w, s = (f64(data[k]) for k in ("x", "y", "w", "s"))
        xb, wb = f64(data["xb"].astype(np.float32)), f64(data["wb"].astype(np.float32))
        return {
            "matmul": x @ w,
            "matmul_inferred": x @ w,
            "matmul_transposed_output": (x @ w).T,
            "full_contraction_inferred": np.sum(x * y),
            "row_dot_batch_dim": np.sum(x * y, axis=1),
            "elementwise_product": x * y,
            "sum_of_squares_inferred": np.sum(x * x),
            "outer_inferred": x[:, :, None] * s,
            "partial_sum": x.sum() * s,
            "matmul_bf16": (xb @ wb).astype(BF16),
        }

    inputs = {
        "x": mtf.Input([B, D]),
        "y": mtf.Input([B, D]),
        "w": mtf.Input([D, H]),
        "s": mtf.Input([S]),
        "xb": mtf.Input([B, D], "bf16"),
        "wb": mtf.Input([D, H], "bf16"),
    }
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_einsum_one_operand(layout):
    def model(x, x3):
        return {
            "sum_over_batch": mtf.einsum([x], [D]),
            "transpose": mtf.einsum([x], [D, B]),
            "total": mtf.einsum([x], []),
            "identity_inferred": mtf.einsum([x]),
            "sum_and_transpose": mtf.einsum([x3], [D, B]),
        }

    def reference(data):
        x, x3 = f64(data["x"]), f64(data["x3"])
        return {
            "sum_over_batch": x.sum(0),
            "transpose": x.T,
            "total": x.sum(),
            "identity_inferred": x,
            "sum_and_transpose": x3.sum(1).T,
        }

    check(model, {"x": mtf.Input([B, D]), "x3": mtf.Input([B, S, D])}, reference, layout)


@layouts("", "batch:rows", "d:cols", "h:cols,batch:rows", "seq:cols")
def test_einsum_three_operands(layout):
    def model(x, m, w, u, z, bv):
        return {
            "chain_to_batch": mtf.einsum([x, w, u], [B]),
            "inferred_once_dims": mtf.einsum([x, w, z]),  # batch and seq occur once
            "batch_dim_from_two": mtf.einsum([x, m, w], [B, H]),
            "contract_first_and_last": mtf.einsum([x, w, bv], [H]),
            "keep_everything": mtf.einsum([x, w, z], [B, D, H, S]),
        }

    def reference(data):
        x, m, w, u, z, bv = (f64(data[k]) for k in ("x", "m", "w", "u", "z", "bv"))
        return {
            "chain_to_batch": np.einsum("bd,dh,h->b", x, w, u),
            "inferred_once_dims": np.einsum("bd,dh,hs->bs", x, w, z),
            "batch_dim_from_two": np.einsum("bd,bd,dh->bh", x, m, w),
            "contract_first_and_last": np.einsum("bd,dh,b->h", x, w, bv),
            "keep_everything": np.einsum("bd,dh,hs->bdhs", x, w, z),
        }

    inputs = {
        "x": mtf.Input([B, D]),
        "m": mtf.Input([B, D]),
        "w": mtf.Input([D, H]),
        "u": mtf.Input([H]),
        "z": mtf.Input([H, S]),
        "bv": mtf.Input([B]),
    }
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "heads:cols", "batch:rows,heads:cols", "seq:rows,memory:cols")
def test_einsum_batch_dims(layout):
    """Attention-style contractions: batch and heads are batch dims of the dot."""

    def model(q, k, v):
        logits = mtf.einsum([q, k], [B, HEADS, S, M])
        return {
            "logits": logits,
            "logits_other_order": mtf.einsum([k, q], [HEADS, M, B, S]),
            "weighted": mtf.einsum([logits, v], [B, S, HEADS, K]),
            "per_head_total": mtf.einsum([q, k, v], [HEADS]),
        }

    def reference(data):
        q, k, v = f64(data["q"]), f64(data["k"]), f64(data["v"])
        logits = np.einsum("bhsk,bhmk->bhsm", q, k)
        return {
            "logits": logits,
            "logits_other_order": np.einsum("bhsk,bhmk->hmbs", q, k),
            "weighted": np.einsum("bhsm,bhmk->bshk", logits, v),
            "per_head_total": np.einsum("bhsk,bhmk,bhmk->h", q, k, v),
        }

    inputs = {
        "q": mtf.Input([B, HEADS, S, K]),
        "k": mtf.Input([B, HEADS, M, K]),
        "v": mtf.Input([B, HEADS, M, K]),
    }
    check(model, inputs, reference, layout)


# ----------------------------------------------------------------- reductions


def _np_logsumexp(x, axis):
    peak = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak, axis=axis)


@layouts("", "batch:rows", "d:cols", "seq:cols,batch:rows", "batch:rows+cols")
def test_reductions(layout):
    fns = {
        "sum": (mtf.reduce_sum, np.sum),
        "mean": (mtf.reduce_mean, np.mean),
        "max": (mtf.reduce_max, np.max),
        "min": (mtf.reduce_min, np.min),
        "logsumexp": (mtf.reduce_logsumexp, _np_logsumexp),
    }

    def model(x):
        out = {}
        for kind, (op, _) in fns.items():
            out[f"{kind}_one_dim"] = op(x, S)
            out[f"{kind}_one_dim_by_name"] = op(x, "batch")
            out[f"{kind}_two_dims"] = op(x, [B, D])
            out[f"{kind}_everything"] = op(x)
            out[f"{kind}_to_output_shape"] = op(x, output_shape=[D, B])  # keeps x's order
        return out

    def reference(data):
        x = f64(data["x"])
        out = {}
        for kind, (_, ref) in fns.items():
            out[f"{kind}_one_dim"] = ref(x, axis=1)
            out[f"{kind}_one_dim_by_name"] = ref(x, axis=0)
            out[f"{kind}_two_dims"] = ref(x, axis=(0, 2))
            out[f"{kind}_everything"] = ref(x, axis=(0, 1, 2))
            out[f"{kind}_to_output_shape"] = ref(x, axis=1)
        return out

    check(model, {"x": mtf.Input([B, S, D])}, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_reductions_integer_and_bf16(layout):
    def model(a, xb):
        return {
            "int_sum": mtf.reduce_sum(a, D),
            "int_max": mtf.reduce_max(a, [B, D]),
            "int_min": mtf.reduce_min(a),
            "int_mean": mtf.reduce_mean(a, D),  # truncates toward zero
            "int_mean_everything": mtf.reduce_mean(a),
            "bf16_sum": mtf.reduce_sum(xb, D),
            "bf16_mean": mtf.reduce_mean(xb, B),
            "bf16_max": mtf.reduce_max(xb),
        }

    def reference(data):
        a, xb = data["a"].astype(np.int64), f64(data["xb"].astype(np.float32))
        return {
            "int_sum": a.sum(1).astype(np.int32),
            "int_max": a.max((0, 1)).astype(np.int32),
            "int_min": np.int32(a.min()),
            "int_mean": np.trunc(a.sum(1) / 16).astype(np.int32),
            "int_mean_everything": np.int32(np.trunc(a.sum() / 128)),
            "bf16_sum": xb.sum(1).astype(BF16),
            "bf16_mean": xb.mean(0).astype(BF16),
            "bf16_max": np.asarray(xb.max()).astype(BF16),
        }

    inputs = {"a": mtf.Input([B, D], "i32", mtf.init.randint(-50, 50)), "xb": mtf.Input([B, D], "bf16")}
    check(model, inputs, reference, layout)


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols", "seq:cols")
def test_softmax_and_log_softmax(layout):
    def model(x, xb):
        return {
            "softmax_d": mtf.softmax(x, D),
            "softmax_seq": mtf.softmax(x * 10.0, "seq"),
            "log_softmax_d": mtf.log_softmax(x, D),
            "log_softmax_batch": mtf.log_softmax(x, B),
            "softmax_bf16": mtf.softmax(xb, D),
        }

    def reference(data):
        x, xb = f64(data["x"]), f64(data["xb"].astype(np.float32))
        return {
            "softmax_d": _np_softmax(x, 2),
            "softmax_seq": _np_softmax(x * 10.0, 1),
            "log_softmax_d": np.log(_np_softmax(x, 2)),
            "log_softmax_batch": np.log(_np_softmax(x, 0)),
            "softmax_bf16": _np_softmax(xb, 2).astype(BF16),
        }

    check(model, {"x": mtf.Input([B, S, D]), "xb": mtf.Input([B, S, D], "bf16")}, reference, layout)


# ----------------------------------------------------------------- reshaping


@layouts("", "d:cols", "e:cols", "batch:rows,d:cols", "d:cols,e:rows")
def test_rename_dimension(layout):
    def model(x):
        renamed = mtf.rename_dimension(x, D, "e")
        return {
            "renamed": renamed,
            "renamed_by_name": mtf.rename_dimension(x, "batch", "b2"),
            # both names in one op: a per-row outer product [batch, d, e]
            "outer": mtf.einsum([x, renamed], [B, D, mtf.Dim("e", 16)]),
        }

    def reference(data):
        x = f64(data["x"])
        return {"renamed": x, "renamed_by_name": x, "outer": x[:, :, None] * x[:, None, :]}

    check(model, {"x": mtf.Input([B, D])}, reference, layout)


@layouts(
    "",
    "batch:rows",
    "d:cols",
    "seq:cols",
    "batch:rows,d:cols",
    "batch:rows,d_a:cols,sd:cols,bd:cols,s_b:cols",
)
def test_replace_dimensions(layout):
    da, db = mtf.Dim("d_a", 4), mtf.Dim("d_b", 4)
    sa, sb = mtf.Dim("s_a", 2), mtf.Dim("s_b", 4)

    def model(x):
        return {
            "split_last": mtf.replace_dimensions(x, D, [da, db]),
            "split_middle": mtf.replace_dimensions(x, "seq", [sa, sb]),
            "merge_adjacent": mtf.replace_dimensions(x, [S, D], mtf.Dim("sd", 128)),
            "merge_non_adjacent": mtf.replace_dimensions(x, [B, D], mtf.Dim("bd", 128)),
            "merge_non_adjacent_reversed": mtf.replace_dimensions(x, [D, B], mtf.Dim("db", 128)),
            "merge_adjacent_reversed": mtf.replace_dimensions(x, [D, S], mtf.Dim("ds", 128)),
            "merge_and_split": mtf.replace_dimensions(x, [S, D], [mtf.Dim("p", 32), mtf.Dim("q", 4)]),
        }

    def reference(data):
        x = f64(data["x"])  # [batch, seq, d]
        return {
            "split_last": x.reshape(8, 8, 4, 4),
            "split_middle": x.reshape(8, 2, 4, 16),
            "merge_adjacent": x.reshape(8, 128),
            "merge_non_adjacent": x.transpose(0, 2, 1).reshape(128, 8),  # [bd, seq]
            "merge_non_adjacent_reversed": x.transpose(2, 0, 1).reshape(128, 8),  # [db, seq]
            "merge_adjacent_reversed": x.transpose(0, 2, 1).reshape(8, 128),  # [batch, ds]
            "merge_and_split": x.reshape(8, 32, 4),
        }

    check(model, {"x": mtf.Input([B, S, D])}, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_transpose_reshape_broadcast(layout):
    def model(x, x3, v):
        return {
            "transpose": mtf.transpose(x, [D, B]),
            "transpose_3d": mtf.transpose(x3, [D, B, S]),
            "transpose_identity": mtf.transpose(x, [B, D]),
            "reshape_split": mtf.reshape(x, [B, mtf.Dim("a", 4), mtf.Dim("c", 4)]),
            "reshape_flat": mtf.reshape(x, [mtf.Dim("flat", 128)]),
            "reshape_regroup": mtf.reshape(x, [mtf.Dim("p", 16), mtf.Dim("q", 8)]),
            "broadcast": mtf.broadcast(v, [B, D]),
            "broadcast_reorder": mtf.broadcast(x, [S, D, B]),
        }

    def reference(data):
        x, x3, v = f64(data["x"]), f64(data["x3"]), f64(data["v"])
        return {
            "transpose": x.T,
            "transpose_3d": x3.transpose(2, 0, 1),
            "transpose_identity": x,
            "reshape_split": x.reshape(8, 4, 4),
            "reshape_flat": x.reshape(128),
            "reshape_regroup": x.reshape(16, 8),
            "broadcast": np.broadcast_to(v, (8, 16)),
            "broadcast_reorder": np.broadcast_to(x.T, (8, 16, 8)),
        }

    check(model, {"x": mtf.Input([B, D]), "x3": mtf.Input([B, S, D]), "v": mtf.Input([D])}, reference, layout)


# ----------------------------------------------------------------- slice, pad, concat, shift


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols", "seq:cols")
def test_slice(layout):
    def model(x, a):
        return {
            "d_middle": mtf.slice(x, 4, 8, D),
            "d_second_half": mtf.slice(x, 8, 8, "d"),
            "seq_head": mtf.slice(x, 0, 4, S),
            "seq_window_renamed": mtf.slice(x, 2, 5, S, new_name="window"),
            "batch_tail": mtf.slice(x, 6, 2, B, new_name="last_rows"),
            "int_slice": mtf.slice(a, 12, 4, D),
        }

    def reference(data):
        x, a = data["x"], data["a"]
        return {
            "d_middle": x[:, :, 4:12],
            "d_second_half": x[:, :, 8:],
            "seq_head": x[:, :4],
            "seq_window_renamed": x[:, 2:7],
            "batch_tail": x[6:],
            "int_slice": a[:, 12:],
        }

    inputs = {"x": mtf.Input([B, S, D]), "a": mtf.Input([B, D], "i32", mtf.init.randint(0, 100))}
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols", "seq:cols,batch:rows", "batch:rows+cols")
def test_pad(layout):
    def model(x, a):
        return {
            "d_both_sides": mtf.pad(x, (4, 12), D),
            "d_after_value": mtf.pad(x, (0, 8), "d", value=-1.0),
            "seq_value": mtf.pad(x, (2, 6), S, value=3.0),
            "seq_renamed": mtf.pad(x, (1, 1), S, new_name="padded"),
            "int_pad": mtf.pad(a, (8, 0), D, value=7),
        }

    def reference(data):
        x, a = data["x"], data["a"]
        return {
            "d_both_sides": np.pad(x, ((0, 0), (0, 0), (4, 12))),
            "d_after_value": np.pad(x, ((0, 0), (0, 0), (0, 8)), constant_values=-1.0),
            "seq_value": np.pad(x, ((0, 0), (2, 6), (0, 0)), constant_values=3.0),
            "seq_renamed": np.pad(x, ((0, 0), (1, 1), (0, 0))),
            "int_pad": np.pad(a, ((0, 0), (8, 0)), constant_values=7),
        }

    inputs = {"x": mtf.Input([B, S, D]), "a": mtf.Input([B, D], "i32", mtf.init.randint(0, 100))}
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols", "seq:cols", "batch:rows+cols", "batch:rows,d:cols")
def test_concat(layout):
    d8 = mtf.Dim("d", 8)

    def model(x, y, h1, h2):
        return {
            "along_d": mtf.concat([x, y], D),
            "along_d_halves": mtf.concat([h1, h2], "d"),  # d: 8 + 8 -> 16
            "three_along_seq": mtf.concat([x, y, x], S),
            "along_batch_renamed": mtf.concat([x, y], B, new_name="batch2"),
        }

    def reference(data):
        x, y, h1, h2 = (data[k] for k in ("x", "y", "h1", "h2"))
        return {
            "along_d": np.concatenate([x, y], 2),
            "along_d_halves": np.concatenate([h1, h2], 1),
            "three_along_seq": np.concatenate([x, y, x], 1),
            "along_batch_renamed": np.concatenate([x, y], 0),
        }

    inputs = {
        "x": mtf.Input([B, S, D]),
        "y": mtf.Input([B, S, D]),
        "h1": mtf.Input([B, d8]),
        "h2": mtf.Input([B, d8]),
    }
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols", "seq:cols", "batch:rows,seq:cols", "seq:rows+cols")
def test_shift(layout):
    cases = {
        "plus_1": (1, S, False),
        "minus_3": (-3, S, False),
        "wrap_plus_2": (2, S, True),
        "wrap_minus_5": (-5, S, True),
        "zero": (0, S, False),
        "past_the_end": (8, S, False),
        "wrap_past_the_end": (10, S, True),
        "wrap_minus_past_the_end": (-9, S, True),
        "along_d": (4, D, False),
        "along_d_wrap": (-6, D, True),
    }

    def model(x):
        return {name: mtf.shift(x, offset, dim, wrap=wrap) for name, (offset, dim, wrap) in cases.items()}

    def np_shift(x, offset, axis, wrap):
        out = np.roll(x, offset, axis)
        if not wrap:
            size = x.shape[axis]
            index = [slice(None)] * x.ndim
            index[axis] = slice(0, min(offset, size)) if offset >= 0 else slice(max(size + offset, 0), size)
            out[tuple(index)] = 0
        return out

    def reference(data):
        x = data["x"]
        axes = {"seq": 1, "d": 2}
        return {name: np_shift(x, off, axes[dim.name], wrap) for name, (off, dim, wrap) in cases.items()}

    check(model, {"x": mtf.Input([B, S, D])}, reference, layout)


# ----------------------------------------------------------------- one_hot, gather


@layouts("", "batch:rows", "vocab:cols", "seq:rows,vocab:cols", "batch:rows+cols")
def test_one_hot(layout):
    def model(ids, wild):
        return {
            "f32": mtf.one_hot(ids, V),
            "i32": mtf.one_hot(ids, V, dtype="i32"),
            "bf16_values": mtf.one_hot(ids, V, dtype="bf16", on_value=0.9, off_value=0.1),
            "out_of_range_is_all_off": mtf.one_hot(wild, V),
        }

    def reference(data):
        ids, wild = data["ids"], data["wild"]
        hot = ids[..., None] == np.arange(16)
        wild_hot = wild[..., None] == np.arange(16)
        return {
            "f32": hot.astype(np.float32),
            "i32": hot.astype(np.int32),
            "bf16_values": np.where(hot, 0.9, 0.1).astype(BF16),
            "out_of_range_is_all_off": wild_hot.astype(np.float32),
        }

    inputs = {
        "ids": mtf.Input([B, S], "i32", mtf.init.randint(0, 16)),
        "wild": mtf.Input([B, S], "i32", mtf.init.randint(-4, 20)),
    }
    data = check(model, inputs, reference, layout)
    assert ((data["wild"] < 0) | (data["wild"] >= 16)).any()


@layouts("", "batch:rows", "d:cols", "vocab:cols", "batch:rows,vocab:cols", "vocab:rows+cols,seq:rows")
def test_gather(layout):
    def model(table, table_t, itable, ids, ids1):
        return {
            "embedding_lookup": mtf.gather(table, ids, V),
            "vocab_not_leading": mtf.gather(table_t, ids, "vocab"),
            "int_table": mtf.gather(itable, ids, V),
            "one_index_dim": mtf.gather(table, ids1, V),
        }

    def reference(data):
        table, table_t, itable, ids, ids1 = (data[k] for k in ("table", "table_t", "itable", "ids", "ids1"))
        return {
            "embedding_lookup": table[ids],
            "vocab_not_leading": table_t.T[ids],
            "int_table": itable[ids],
            "one_index_dim": table[ids1],
        }

    inputs = {
        "table": mtf.Input([V, D]),
        "table_t": mtf.Input([D, V]),
        "itable": mtf.Input([V, D], "i32", mtf.init.randint(-1000, 1000)),
        "ids": mtf.Input([B, S], "i32", mtf.init.randint(0, 16)),
        "ids1": mtf.Input([B], "i32", mtf.init.randint(0, 16)),
    }
    check(model, inputs, reference, layout)


# ----------------------------------------------------------------- creation

ARRAY = np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)
INT_ARRAY = np.arange(16 * 8, dtype=np.int32).reshape(16, 8) - 50
BOOL_ARRAY = np.random.default_rng(6).random((8, 16)) > 0.5


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols", "seq:rows,d:cols")
def test_creation_ops(layout):
    def model(x):
        return {
            "zeros": mtf.zeros([B, D]),
            "ones_i32": mtf.ones([B, D], "i32"),
            "ones_bf16": mtf.ones([D], "bf16"),
            "constant_scalar": mtf.constant(2.5, [B, D]),
            "constant_rank0": mtf.constant(-1.5),
            "constant_0d_array": mtf.constant(np.array(4.0, np.float32), [D]),
            "constant_array": mtf.constant(ARRAY, [B, D]),
            "constant_int_array": mtf.constant(INT_ARRAY, [D, S], "i32"),
            "constant_bool_array": mtf.constant(BOOL_ARRAY, [B, D], "bool"),
            "array_plus_input": x + mtf.constant(ARRAY, [B, D]),
            "iota_d": mtf.iota([B, D], D),
            "iota_batch_f32": mtf.iota([B, D], "batch", "f32"),
            "range_d": mtf.range_(D),
            "range_seq_f32": mtf.range_(S, "f32"),
        }

    def reference(data):
        return {
            "zeros": np.zeros((8, 16), np.float32),
            "ones_i32": np.ones((8, 16), np.int32),
            "ones_bf16": np.ones(16, BF16),
            "constant_scalar": np.full((8, 16), 2.5, np.float32),
            "constant_rank0": np.float32(-1.5),
            "constant_0d_array": np.full(16, 4.0, np.float32),
            "constant_array": ARRAY,
            "constant_int_array": INT_ARRAY,
            "constant_bool_array": BOOL_ARRAY,
            "array_plus_input": data["x"] + ARRAY,
            "iota_d": np.broadcast_to(np.arange(16, dtype=np.int32), (8, 16)),
            "iota_batch_f32": np.broadcast_to(np.arange(8, dtype=np.float32)[:, None], (8, 16)),
            "range_d": np.arange(16, dtype=np.int32),
            "range_seq_f32": np.arange(8, dtype=np.float32),
        }

    check(model, {"x": mtf.Input([B, D])}, reference, layout)
