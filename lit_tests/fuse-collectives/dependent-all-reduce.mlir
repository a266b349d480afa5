// An all_reduce that reads another's result is not merged with it.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: %[[A:.*]] = "stablehlo.all_reduce"(%arg0)
// CHECK: %[[E:.*]] = stablehlo.exponential %[[A]]
// CHECK: "stablehlo.all_reduce"(%[[E]])
module @dep attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<8xf32>) -> tensor<8xf32>
    %1 = stablehlo.exponential %0 {mtfc.dims = ["batch"]} : tensor<8xf32>
    %2 = "stablehlo.all_reduce"(%1) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<8xf32>) -> tensor<8xf32>
    return %2 : tensor<8xf32>
  }
}
