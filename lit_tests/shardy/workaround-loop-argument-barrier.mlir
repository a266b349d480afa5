// Workaround `loop-argument-barrier` (mtfc/passes/shardy/workarounds.py): a
// loop body reads its block arguments through one optimization_barrier
// carrying their closed shardings, so that an op Shardy types from its
// operand's type (the all_gather of the carried h, split along d_model for
// the shift) is typed from a local value; the barrier is gone from the
// per-device program.  Skipped, jaxlib 0.10's sdy-convert-global-to-local
// types that all_gather from the global block argument (8x64 instead of
// 8x16) behind an unrealized_conversion_cast, which sdy-partition refuses.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=loop-argument-barrier not mtfc opt %s --passes sdy-partition --no-debug-info > %t.SKIP 2>&1
// RUN: FileCheck %s --check-prefix=SKIP --input-file %t.SKIP

// CHECK: } do {
// CHECK-NOT: optimization_barrier
// CHECK: "stablehlo.all_gather"(%iterArg_0) <{all_gather_dim = 1 : i64
// CHECK-SAME: (tensor<8x4xf32>) -> tensor<8x16xf32>
// CHECK-NOT: unrealized_conversion_cast
// CHECK: module @mtfc.reference

// SKIP: error: sdy-partition: Shardy left builtin.unrealized_conversion_cast in the per-device program

module @loop_shift attributes {mtfc.layout = "d_model:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                  %w: tensor<2x16x16xf32> {mtfc.dims = ["layers", "d_in", "d_model"], mtfc.init = "normal:0.25", mtfc.name = "params/w", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %r:3 = stablehlo.while(%i = %c0, %h = %x, %a = %w) : tensor<i32>, tensor<8x16xf32>, tensor<2x16x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_in", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 2 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<2> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %i, %z, %z, sizes = [1, 16, 16] {mtfc.dims = ["layers", "d_in", "d_model"]} : (tensor<2x16x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x16xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_in", "d_model"]} : (tensor<1x16x16xf32>) -> tensor<16x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
      %s = stablehlo.composite "mtfc.shift" %h {composite_attributes = {dim = 1 : i64, offset = 1 : i64, wrap = false}, decomposition = @mtfc.shift, mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %e = stablehlo.add %u, %s {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %h2 = stablehlo.tanh %e {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a : tensor<i32>, tensor<8x16xf32>, tensor<2x16x16xf32>
    }
    return %r#1 : tensor<8x16xf32>
  }
  func.func private @mtfc.shift(%arg0: tensor<8x16xf32>) -> tensor<8x16xf32> {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [0, 1], high = [0, 15], interior = [0, 0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x32xf32>
    %1 = stablehlo.slice %0 [0:8, 0:16] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>) -> tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}
