// Table row: a convolution summing over split input features (c over cols):
// each device convolves its own features, then an all_reduce over cols.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: %[[P:.*]] = stablehlo.convolution(%arg0, %arg1) {{.*}} : (tensor<2x16x4x1xf32>, tensor<3x1x1x4xf32>) -> tensor<2x16x4x4xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%[[P]]) <{replica_groups = dense<{{\[}}[0, 1, 2, 3], [4, 5, 6, 7]]>
// CHECK-NOT: collective_permute
// CHECK-NOT: all_gather

module @model attributes {mtfc.layout = "c:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<3x1x4x4xf32> {mtfc.dims = ["kh", "kw", "c", "o"], mtfc.init = "normal:1.0", mtfc.name = "k", mtfc.role = "input"}) -> (tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "o"], mtfc.name = "out", mtfc.role = "output"}) {
    %0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [1, 1], pad = [[1, 1], [0, 0]], lhs_dilate = [1, 1], rhs_dilate = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64, mtfc.dims = ["b", "h", "w", "o"]} : (tensor<2x16x4x4xf32>, tensor<3x1x4x4xf32>) -> tensor<2x16x4x4xf32>
    return %0 : tensor<2x16x4x4xf32>
  }
}

