"""Model mistakes raise `mtfc.MtfcError` naming the culprit dim (or dtype) and
the model line that made the mistake (this file's line, marked ``# <- name``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mtfc as mtf
from conftest import run_model

B, S, D = mtf.Dim("batch", 8), mtf.Dim("seq", 8), mtf.Dim("d", 16)
H = mtf.Dim("h", 8)
V = mtf.Dim("vocab", 16)

HERE = os.path.basename(__file__)


def line_of(marker: str) -> int:
    with open(__file__) as f:
        hits = [i + 1 for i, line in enumerate(f) if line.rstrip().endswith(f"# <- {marker}")]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def raises_at(marker, fn, inputs, *fragments, layout=""):
    with pytest.raises(mtf.MtfcError) as info:
        run_model(fn, inputs, layout=layout)
    message = str(info.value)
    assert f"{HERE}:{line_of(marker)}" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message
    return message


X = {"x": mtf.Input([B, D])}


def test_einsum_output_dim_in_no_input():
    def model(x, w):
        return {"y": mtf.einsum([x, w], [B, mtf.Dim("d_ff", 32)])}  # <- einsum_output

    raises_at("einsum_output", model, {"x": mtf.Input([B, D]), "w": mtf.Input([D, H])},
              "'d_ff'", "in no input")


def test_einsum_two_sizes_for_one_dim():
    def model(x, w):
        return {"y": mtf.einsum([x, w], [B, H])}  # <- einsum_sizes

    raises_at("einsum_sizes", model, {"x": mtf.Input([B, D]), "w": mtf.Input([mtf.Dim("d", 8), H])},
              "'d'", "two sizes", "16", "8")


def test_elementwise_two_sizes_for_one_dim():
    def model(x, y):
        return {"z": x + y}  # <- elementwise_sizes

    raises_at("elementwise_sizes", model, {"x": mtf.Input([B, D]), "y": mtf.Input([mtf.Dim("d", 8)])},
              "'d'", "two sizes")


def test_where_two_sizes_for_one_dim():
    def model(x, y):
        return {"z": mtf.where(x > 0.0, x, y)}  # <- where_sizes

    raises_at("where_sizes", model, {"x": mtf.Input([B, D]), "y": mtf.Input([mtf.Dim("batch", 4)])},
              "'batch'", "two sizes")


def test_shape_with_a_dim_twice():
    def model(x):
        shape = mtf.Shape([B, D, B])  # <- shape_twice
        return {"z": mtf.zeros(shape)}

    raises_at("shape_twice", model, X, "'batch'", "twice")


def test_reduce_over_unknown_dim():
    def model(x):
        return {"y": mtf.reduce_sum(x, S)}  # <- reduce_unknown

    raises_at("reduce_unknown", model, X, "'seq'", "unknown dim")


def test_composite_reduction_over_unknown_dim():
    def model(x):
        return {"y": mtf.softmax(x, "vocab")}  # <- softmax_unknown

    raises_at("softmax_unknown", model, X, "'vocab'", "unknown dim")


def test_reduce_to_output_dim_not_in_input():
    def model(x):
        return {"y": mtf.reduce_max(x, output_shape=[H])}  # <- reduce_output

    raises_at("reduce_output", model, X, "'h'", "not in the input")


def test_slice_out_of_range():
    def model(x):
        return {"y": mtf.slice(x, 12, 8, D)}  # <- slice_range

    raises_at("slice_range", model, X, "d:16", "out of range")


def test_concat_other_dims_differ():
    def model(x, y):
        return {"z": mtf.concat([x, y], B)}  # <- concat_dims

    raises_at("concat_dims", model, {"x": mtf.Input([B, D]), "y": mtf.Input([B, mtf.Dim("d", 8)])},
              "'batch'", "differ")


def test_replace_dimensions_wrong_total_size():
    def model(x):
        return {"y": mtf.replace_dimensions(x, D, [mtf.Dim("a", 4), mtf.Dim("b", 8)])}  # <- replace_size

    raises_at("replace_size", model, X, "d:16", "different total sizes")


def test_rename_unknown_dim():
    def model(x):
        return {"y": mtf.rename_dimension(x, "heads", "h2")}  # <- rename_unknown

    raises_at("rename_unknown", model, X, "'heads'", "unknown dim")


def test_gather_index_dims_clash_with_table():
    def model(table, ids):
        return {"y": mtf.gather(table, ids, V)}  # <- gather_clash

    inputs = {"table": mtf.Input([V, D]), "ids": mtf.Input([D], "i32", mtf.init.randint(0, 16))}
    raises_at("gather_clash", model, inputs, "'d'", "both")


def test_one_hot_needs_integer_indices():
    def model(x):
        return {"y": mtf.one_hot(x, V)}  # <- one_hot_dtype

    raises_at("one_hot_dtype", model, X, "i32", "f32")


def test_dtype_mismatch():
    """Floats of two dtypes promote (tests/test_train_bf16.py); a float with an
    integer tensor is an error."""
    def model(x, y):
        return {"z": x * y}  # <- dtype_mismatch

    raises_at("dtype_mismatch", model, {"x": mtf.Input([B, D]), "y": mtf.Input([B, D], "i32")},
              "i32", "f32", "cast")


def test_a_fractional_number_with_an_integer_tensor():
    def model(x):
        return {"z": x * 0.5}  # <- truncated_number

    raises_at("truncated_number", model, {"x": mtf.Input([B, D], "i32")}, "0.5", "i32", "truncated")


def test_where_needs_boolean_condition():
    def model(x):
        return {"z": mtf.where(x, x, 0.0)}  # <- where_bool

    raises_at("where_bool", model, X, "boolean")


def test_constant_array_shape_mismatch():
    def model(x):
        return {"z": x + mtf.constant(np.zeros((16, 8), np.float32), [B, D])}  # <- constant_shape

    raises_at("constant_shape", model, X, "batch:8", "does not match")


def test_layout_breaking_an_intermediate_names_its_line():
    """A slice to 6 rows cannot split over cols (4): the error names the value's line."""

    def model(x):
        return {"y": mtf.pad(mtf.slice(x, 0, 6, D), (0, 2), "d")}  # <- layout_slice

    raises_at("layout_slice", model, X, "'d'", "size 6", "not divisible", layout="d:cols")


def test_layers_name_the_missing_dim():
    def model(x):
        return {"y": mtf.layers.attention(x, io_dim=D, heads_dim=H, kv_dim=H, length_dim=S)}  # <- attention_dims

    raises_at("attention_dims", model, X, "'seq'")


def test_dim_of_the_wrong_size_names_both_sizes():
    def model(x):
        return {"y": mtf.reduce_sum(x, mtf.Dim("d", 8))}  # <- wrong_size

    raises_at("wrong_size", model, X, "'d'", "8", "16")
