"""Hand-written loop modules in the form mtfc emits (docs/IR.md, "Loops"),
each with an independent NumPy reference, for the gspmd and shardy tests
(tests/test_loops_gspmd_shardy.py).

Sizes: batch 8, d_model 16, d_ff 32, on the 2x4 mesh ``rows:2,cols:4``.
"""

from __future__ import annotations

import numpy as np

B, D, F = 8, 16, 32


def _ds(value: str, stacked: str, index: str, shape: tuple[int, ...], dims: list[str]) -> str:
    """``dynamic_slice`` of one layer of `stacked` at `index` (dims [layers, ...])."""
    full = "x".join(str(s) for s in shape)
    one = "x".join(str(s) for s in (1, *shape[1:]))
    zeros = ", ".join(["%z"] * (len(shape) - 1))
    ints = ", ".join(["tensor<i32>"] * len(shape))
    return (f"      {value} = stablehlo.dynamic_slice {stacked}, {index}, {zeros}, sizes = [1, "
            f"{', '.join(str(s) for s in shape[1:])}] {{mtfc.dims = {_dims(dims)}}} : "
            f"(tensor<{full}xf32>, {ints}) -> tensor<{one}xf32>\n")


def _dims(dims: list[str]) -> str:
    return "[" + ", ".join(f'"{d}"' for d in dims) + "]"


def mlp(layers: int = 3, param_layout: str | None = None) -> str:
    """The residual MLP of /work/contract/loop-mlp.mlir with `layers` layers:
    ``h += tanh(h @ w1[l]) @ w2[l]``; `param_layout` sets ``mtfc.param_layout`` (FSDP)."""
    L = layers
    extra = f', mtfc.param_layout = "{param_layout}"' if param_layout is not None else ""
    return f"""
module @loop_mlp attributes {{mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"{extra}}} {{
  func.func @main(%x: tensor<{B}x{D}xf32> {{mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}},
                  %w1: tensor<{L}x{D}x{F}xf32> {{mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/blocks/wi", mtfc.role = "parameter"}},
                  %w2: tensor<{L}x{F}x{D}xf32> {{mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/blocks/wo", mtfc.role = "parameter"}})
      -> (tensor<{B}x{D}xf32> {{mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}}) {{
    %c0 = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
    %r:4 = stablehlo.while(%i = %c0, %h = %x, %a = %w1, %b = %w2) : tensor<i32>, tensor<{B}x{D}xf32>, tensor<{L}x{D}x{F}xf32>, tensor<{L}x{F}x{D}xf32>
      attributes {{mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "d_ff", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = {L} : i64}}
    cond {{
      %n = stablehlo.constant {{mtfc.dims = []}} dense<{L}> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {{mtfc.dims = []}} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    }} do {{
      %z = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
{_ds("%a1", "%a", "%i", (L, D, F), ["layers", "d_model", "d_ff"])}\
      %a2 = stablehlo.reshape %a1 {{mtfc.dims = ["d_model", "d_ff"]}} : (tensor<1x{D}x{F}xf32>) -> tensor<{D}x{F}xf32>
{_ds("%b1", "%b", "%i", (L, F, D), ["layers", "d_ff", "d_model"])}\
      %b2 = stablehlo.reshape %b1 {{mtfc.dims = ["d_ff", "d_model"]}} : (tensor<1x{F}x{D}xf32>) -> tensor<{F}x{D}xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {{mtfc.dims = ["batch", "d_ff"]}} : (tensor<{B}x{D}xf32>, tensor<{D}x{F}xf32>) -> tensor<{B}x{F}xf32>
      %t = stablehlo.tanh %u {{mtfc.dims = ["batch", "d_ff"]}} : tensor<{B}x{F}xf32>
      %v = stablehlo.dot_general %t, %b2, contracting_dims = [1] x [0] {{mtfc.dims = ["batch", "d_model"]}} : (tensor<{B}x{F}xf32>, tensor<{F}x{D}xf32>) -> tensor<{B}x{D}xf32>
      %h2 = stablehlo.add %h, %v {{mtfc.dims = ["batch", "d_model"]}} : tensor<{B}x{D}xf32>
      %one = stablehlo.constant {{mtfc.dims = []}} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {{mtfc.dims = []}} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %b : tensor<i32>, tensor<{B}x{D}xf32>, tensor<{L}x{D}x{F}xf32>, tensor<{L}x{F}x{D}xf32>
    }}
    return %r#1 : tensor<{B}x{D}xf32>
  }}
}}
"""


def mlp_reference(data: dict) -> dict:
    h = data["x"].astype(np.float64)
    w1, w2 = data["params/blocks/wi"], data["params/blocks/wo"]
    for l in range(w1.shape[0]):
        h = h + np.tanh(h @ w1[l]) @ w2[l]
    return {"y": h}


