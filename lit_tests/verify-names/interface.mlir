// Arguments and results: known roles, unique names, valid initializers and
// aliases, dims with one size within one op.
// RUN: mtfc opt %s --passes verify-names --no-debug-info | FileCheck %s --check-prefix=OK
// RUN: sed 's/role = "parameter"/role = "weights"/' %s > %t.1.mlir
// RUN: not mtfc opt %t.1.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=ROLE
// RUN: sed 's/name = "params\/w"/name = "x"/' %s > %t.2.mlir
// RUN: not mtfc opt %t.2.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=UNIQUE
// RUN: sed 's/normal:0.5/normal:abc/' %s > %t.3.mlir
// RUN: not mtfc opt %t.3.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=INIT
// RUN: sed 's/normal:0.5/ones/' %s > %t.4.mlir
// RUN: not mtfc opt %t.4.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=INITKIND
// RUN: sed 's/tf.aliasing_output = 1 : i32/tf.aliasing_output = 5 : i32/' %s > %t.5.mlir
// RUN: not mtfc opt %t.5.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=ALIAS
// RUN: sed 's/tf.aliasing_output = 1 : i32/tf.aliasing_output = 0 : i32/' %s > %t.6.mlir
// RUN: not mtfc opt %t.6.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=ALIASTYPE
// RUN: sed 's/{\(m.fc.dims\) = \["batch", "d_hidden"\]} : (tensor<8x4xf32>/{\1 = ["batch", "d_in"]} : (tensor<8x4xf32>/' %s > %t.7.mlir
// RUN: not mtfc opt %t.7.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=SIZE
// RUN: sed 's/dims = \["d_in", "d_hidden"\], \(m.fc.init\)/dims = ["d_in", "d hidden"], \1/' %s > %t.8.mlir
// RUN: not mtfc opt %t.8.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=DIMNAME

// OK: mtfc.partitioning = "none"
// ROLE: error: {{.*}}argument #1 (params/w): unknown mtfc.role 'weights' (roles of arguments: input, parameter, optimizer_state)
// UNIQUE: error: {{.*}}argument #1 (x): mtfc.name 'x' is also argument #0 (x)'s; names are unique
// INIT: error: {{.*}}argument #1 (params/w): initializer 'normal:abc' takes 1 finite number(s)
// INITKIND: error: {{.*}}argument #1 (params/w): unknown initializer 'ones'
// ALIAS: error: {{.*}}argument #1 (params/w): tf.aliasing_output = 5 names no result (@main has 2)
// ALIASTYPE: error: {{.*}}argument #1 (params/w): tf.aliasing_output = 0 names result #0 (y) of type tensor<8x16xf32>, not the argument's tensor<4x16xf32>
// SIZE: error: {{.*}}stablehlo.dot_general{{.*}}: dim 'd_in' has size 16 in its result #0 and 4 in its operand #0; a dim name has one size within one op
// DIMNAME: error: {{.*}}argument #1 (params/w): bad dim name 'd hidden'
module @tiny attributes {mtfc.layout = "batch:rows,d_hidden:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d_in"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4x16xf32> {mtfc.dims = ["d_in", "d_hidden"], mtfc.init = "normal:0.5", mtfc.name = "params/w", mtfc.role = "parameter", tf.aliasing_output = 1 : i32}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_hidden"], mtfc.name = "y", mtfc.role = "output"}, tensor<4x16xf32> {mtfc.dims = ["d_in", "d_hidden"], mtfc.name = "params/w", mtfc.role = "parameter"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_hidden"]} : (tensor<8x4xf32>, tensor<4x16xf32>) -> tensor<8x16xf32>
    %1 = stablehlo.tanh %0 {mtfc.dims = ["batch", "d_hidden"]} : tensor<8x16xf32>
    return %1, %arg1 : tensor<8x16xf32>, tensor<4x16xf32>
  }
}
