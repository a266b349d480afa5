// Shardy (jaxlib 0.10) aborts on a reduce_window (or select_and_scatter) with a
// split windowed dim, so sdy-partition computes it whole along its windowed
// dims (workaround `whole-reduce-window`, mtfc/passes/shardy/workarounds.py): sdy.reshard of the operand to `d`
// whole, the op's closed sharding whole along `d`, and a reshard of the result
// back to its layout.
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=PART
// Skipped, Shardy's sdy-convert-global-to-local fails a CHECK and aborts the process.
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=whole-reduce-window mtfc opt %s --passes sdy-partition > %t.SKIP 2>&1 || true
// RUN: FileCheck %s --check-prefix=SKIP --input-file %t.SKIP
// SKIP: In op stablehlo.reduce_window dimension 1 is sharded but is not a pass-through dimension

// CHECK-LABEL: func.func @main
// CHECK: %[[X:.*]] = sdy.reshard %arg0 <@mesh, [{}, {}]> {mtfc.dims = ["batch", "d"]}
// CHECK-NEXT: %[[Y:.*]] = "stablehlo.reduce_window"(%[[X]], %{{.*}})
// CHECK: sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{}, {}]>]>
// CHECK-NEXT: %[[B:.*]] = sdy.reshard %[[Y]] <@mesh, [{}, {"cols"}]> {mtfc.dims = ["batch", "d"]}
// CHECK-NEXT: return %[[B]]

// PART-LABEL: func.func @main
// PART: stablehlo.all_gather
// PART: stablehlo.reduce_window
// PART: (tensor<2x16xf32>, tensor<f32>) -> tensor<2x16xf32>
// PART: stablehlo.dynamic_slice

module @pool attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0xFF800000> : tensor<f32>
    %0 = "stablehlo.reduce_window"(%arg0, %cst) <{padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}> ({
    ^bb0(%arg1: tensor<f32>, %arg2: tensor<f32>):
      %1 = stablehlo.maximum %arg1, %arg2 : tensor<f32>
      stablehlo.return %1 : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<f32>) -> tensor<2x16xf32>
    return %0 : tensor<2x16xf32>
  }
}
