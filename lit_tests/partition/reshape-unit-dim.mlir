// A reshape that drops or adds a leading size-1 dim (one layer [1, d_ff, d_model]
// sliced from a stack, and a layer written back) keeps the split of the dim
// that follows it: size-1 dims leading a run of dims do not count, so with
// d_ff:cols both reshapes are local -- no all_gather, no slice.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: func.func @main(%arg0: tensor<1x8x16xf32> {{.*}}) -> (tensor<8x16xf32> {{.*}}, tensor<1x8x16xf32>
// CHECK-NEXT: %[[A:.*]] = stablehlo.reshape %arg0 {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x8x16xf32>) -> tensor<8x16xf32>
// CHECK-NEXT: %[[B:.*]] = stablehlo.reshape %[[A]] {mtfc.dims = ["layers", "d_ff", "d_model"]} : (tensor<8x16xf32>) -> tensor<1x8x16xf32>
// CHECK-NEXT: return %[[A]], %[[B]] : tensor<8x16xf32>, tensor<1x8x16xf32>
// CHECK-NOT: all_gather

module @unit attributes {mtfc.layout = "d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<1x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.name = "w", mtfc.role = "input"})
      -> (tensor<32x16xf32> {mtfc.dims = ["d_ff", "d_model"], mtfc.name = "layer", mtfc.role = "output"},
          tensor<1x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.name = "back", mtfc.role = "output"}) {
    %0 = stablehlo.reshape %arg0 {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x32x16xf32>) -> tensor<32x16xf32>
    %1 = stablehlo.reshape %0 {mtfc.dims = ["layers", "d_ff", "d_model"]} : (tensor<32x16xf32>) -> tensor<1x32x16xf32>
    return %0, %1 : tensor<32x16xf32>, tensor<1x32x16xf32>
  }
}
