// A stride-2 transposed convolution (lhs dilation 2, 3x1 kernel, padding
// (1, 2)) with h split over cols: blocks align in dilated coordinates
// (4 outputs * stride 1 = 2 rows * dilation 2), so each device needs its own
// 2 rows and the first real row of the next block -- one 1-row
// collective_permute from the next device, local padding (1, 0), never a gather.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: %[[HI:.*]] = stablehlo.slice %arg0 [0:2, 0:1, 0:4, 0:4]
// CHECK-NEXT: %[[FROM_NEXT:.*]] = "stablehlo.collective_permute"(%[[HI]]) <{source_target_pairs = dense<{{\[}}[1, 0], [2, 1], [3, 2], [5, 4], [6, 5], [7, 6]]>{{.*}} : (tensor<2x1x4x4xf32>) -> tensor<2x1x4x4xf32>
// CHECK-NEXT: %[[WIN:.*]] = stablehlo.concatenate %arg0, %[[FROM_NEXT]], dim = 1 {{.*}} -> tensor<2x3x4x4xf32>
// CHECK-NEXT: stablehlo.convolution(%[[WIN]], %arg1) {{.*}}pad = {{\[}}[1, 0], [0, 0]], lhs_dilate = [2, 1]{{.*}} -> tensor<2x4x4x4xf32>
// CHECK-NOT: collective_permute
// CHECK-NOT: all_gather

module @model attributes {mtfc.layout = "h:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x8x4x4xf32> {mtfc.dims = ["b", "h", "w", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<3x1x4x4xf32> {mtfc.dims = ["kh", "kw", "c", "o"], mtfc.init = "normal:1.0", mtfc.name = "k", mtfc.role = "input"}) -> (tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "o"], mtfc.name = "out", mtfc.role = "output"}) {
    %0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [1, 1], pad = [[1, 2], [0, 0]], lhs_dilate = [2, 1], rhs_dilate = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64, mtfc.dims = ["b", "h", "w", "o"]} : (tensor<2x8x4x4xf32>, tensor<3x1x4x4xf32>) -> tensor<2x16x4x4xf32>
    return %0 : tensor<2x16x4x4xf32>
  }
}
