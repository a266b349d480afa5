// Table row: replace_dims that merges a split dim into a whole one
// (heads x d_k -> d): all_gather along heads over `cols`, then a local reshape.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: %[[G:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {mtfc.dims = ["batch", "heads", "d_k"]} : (tensor<4x1x4xf32>) -> tensor<4x4x4xf32>
// CHECK-NEXT: stablehlo.reshape %[[G]] {mtfc.dims = ["batch", "d"]} : (tensor<4x4x4xf32>) -> tensor<4x16xf32>

module @merge_heads attributes {mtfc.layout = "batch:rows,heads:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4x4xf32> {mtfc.dims = ["batch", "heads", "d_k"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.reshape %arg0 {mtfc.dims = ["batch", "d"]} : (tensor<8x4x4xf32>) -> tensor<8x16xf32>
    return %0 : tensor<8x16xf32>
  }
}

