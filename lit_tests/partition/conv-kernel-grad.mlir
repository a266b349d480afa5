// A kernel gradient (the input x convolved with the output gradient t, as
// mtf.grad builds it) with h split over cols: x's halo rows come from the
// neighbours, each device sums its own rows into a partial kernel, and one
// all_reduce over cols completes it.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: "stablehlo.collective_permute"
// CHECK: "stablehlo.collective_permute"
// CHECK: %[[WIN:.*]] = stablehlo.concatenate {{.*}} -> tensor<2x6x4x4xf32>
// CHECK-NEXT: %[[P:.*]] = stablehlo.convolution(%[[WIN]], %arg1) {{.*}} mtfc.dims = ["kh", "kw", "c", "o"]{{.*}} -> tensor<3x1x4x4xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%[[P]]) <{replica_groups = dense<{{\[}}[0, 1, 2, 3], [4, 5, 6, 7]]>
// CHECK-NOT: all_gather

module @model attributes {mtfc.layout = "h:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "o"], mtfc.init = "normal:1.0", mtfc.name = "t", mtfc.role = "input"}) -> (tensor<3x1x4x4xf32> {mtfc.dims = ["kh", "kw", "c", "o"], mtfc.name = "out", mtfc.role = "output"}) {
    %0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [f, 0, 1, b]x[i, 0, 1, o]->[0, 1, b, f], window = {stride = [1, 1], pad = [[1, 1], [0, 0]], lhs_dilate = [1, 1], rhs_dilate = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64, mtfc.dims = ["kh", "kw", "c", "o"]} : (tensor<2x16x4x4xf32>, tensor<2x16x4x4xf32>) -> tensor<3x1x4x4xf32>
    return %0 : tensor<3x1x4x4xf32>
  }
}