def reverse(layers: int = 4) -> str:
    """A gradient-like loop: it runs over the layers backwards (``k = L - 1 -
    i``), reads the forward's stacked values ``xs[k]``, and writes a stacked
    output ``hs[k]`` with ``dynamic_update_slice`` into a carried zeros buffer:
    ``t = tanh((g + xs[k]) @ w[k]); hs[k] = t; g = t @ w[k]^T``."""
    L = layers
    return f"""
module @loop_reverse attributes {{mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"}} {{
  func.func @main(%g0: tensor<{B}x{D}xf32> {{mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "g", mtfc.role = "input"}},
                  %xs: tensor<{L}x{B}x{D}xf32> {{mtfc.dims = ["layers", "batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "xs", mtfc.role = "input"}},
                  %w: tensor<{L}x{D}x{F}xf32> {{mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/w", mtfc.role = "parameter"}})
      -> (tensor<{B}x{D}xf32> {{mtfc.dims = ["batch", "d_model"], mtfc.name = "g_out", mtfc.role = "output"}},
          tensor<{L}x{B}x{F}xf32> {{mtfc.dims = ["layers", "batch", "d_ff"], mtfc.name = "hs", mtfc.role = "output"}}) {{
    %c0 = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
    %zf = stablehlo.constant {{mtfc.dims = []}} dense<0.0> : tensor<f32>
    %h0 = stablehlo.broadcast_in_dim %zf, dims = [] {{mtfc.dims = ["layers", "batch", "d_ff"]}} : (tensor<f32>) -> tensor<{L}x{B}x{F}xf32>
    %r:5 = stablehlo.while(%i = %c0, %g = %g0, %x = %xs, %a = %w, %h = %h0) : tensor<i32>, tensor<{B}x{D}xf32>, tensor<{L}x{B}x{D}xf32>, tensor<{L}x{D}x{F}xf32>, tensor<{L}x{B}x{F}xf32>
      attributes {{mtfc.dims = [[], ["batch", "d_model"], ["layers", "batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "batch", "d_ff"]],
                  mtfc.classes = ["activation", "activation", "activation", "param", "activation"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = {L} : i64}}
    cond {{
      %n = stablehlo.constant {{mtfc.dims = []}} dense<{L}> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {{mtfc.dims = []}} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    }} do {{
      %z = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
      %last = stablehlo.constant {{mtfc.dims = []}} dense<{L - 1}> : tensor<i32>
      %k = stablehlo.subtract %last, %i {{mtfc.dims = []}} : tensor<i32>
{_ds("%x1", "%x", "%k", (L, B, D), ["layers", "batch", "d_model"])}\
      %x2 = stablehlo.reshape %x1 {{mtfc.dims = ["batch", "d_model"]}} : (tensor<1x{B}x{D}xf32>) -> tensor<{B}x{D}xf32>
{_ds("%a1", "%a", "%k", (L, D, F), ["layers", "d_model", "d_ff"])}\
      %a2 = stablehlo.reshape %a1 {{mtfc.dims = ["d_model", "d_ff"]}} : (tensor<1x{D}x{F}xf32>) -> tensor<{D}x{F}xf32>
      %s = stablehlo.add %g, %x2 {{mtfc.dims = ["batch", "d_model"]}} : tensor<{B}x{D}xf32>
      %y = stablehlo.dot_general %s, %a2, contracting_dims = [1] x [0] {{mtfc.dims = ["batch", "d_ff"]}} : (tensor<{B}x{D}xf32>, tensor<{D}x{F}xf32>) -> tensor<{B}x{F}xf32>
      %t = stablehlo.tanh %y {{mtfc.dims = ["batch", "d_ff"]}} : tensor<{B}x{F}xf32>
      %t1 = stablehlo.reshape %t {{mtfc.dims = ["layers", "batch", "d_ff"]}} : (tensor<{B}x{F}xf32>) -> tensor<1x{B}x{F}xf32>
      %h2 = stablehlo.dynamic_update_slice %h, %t1, %k, %z, %z {{mtfc.dims = ["layers", "batch", "d_ff"]}} : (tensor<{L}x{B}x{F}xf32>, tensor<1x{B}x{F}xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<{L}x{B}x{F}xf32>
      %g2 = stablehlo.dot_general %t, %a2, contracting_dims = [1] x [1] {{mtfc.dims = ["batch", "d_model"]}} : (tensor<{B}x{F}xf32>, tensor<{D}x{F}xf32>) -> tensor<{B}x{D}xf32>
      %one = stablehlo.constant {{mtfc.dims = []}} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {{mtfc.dims = []}} : tensor<i32>
      stablehlo.return %i2, %g2, %x, %a, %h2 : tensor<i32>, tensor<{B}x{D}xf32>, tensor<{L}x{B}x{D}xf32>, tensor<{L}x{D}x{F}xf32>, tensor<{L}x{B}x{F}xf32>
    }}
    return %r#1, %r#4 : tensor<{B}x{D}xf32>, tensor<{L}x{B}x{F}xf32>
  }}
}}
"""


