// The merged all_reduce names every op it serves: its location fuses the
// members' locations, in order (bisect and inspect read them).
// RUN: mtfc opt %s --passes fuse-collectives | FileCheck %s

// CHECK: [[X:#loc[0-9]+]] = loc("sum_x"
// CHECK: [[Y:#loc[0-9]+]] = loc("sum_y"
// CHECK: [[F:#loc[0-9]+]] = loc(fused{{\[}}[[X]], [[Y]]{{\]}})
// CHECK: "stablehlo.all_reduce"(%{{.*}}, %{{.*}})
// CHECK: -> (tensor<8xf32>, tensor<8xf32>) loc([[F]])
// CHECK-NOT: all_reduce

module @fz attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "y", mtfc.role = "input"}) -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "sx", mtfc.role = "output"}, tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "sy", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x4xf32>, tensor<f32>) -> tensor<8xf32>
    %1 = "stablehlo.all_reduce"(%0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):
      %5 = stablehlo.add %arg2, %arg3 : tensor<f32>
      stablehlo.return %5 : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<8xf32>) -> tensor<8xf32> loc("sum_x"("model.py":3:1))
    %cst_0 = stablehlo.constant {mtfc.dims = ["batch", "d"]} dense<2.000000e+00> : tensor<8x4xf32>
    %2 = stablehlo.multiply %arg1, %cst_0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    %cst_1 = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %3 = stablehlo.reduce(%2 init: %cst_1) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x4xf32>, tensor<f32>) -> tensor<8xf32>
    %4 = "stablehlo.all_reduce"(%3) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):
      %5 = stablehlo.add %arg2, %arg3 : tensor<f32>
      stablehlo.return %5 : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<8xf32>) -> tensor<8xf32> loc("sum_y"("model.py":4:1))
    return %1, %4 : tensor<8xf32>, tensor<8xf32>
  }
}
