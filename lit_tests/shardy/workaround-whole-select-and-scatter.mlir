// Workaround `whole-select-and-scatter` (mtfc/passes/shardy/workarounds.py):
// Shardy (jaxlib 0.10) aborts on a select_and_scatter (max pooling's gradient,
// the inlined `mtfc.select_and_scatter` composite) with a split windowed dim,
// so sdy-partition computes it whole along its windowed dims: both operands
// resharded with `d` whole, the op whole along `d`, the result resharded back.
// Skipped, Shardy is asked to partition it split (and aborts): no reshard.
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=whole-select-and-scatter mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s --check-prefix=SKIP

// CHECK-LABEL: func.func @main
// CHECK: %[[X:.*]] = sdy.reshard %arg0 <@mesh, [{}, {}]> {mtfc.dims = ["batch", "d"]}
// CHECK-NEXT: %[[G:.*]] = sdy.reshard %arg1 <@mesh, [{}, {}]> {mtfc.dims = ["batch", "d"]}
// CHECK-NEXT: %[[Y:.*]] = "stablehlo.select_and_scatter"(%[[X]], %[[G]], %{{.*}})
// CHECK: %[[B:.*]] = sdy.reshard %[[Y]] <@mesh, [{}, {"cols"}]> {mtfc.dims = ["batch", "d"]}
// CHECK-NEXT: return %[[B]]

// SKIP-NOT: sdy.reshard
// SKIP: "stablehlo.select_and_scatter"(%arg0, %arg1, %{{.*}})
// SKIP-NOT: sdy.reshard

module @max_pool_grad attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "g", mtfc.role = "input"}) -> (tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "gx", mtfc.role = "output"}) {
    %0 = stablehlo.composite "mtfc.select_and_scatter" %arg0, %arg1 {composite_attributes = {padding_high = array<i64: 0, 1>, padding_low = array<i64: 0, 1>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}, decomposition = @mtfc.select_and_scatter, mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<2x16xf32>) -> tensor<2x16xf32>
    return %0 : tensor<2x16xf32>
  }
  func.func private @mtfc.select_and_scatter(%arg0: tensor<2x16xf32>, %arg1: tensor<2x16xf32>) -> tensor<2x16xf32> {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = "stablehlo.select_and_scatter"(%arg0, %arg1, %cst) <{padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}> ({
    ^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):
      %1 = stablehlo.compare GE, %arg2, %arg3 : (tensor<f32>, tensor<f32>) -> tensor<i1>
      stablehlo.return %1 : tensor<i1>
    }, {
    ^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):
      %1 = stablehlo.add %arg2, %arg3 : tensor<f32>
      stablehlo.return %1 : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<2x16xf32>, tensor<f32>) -> tensor<2x16xf32>
    return %0 : tensor<2x16xf32>
  }
}
