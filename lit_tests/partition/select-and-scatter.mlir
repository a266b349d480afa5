// Max pooling's gradient, stablehlo.composite "mtfc.select_and_scatter",
// along d split over cols: the operand's one-column halos come in (-inf at
// the global edges), the local select_and_scatter writes a 6-column window,
// and the columns it wrote into the neighbours' blocks go back to them by
// collective_permute and are added there.  No all_gather.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK-NOT: stablehlo.composite
// CHECK: "stablehlo.collective_permute"{{.*}}source_target_pairs = dense<{{\[}}[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7]]>
// CHECK: "stablehlo.collective_permute"{{.*}}source_target_pairs = dense<{{\[}}[1, 0], [2, 1], [3, 2], [5, 4], [6, 5], [7, 6]]>
// CHECK: %[[S:.*]] = "stablehlo.select_and_scatter"(%{{.*}}, %arg1, %{{.*}}) <{padding = dense<0> : tensor<2x2xi64>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}>
// CHECK: stablehlo.compare GE
// CHECK: stablehlo.add
// CHECK: (tensor<2x6xf32>, tensor<2x4xf32>, tensor<f32>) -> tensor<2x6xf32>
// CHECK-NEXT: %[[OWN:.*]] = stablehlo.slice %[[S]] [0:2, 1:5]
// the column written before the block: to the previous device, added at its end
// CHECK: %[[L:.*]] = stablehlo.slice %[[S]] [0:2, 0:1]
// CHECK-NEXT: %[[LS:.*]] = "stablehlo.collective_permute"(%[[L]]) <{source_target_pairs = dense<{{\[}}[1, 0], [2, 1], [3, 2], [5, 4], [6, 5], [7, 6]]>
// CHECK-NEXT: %[[LP:.*]] = stablehlo.pad %[[LS]], %{{.*}}, low = [0, 3], high = [0, 0]
// CHECK-NEXT: %[[T:.*]] = stablehlo.add %[[OWN]], %[[LP]]
// the column written after it: to the next device, added at its start
// CHECK-NEXT: %[[R:.*]] = stablehlo.slice %[[S]] [0:2, 5:6]
// CHECK-NEXT: %[[RS:.*]] = "stablehlo.collective_permute"(%[[R]]) <{source_target_pairs = dense<{{\[}}[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7]]>
// CHECK-NEXT: %[[RP:.*]] = stablehlo.pad %[[RS]], %{{.*}}, low = [0, 0], high = [0, 3]
// CHECK-NEXT: %[[Y:.*]] = stablehlo.add %[[T]], %[[RP]] {mtfc.dims = ["batch", "d"]} : tensor<2x4xf32>
// CHECK-NEXT: return %[[Y]]
// CHECK-NOT: all_gather
// CHECK: module @mtfc.reference
// CHECK: stablehlo.composite "mtfc.select_and_scatter"

module @max_pool_grad attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "g", mtfc.role = "input"}) -> (tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "gx", mtfc.role = "output"}) {
    %0 = stablehlo.composite "mtfc.select_and_scatter" %arg0, %arg1 {composite_attributes = {padding_high = array<i64: 0, 1>, padding_low = array<i64: 0, 1>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}, decomposition = @mtfc.select_and_scatter, mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<2x16xf32>) -> tensor<2x16xf32>
    return %0 : tensor<2x16xf32>
  }
  func.func private @mtfc.select_and_scatter(%arg0: tensor<2x16xf32>, %arg1: tensor<2x16xf32>) -> tensor<2x16xf32> {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = "stablehlo.select_and_scatter"(%arg0, %arg1, %cst) <{padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>, window_dimensions = array<i64: 1, 3>, window_strides = array<i64: 1, 1>}> ({
    ^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):
      %1 = stablehlo.compare GE, %arg2, %arg3 : (tensor<f32>, tensor<f32>) -> tensor<i1>
      stablehlo.return %1 : tensor<i1>
    }, {
    ^bb0(%arg2: tensor<f32>, %arg3: tensor<f32>):
      %1 = stablehlo.add %arg2, %arg3 : tensor<f32>
      stablehlo.return %1 : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<2x16xf32>, tensor<f32>) -> tensor<2x16xf32>
    return %0 : tensor<2x16xf32>
  }
}
