// Impossible layouts fail with one line naming the dim, the axis or the tensor.
// RUN: not mtfc opt %s --passes attach-shardings --layout "batch:depth" 2>&1 | FileCheck %s --check-prefix=AXIS
// RUN: not mtfc opt %s --passes attach-shardings --layout "batch:rows,d:rows" 2>&1 | FileCheck %s --check-prefix=TWICE
// RUN: not mtfc opt %s --passes attach-shardings --mesh "rows:3" --layout "batch:rows" 2>&1 | FileCheck %s --check-prefix=DIVIDE
// RUN: not mtfc opt %s --passes attach-shardings --layout "batch:rows+rows" 2>&1 | FileCheck %s --check-prefix=RULE
// RUN: not mtfc opt %s --passes attach-shardings --layout "batch" 2>&1 | FileCheck %s --check-prefix=SYNTAX
// RUN: not mtfc opt %s --passes no-such-pass 2>&1 | FileCheck %s --check-prefix=PASS

// AXIS: error: {{.*}}'depth'{{.*}}not in mesh
// AXIS-NOT: Traceback
// TWICE: error: {{.*}}mesh axis 'rows'
// DIVIDE: error: {{.*}}'batch'{{.*}}3
// RULE: error: layout rule 'batch:rows+rows' names a mesh axis twice
// SYNTAX: error: {{.*}}'batch'
// PASS: error: {{.*}}'no-such-pass'
module @tiny attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    return %0 : tensor<8x4xf32>
  }
}
