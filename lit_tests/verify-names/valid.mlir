// verify-names leaves a module that keeps the IR contract unchanged.
// RUN: mtfc opt %s --passes verify-names --no-debug-info | FileCheck %s

// CHECK: module @tiny attributes {mtfc.layout = "batch:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"}
// CHECK: func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"})
// CHECK-NEXT: stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]}
// CHECK-NOT: mhlo.sharding
module @tiny attributes {mtfc.layout = "batch:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    return %0 : tensor<8x4xf32>
  }
}
