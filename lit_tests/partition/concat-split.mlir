// Concatenating along a split dim into a whole dim (d2 has no rule): the
// operand is all_gathered once (the partitioner reuses a reshard of the same
// value), then a local concatenate.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: %[[G:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {{.*}} -> tensor<8x16xf32>
// CHECK-NEXT: stablehlo.concatenate %[[G]], %[[G]], dim = 1 {mtfc.dims = ["batch", "d2"]} : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x32xf32>
// CHECK-NOT: all_gather

module @concat attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x32xf32> {mtfc.dims = ["batch", "d2"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.concatenate %arg0, %arg0, dim = 1 {mtfc.dims = ["batch", "d2"]} : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x32xf32>
    return %0 : tensor<8x32xf32>
  }
}

