// sdy-partition on an optimization_barrier of split values (what
// `mtf.recompute()` lowers its block's inputs through): Shardy passes the
// barrier's closed shardings through, so each device's barrier holds its own
// blocks, and the matmul after it sums over the split dim as without it.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s

// CHECK: func.func @main(%arg0: tensor<4x4xf32> {{.*}}, %arg1: tensor<4x16xf32> {{.*}}) -> (tensor<4x16xf32>
// CHECK-NEXT: %[[B:.*]]:2 = stablehlo.optimization_barrier {mtfc.dims = {{\[\[}}"batch", "d"], ["d", "h"]]} %arg0, %arg1 : tensor<4x4xf32>, tensor<4x16xf32>
// CHECK-NEXT: %[[DOT:.*]] = stablehlo.dot_general %[[B]]#0, %[[B]]#1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "h"]} : (tensor<4x4xf32>, tensor<4x16xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[SUM:.*]] = "stablehlo.all_reduce"(%[[DOT]])
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, use_global_device_ids
// CHECK: return %[[SUM]] : tensor<4x16xf32>
// CHECK: module @mtfc.reference

module @barrier attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<16x16xf32> {mtfc.dims = ["d", "h"], mtfc.name = "w", mtfc.role = "parameter"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "h"], mtfc.name = "y", mtfc.role = "output"}) {
    %b:2 = stablehlo.optimization_barrier {mtfc.dims = [["batch", "d"], ["d", "h"]]} %arg0, %arg1 : tensor<8x16xf32>, tensor<16x16xf32>
    %0 = stablehlo.dot_general %b#0, %b#1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "h"]} : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
    return %0 : tensor<8x16xf32>
  }
}
