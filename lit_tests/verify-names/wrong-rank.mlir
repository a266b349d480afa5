// Dim names that do not match the rank are an error naming the value.
// RUN: not mtfc opt %s --passes verify-names 2>&1 | FileCheck %s

// CHECK: error: {{.*}}argument #0 (x): mtfc.dims ['batch'] names 1 dims for a rank-2 tensor
module @tiny attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    return %0 : tensor<8x4xf32>
  }
}
