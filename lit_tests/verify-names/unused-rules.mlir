// A layout rule whose dim no value has is an error naming the rule and the
// nearest dims; a parameter-layout rule must name a dim of the stored state.
// --allow-unused-rules allows them (a layout shared between models) and is
// recorded in the module, so later checks of it agree.  Empty items in mesh
// and layout strings are errors too.
// RUN: mtfc opt %s --passes verify-names --no-debug-info | FileCheck %s --check-prefix=OK
// RUN: not mtfc opt %s --passes verify-names --layout "batchh:rows" 2>&1 | FileCheck %s --check-prefix=UNUSED
// RUN: not mtfc opt %s --passes verify-names --param-layout "d_hiden:rows+cols" 2>&1 | FileCheck %s --check-prefix=PARAM
// RUN: not mtfc opt %s --passes verify-names --param-layout "batch:rows" 2>&1 | FileCheck %s --check-prefix=NOTSTATE
// RUN: not mtfc opt %s --passes verify-names --layout "zzz:rows" 2>&1 | FileCheck %s --check-prefix=NOMATCH
// RUN: mtfc opt %s --passes verify-names --layout "batchh:rows" --allow-unused-rules -o %t.mlir
// RUN: mtfc opt %t.mlir --passes verify-names --no-debug-info | FileCheck %s --check-prefix=ALLOWED
// RUN: not mtfc opt %t.mlir --passes verify-names --layout "batch:rows,other:cols" 2>&1 | FileCheck %s --check-prefix=RENEWED
// RUN: not mtfc opt %s --passes verify-names --mesh "rows:2,,cols:4" 2>&1 | FileCheck %s --check-prefix=EMPTYMESH
// RUN: not mtfc opt %s --passes verify-names --layout "batch:rows;;" 2>&1 | FileCheck %s --check-prefix=EMPTYLAYOUT
// RUN: not mtfc opt %s --passes verify-names --layout ",batch:rows" 2>&1 | FileCheck %s --check-prefix=LEADING
// RUN: mtfc opt %s --passes verify-names --layout "" --mesh "" --no-debug-info | FileCheck %s --check-prefix=NONE

// OK: mtfc.layout = "batch:rows,d_hidden:cols"
// UNUSED: error: {{.*}}layout rule 'batchh:rows' names dim 'batchh', which no value of the module has (did you mean batch?); a layout shared between models may keep such rules with --allow-unused-rules
// PARAM: error: {{.*}}parameter layout rule 'd_hiden:rows+cols' names dim 'd_hiden', which no parameter or optimizer state of the module has (did you mean d_hidden
// NOTSTATE: error: {{.*}}parameter layout rule 'batch:rows' names dim 'batch', which no parameter or optimizer state of the module has
// NOMATCH: error: {{.*}}layout rule 'zzz:rows' names dim 'zzz', which no value of the module has (its dims: batch, d_hidden, d_in)
// ALLOWED: mtfc.allow_unused_rules
// ALLOWED-SAME: mtfc.layout = "batchh:rows"
// RENEWED: error: {{.*}}layout rule 'other:cols' names dim 'other'
// EMPTYMESH: error: mesh 'rows:2,,cols:4' has an empty item at character 8
// EMPTYLAYOUT: error: layout 'batch:rows;;' has an empty item at character 12
// LEADING: error: layout ',batch:rows' has an empty item at character 1
// NONE: mtfc.layout = "", mtfc.mesh = ""
module @tiny attributes {mtfc.layout = "batch:rows,d_hidden:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d_in"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4x16xf32> {mtfc.dims = ["d_in", "d_hidden"], mtfc.init = "normal:0.5", mtfc.name = "params/w", mtfc.role = "parameter"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_hidden"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_hidden"]} : (tensor<8x4xf32>, tensor<4x16xf32>) -> tensor<8x16xf32>
    %1 = stablehlo.tanh %0 {mtfc.dims = ["batch", "d_hidden"]} : tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}
