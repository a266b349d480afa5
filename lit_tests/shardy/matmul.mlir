// sdy-partition on a matmul that sums over a split dim: Shardy's per-device
// program has local shapes and one all_reduce over the devices that split
// the summed dim (row-major device ids: rows major, cols minor).
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info --layout "batch:cols,d:rows" | FileCheck %s --check-prefix=ROWS
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info --layout "d:rows+cols" | FileCheck %s --check-prefix=BOTH

// CHECK: module @matmul attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32, mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "shardy"}
// CHECK-NOT: sdy.
// CHECK: func.func @main(%arg0: tensor<4x4xf32> {mhlo.sharding = "{manual}", mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4x16xf32> {mhlo.sharding = "{manual}", mtfc.dims = ["d", "h"], mtfc.name = "w", mtfc.role = "parameter"}) -> (tensor<4x16xf32> {mhlo.sharding = "{manual}", mtfc.dims = ["batch", "h"], mtfc.name = "y", mtfc.role = "output"})
// CHECK-NEXT: %[[DOT:.*]] = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "h"]} : (tensor<4x4xf32>, tensor<4x16xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[SUM:.*]] = "stablehlo.all_reduce"(%[[DOT]])
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, use_global_device_ids
// CHECK: stablehlo.add
// CHECK: }) {mtfc.dims = ["batch", "h"]} : (tensor<4x16xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: return %[[SUM]] : tensor<4x16xf32>
// The global program, unpartitioned, for `mtfc run --check`.
// CHECK: module @mtfc.reference attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"}
// CHECK: func.func @main(%arg0: tensor<8x16xf32>
// CHECK-NOT: all_reduce

// ROWS: func.func @main(%arg0: tensor<2x8xf32> {{.*}}, %arg1: tensor<8x16xf32> {{.*}}) -> (tensor<2x16xf32>
// ROWS: stablehlo.dot_general {{.*}} -> tensor<2x16xf32>
// ROWS-NEXT: "stablehlo.all_reduce"
// ROWS-SAME{LITERAL}: replica_groups = dense<[[0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>

// BOTH: func.func @main(%arg0: tensor<8x2xf32> {{.*}}, %arg1: tensor<2x16xf32> {{.*}}) -> (tensor<8x16xf32>
// BOTH: "stablehlo.all_reduce"
// BOTH-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]> : tensor<1x8xi64>

module @matmul attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<16x16xf32> {mtfc.dims = ["d", "h"], mtfc.name = "w", mtfc.role = "parameter"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "h"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "h"]} : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
    return %0 : tensor<8x16xf32>
  }
}
