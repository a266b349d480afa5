// Table row: a convolution with a split spatial dim -> collective_permute of
// exactly the halo each shard needs, never an all_gather.  3x1 SAME kernel,
// h (16) split over cols (4): each device gets the last row of the previous
// block and the first row of the next (the edge devices receive zeros: the
// zero padding) and convolves its 1 + 4 + 1 rows with no padding.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: %[[LO:.*]] = stablehlo.slice %arg0 [0:2, 3:4, 0:4, 0:4] {mtfc.dims = ["b", "h", "w", "c"]}
// CHECK-NEXT: %[[FROM_PREV:.*]] = "stablehlo.collective_permute"(%[[LO]]) <{source_target_pairs = dense<{{\[}}[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7]]>
// CHECK-NEXT: %[[HI:.*]] = stablehlo.slice %arg0 [0:2, 0:1, 0:4, 0:4]
// CHECK-NEXT: %[[FROM_NEXT:.*]] = "stablehlo.collective_permute"(%[[HI]]) <{source_target_pairs = dense<{{\[}}[1, 0], [2, 1], [3, 2], [5, 4], [6, 5], [7, 6]]>
// CHECK-NEXT: %[[WIN:.*]] = stablehlo.concatenate %[[FROM_PREV]], %arg0, %[[FROM_NEXT]], dim = 1 {mtfc.dims = ["b", "h", "w", "c"]} : {{.*}} -> tensor<2x6x4x4xf32>
// CHECK-NEXT: %[[Y:.*]] = stablehlo.convolution(%[[WIN]], %arg1) {{.*}} pad = {{\[}}[0, 0], [0, 0]]{{.*}} mtfc.dims = ["b", "h", "w", "o"]{{.*}} -> tensor<2x4x4x4xf32>
// CHECK-NEXT: return %[[Y]]
// CHECK-NOT: all_gather

module @model attributes {mtfc.layout = "h:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<3x1x4x4xf32> {mtfc.dims = ["kh", "kw", "c", "o"], mtfc.init = "normal:1.0", mtfc.name = "k", mtfc.role = "input"}) -> (tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "o"], mtfc.name = "out", mtfc.role = "output"}) {
    %0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [1, 1], pad = [[1, 1], [0, 0]], lhs_dilate = [1, 1], rhs_dilate = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64, mtfc.dims = ["b", "h", "w", "o"]} : (tensor<2x16x4x4xf32>, tensor<3x1x4x4xf32>) -> tensor<2x16x4x4xf32>
    return %0 : tensor<2x16x4x4xf32>
  }
}

