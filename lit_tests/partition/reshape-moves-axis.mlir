// Table row: a reshape after which a mesh axis splits another dim ([a, c] with
// a on `cols` -> [a2, c2] with c2 on `cols`): one all_to_all.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: %[[T:.*]] = "stablehlo.all_to_all"(%arg0) <{concat_dimension = 0 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, split_count = 4 : i64, split_dimension = 1 : i64}> {mtfc.dims = ["a", "c"]} : (tensor<2x8xf32>) -> tensor<8x2xf32>
// CHECK-NEXT: stablehlo.reshape %[[T]] {mtfc.dims = ["a2", "c2"]} : (tensor<8x2xf32>) -> tensor<8x2xf32>
// CHECK-NOT: all_gather

module @axis_moves attributes {mtfc.layout = "a:cols,c2:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x8xf32> {mtfc.dims = ["a", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x8xf32> {mtfc.dims = ["a2", "c2"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.reshape %arg0 {mtfc.dims = ["a2", "c2"]} : (tensor<8x8xf32>) -> tensor<8x8xf32>
    return %0 : tensor<8x8xf32>
  }
}

