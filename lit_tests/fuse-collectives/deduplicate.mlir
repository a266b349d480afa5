// Identical collectives of the same operand become one.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: %[[G:.*]] = "stablehlo.all_gather"(%arg0)
// CHECK-NEXT: stablehlo.concatenate %[[G]], %[[G]], dim = 1
// CHECK-NOT: all_gather
module @dedup attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x32xf32> {mtfc.dims = ["batch", "d2"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {mtfc.dims = ["batch", "d"]} : (tensor<8x4xf32>) -> tensor<8x16xf32>
    %1 = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {mtfc.dims = ["batch", "d"]} : (tensor<8x4xf32>) -> tensor<8x16xf32>
    %2 = stablehlo.concatenate %0, %1, dim = 1 {mtfc.dims = ["batch", "d2"]} : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x32xf32>
    return %2 : tensor<8x32xf32>
  }
}
