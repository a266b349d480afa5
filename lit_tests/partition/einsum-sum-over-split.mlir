// Table row: an einsum that sums over a split dim -> all_reduce over that dim's
// mesh axis.  d is on `cols`, so each row of the 2x4 mesh reduces together.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: module @matmul attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, {{.*}}mtfc.partitioning = "explicit"}
// CHECK: func.func @main(%arg0: tensor<4x4xf32> {mtfc.dims = ["batch", "d"]{{.*}}, %arg1: tensor<4x8xf32> {mtfc.dims = ["d", "f"]
// CHECK-NEXT: %[[DOT:.*]] = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "f"]} : (tensor<4x4xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
// CHECK-NEXT: %[[SUM:.*]] = "stablehlo.all_reduce"(%[[DOT]]) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}>
// CHECK: stablehlo.add
// CHECK: {mtfc.dims = ["batch", "f"]} : (tensor<4x8xf32>) -> tensor<4x8xf32>
// CHECK-NEXT: return %[[SUM]] : tensor<4x8xf32>
// The global program stays alongside, for `mtfc run --check`.
// CHECK: module @mtfc.reference attributes {{{.*}}mtfc.partitioning = "none"}
// CHECK: stablehlo.dot_general {{.*}} -> tensor<8x8xf32>

module @matmul attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<16x8xf32> {mtfc.dims = ["d", "f"], mtfc.init = "normal:1.0", mtfc.name = "w", mtfc.role = "input"}) -> (tensor<8x8xf32> {mtfc.dims = ["batch", "f"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "f"]} : (tensor<8x16xf32>, tensor<16x8xf32>) -> tensor<8x8xf32>
    return %0 : tensor<8x8xf32>
  }
}

