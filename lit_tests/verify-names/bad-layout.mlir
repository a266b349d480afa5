// The module's mesh and layout are validated, naming the culprit.
// RUN: not mtfc opt %s --passes verify-names 2>&1 | FileCheck %s
// RUN: not mtfc opt %s --passes verify-names --mesh "rows:2,rows:4" 2>&1 | FileCheck %s --check-prefix=MESH
// RUN: not mtfc opt %s --passes verify-names --mesh "rows:0" 2>&1 | FileCheck %s --check-prefix=ZERO

// CHECK: error: {{.*}}'depth'{{.*}}not in mesh
// MESH: error: mesh axis 'rows' appears twice in mesh 'rows:2,rows:4'
// ZERO: error: mesh axis 'rows' has size
module @tiny attributes {mtfc.layout = "batch:depth", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    return %0 : tensor<8x4xf32>
  }
}
