// XLA's SPMD partitioner (jaxlib 0.10) mis-partitions select_and_scatter along a
// split windowed dim with overlapping windows, so attach-shardings keeps
// mtfc.select_and_scatter whole along its windowed dims (mtfc/passes/gspmd_windows.py):
// its operands and its result pass through custom_call @Sharding with `d`
// unsplit, each marked `mtfc.whole = ["d"]` (verify-names accepts that
// sharding); `batch` (no window) keeps its split.
// RUN: mtfc opt %s --passes attach-shardings,verify-names --no-debug-info | FileCheck %s --check-prefix=VERIFIED
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: %[[X:.*]] = stablehlo.custom_call @Sharding(%arg0) {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}", mtfc.dims = ["batch", "d"], mtfc.whole = ["d"]}
// CHECK-NEXT: %[[G:.*]] = stablehlo.custom_call @Sharding(%arg1) {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}", mtfc.dims = ["batch", "d"], mtfc.whole = ["d"]}
// CHECK-NEXT: %[[S:.*]] = stablehlo.composite "mtfc.select_and_scatter" %[[X]], %[[G]] {{.*}}mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"
// CHECK-NEXT: %[[Y:.*]] = stablehlo.custom_call @Sharding(%[[S]]) {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"
// CHECK-NEXT: return %[[Y]]
// VERIFIED: mtfc.partitioning = "gspmd"

module @max_pool_grad attributes {mtfc.layout = "d:cols,batch:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
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
