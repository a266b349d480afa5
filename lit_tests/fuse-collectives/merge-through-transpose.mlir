// Two gradients, each all_reduced and then transposed into its parameter's
// dim order: the all_reduces move after the transposes (a sum commutes with
// moving elements) and then merge into one variadic all_reduce.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: %[[A:.*]] = stablehlo.transpose %arg0, dims = [1, 0] {mtfc.dims = ["d", "f"]} : (tensor<16x8xf32>) -> tensor<8x16xf32>
// CHECK: %[[B:.*]] = stablehlo.reshape %arg1 {mtfc.dims = ["e"]} : (tensor<2x4xf32>) -> tensor<8xf32>
// CHECK-NEXT: %[[R:.*]]:2 = "stablehlo.all_reduce"(%[[A]], %[[B]]) <{replica_groups = dense<{{\[\[}}0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>}>
// CHECK: {mtfc.dims = {{\[\[}}"d", "f"], ["e"]]} : (tensor<8x16xf32>, tensor<8xf32>) -> (tensor<8x16xf32>, tensor<8xf32>)
// CHECK-NEXT: return %[[R]]#0, %[[R]]#1
// CHECK-NOT: all_reduce
module @sinkmerge attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<16x8xf32> {mtfc.dims = ["f", "d"], mtfc.name = "g", mtfc.role = "input"}, %arg1: tensor<2x4xf32> {mtfc.dims = ["a", "b"], mtfc.name = "h", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["d", "f"], mtfc.name = "dw", mtfc.role = "output"}, tensor<8xf32> {mtfc.dims = ["e"], mtfc.name = "db", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{replica_groups = dense<[[0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["f", "d"]} : (tensor<16x8xf32>) -> tensor<16x8xf32>
    %1 = stablehlo.transpose %0, dims = [1, 0] {mtfc.dims = ["d", "f"]} : (tensor<16x8xf32>) -> tensor<8x16xf32>
    %2 = "stablehlo.all_reduce"(%arg1) <{replica_groups = dense<[[0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["a", "b"]} : (tensor<2x4xf32>) -> tensor<2x4xf32>
    %3 = stablehlo.reshape %2 {mtfc.dims = ["e"]} : (tensor<2x4xf32>) -> tensor<8xf32>
    return %1, %3 : tensor<8x16xf32>, tensor<8xf32>
  }
}
