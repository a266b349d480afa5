// A 3-wide SAME max pool (stablehlo.reduce_window) along d, split over cols:
// each device receives exactly its one-column halo from each neighbour
// (collective_permute, never an all_gather), the rows past the global edges
// are -inf (the init value), and the local reduce_window runs unpadded.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: %[[CST:.*]] = stablehlo.constant {mtfc.dims = []} dense<0xFF800000> : tensor<f32>
// CHECK: %[[LAST:.*]] = stablehlo.slice %arg0 [0:2, 3:4] {mtfc.dims = ["batch", "d"]} : (tensor<2x4xf32>) -> tensor<2x1xf32>
// CHECK-NEXT: %[[LEFT:.*]] = "stablehlo.collective_permute"(%[[LAST]]) <{source_target_pairs = dense<{{\[}}[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7]]> : tensor<6x2xi64>}>
// CHECK-NEXT: %[[FIRST:.*]] = stablehlo.slice %arg0 [0:2, 0:1]
// CHECK-NEXT: %[[RIGHT:.*]] = "stablehlo.collective_permute"(%[[FIRST]]) <{source_target_pairs = dense<{{\[}}[1, 0], [2, 1], [3, 2], [5, 4], [6, 5], [7, 6]]> : tensor<6x2xi64>}>
// CHECK-NEXT: %[[EXT:.*]] = stablehlo.concatenate %[[LEFT]], %arg0, %[[RIGHT]], dim = 1 {mtfc.dims = ["batch", "d"]} : (tensor<2x1xf32>, tensor<2x4xf32>, tensor<2x1xf32>) -> tensor<2x6xf32>
// CHECK: dense<[-1, 3, 7, 11, -1, 3, 7, 11]> : tensor<8xi32>
// CHECK: %[[FILL:.*]] = stablehlo.broadcast_in_dim %[[CST]], dims = [] {mtfc.dims = ["batch", "d"]} : (tensor<f32>) -> tensor<2x6xf32>
// CHECK-NEXT: %[[X:.*]] = stablehlo.select %{{.*}}, %[[EXT]], %[[FILL]]
// CHECK-NEXT: "stablehlo.reduce_window"(%[[X]], %[[CST]]) <{base_dilations = array<i64: 1, 1>, padding = dense<0> : tensor<2x2xi64>, window_dilations = array<i64: 1, 1>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}>
// CHECK: stablehlo.maximum
// CHECK: {mtfc.dims = ["batch", "d"]} : (tensor<2x6xf32>, tensor<f32>) -> tensor<2x4xf32>
// CHECK-NOT: all_gather
// CHECK: module @mtfc.reference

module @pool attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0xFF800000> : tensor<f32>
    %0 = "stablehlo.reduce_window"(%arg0, %cst) <{padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}> ({
    ^bb0(%arg1: tensor<f32>, %arg2: tensor<f32>):
      %1 = stablehlo.maximum %arg1, %arg2 : tensor<f32>
      stablehlo.return %1 : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<f32>) -> tensor<2x16xf32>
    return %0 : tensor<2x16xf32>
  }
}
