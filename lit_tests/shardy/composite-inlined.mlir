// Shardy does not know mtfc's composites: sdy-partition (and sdy-shardings, shown) inline each into its
// decomposition first (ops keep their dims) and partitions that; the private
// decomposition is dropped.
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK-NOT: stablehlo.composite
// CHECK: stablehlo.pad %{{.*}}, %{{.*}}, low = [0, 1], high = [0, 15], interior = [0, 0] {mtfc.dims = ["batch", "d"]
// CHECK: stablehlo.slice %{{.*}} [0:8, 0:16] {mtfc.dims = ["batch", "d"]
// CHECK-NOT: func.func private @mtfc.shift

module @shift attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.composite "mtfc.shift" %arg0 {composite_attributes = {dim = 1 : i64, offset = 1 : i64, wrap = false}, decomposition = @mtfc.shift, mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
    return %0 : tensor<8x16xf32>
  }
  func.func private @mtfc.shift(%arg0: tensor<8x16xf32>) -> tensor<8x16xf32> {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [0, 1], high = [0, 15], interior = [0, 0] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x32xf32>
    %1 = stablehlo.slice %0 [0:8, 0:16] {mtfc.dims = ["batch", "d"]} : (tensor<8x32xf32>) -> tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}
