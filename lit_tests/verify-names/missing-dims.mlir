// An op without mtfc.dims is named in a one-line error.
// RUN: not mtfc opt %s --passes verify-names 2>&1 | FileCheck %s

// CHECK: error: {{.*}}stablehlo.exponential{{.*}}carries no mtfc.dims
// CHECK-NOT: Traceback
module @tiny attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 : tensor<8x4xf32>
    return %0 : tensor<8x4xf32>
  }
}
