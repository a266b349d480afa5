// A dim named twice in one tensor is an error naming the op.
// RUN: not mtfc opt %s --passes verify-names 2>&1 | FileCheck %s

// CHECK: error: {{.*}}stablehlo.exponential{{.*}}dim 'd' is used twice in mtfc.dims ['d', 'd']
module @tiny attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<4x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<4x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["d", "d"]} : tensor<4x4xf32>
    return %0 : tensor<4x4xf32>
  }
}