def reverse_reference(data: dict) -> dict:
    g = data["g"].astype(np.float64)
    xs, w = data["xs"], data["params/w"]
    hs = np.zeros((w.shape[0], g.shape[0], w.shape[2]))
    for k in reversed(range(w.shape[0])):
        t = np.tanh((g + xs[k]) @ w[k])
        hs[k] = t
        g = t @ w[k].T
    return {"g_out": g, "hs": hs}


def shift(layers: int = 2) -> str:
    """A loop whose body holds a composite, ``mtfc.shift`` along d_model:
    ``h = tanh(h @ w[l] + shift(h, +1))`` (``shift(h)[:, j] = h[:, j - 1]``, 0 at ``j = 0``)."""
    L = layers
    return f"""
module @loop_shift attributes {{mtfc.layout = "d_model:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"}} {{
  func.func @main(%x: tensor<{B}x{D}xf32> {{mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}},
                  %w: tensor<{L}x{D}x{D}xf32> {{mtfc.dims = ["layers", "d_in", "d_model"], mtfc.init = "normal:0.25", mtfc.name = "params/w", mtfc.role = "parameter"}})
      -> (tensor<{B}x{D}xf32> {{mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}}) {{
    %c0 = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
    %r:3 = stablehlo.while(%i = %c0, %h = %x, %a = %w) : tensor<i32>, tensor<{B}x{D}xf32>, tensor<{L}x{D}x{D}xf32>
      attributes {{mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_in", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = {L} : i64}}
    cond {{
      %n = stablehlo.constant {{mtfc.dims = []}} dense<{L}> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {{mtfc.dims = []}} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    }} do {{
      %z = stablehlo.constant {{mtfc.dims = []}} dense<0> : tensor<i32>
{_ds("%a1", "%a", "%i", (L, D, D), ["layers", "d_in", "d_model"])}\
      %a2 = stablehlo.reshape %a1 {{mtfc.dims = ["d_in", "d_model"]}} : (tensor<1x{D}x{D}xf32>) -> tensor<{D}x{D}xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {{mtfc.dims = ["batch", "d_model"]}} : (tensor<{B}x{D}xf32>, tensor<{D}x{D}xf32>) -> tensor<{B}x{D}xf32>
      %s = stablehlo.composite "mtfc.shift" %h {{composite_attributes = {{dim = 1 : i64, offset = 1 : i64, wrap = false}}, decomposition = @mtfc.shift, mtfc.dims = ["batch", "d_model"]}} : (tensor<{B}x{D}xf32>) -> tensor<{B}x{D}xf32>
      %e = stablehlo.add %u, %s {{mtfc.dims = ["batch", "d_model"]}} : tensor<{B}x{D}xf32>
      %h2 = stablehlo.tanh %e {{mtfc.dims = ["batch", "d_model"]}} : tensor<{B}x{D}xf32>
      %one = stablehlo.constant {{mtfc.dims = []}} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {{mtfc.dims = []}} : tensor<i32>
      stablehlo.return %i2, %h2, %a : tensor<i32>, tensor<{B}x{D}xf32>, tensor<{L}x{D}x{D}xf32>
    }}
    return %r#1 : tensor<{B}x{D}xf32>
  }}
  func.func private @mtfc.shift(%arg0: tensor<{B}x{D}xf32>) -> tensor<{B}x{D}xf32> {{
    %cst = stablehlo.constant {{mtfc.dims = []}} dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [0, 1], high = [0, {D - 1}], interior = [0, 0] {{mtfc.dims = ["batch", "d_model"]}} : (tensor<{B}x{D}xf32>, tensor<f32>) -> tensor<{B}x{2 * D}xf32>
    %1 = stablehlo.slice %0 [0:{B}, 0:{D}] {{mtfc.dims = ["batch", "d_model"]}} : (tensor<{B}x{2 * D}xf32>) -> tensor<{B}x{D}xf32>
    return %1 : tensor<{B}x{D}xf32>
  }}
}}
"""


def shift_reference(data: dict) -> dict:
    h = data["x"].astype(np.float64)
    w = data["params/w"]
    for l in range(w.shape[0]):
        s = np.zeros_like(h)
        s[:, 1:] = h[:, :-1]
        h = np.tanh(h @ w[l] + s)
    return {"y": h}
