// A per-device (explicit) program keeps its reference program's interface with
// local shapes: each dim divided by its mesh axes.
// RUN: mtfc opt %s --passes verify-names --no-debug-info | FileCheck %s --check-prefix=OK
// RUN: sed 's/layout = "batch:rows,d_hidden:cols", \(m.fc.mesh\)/layout = "batch:rows", \1/' %s > %t.1.mlir
// RUN: not mtfc opt %t.1.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=LOCAL
// RUN: sed 's/name = "x", \(m.fc.role\) = "input"}, %arg1: tensor<4x4xf32>/name = "z", \1 = "input"}, %arg1: tensor<4x4xf32>/' %s > %t.2.mlir
// RUN: not mtfc opt %t.2.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=NAME
// RUN: sed 's/mhlo.num_replicas = 8/mhlo.num_replicas = 2/' %s > %t.3.mlir
// RUN: not mtfc opt %t.3.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=COUNT
// RUN: sed 's/partitioning = "explicit"/partitioning = "magic"/' %s > %t.4.mlir
// RUN: not mtfc opt %t.4.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=KIND
// RUN: sed 's/%arg0: tensor<4x4xf32> {/%arg0: tensor<4x4xf32> {mhlo.sharding = "{replicated}", /' %s > %t.5.mlir
// RUN: not mtfc opt %t.5.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=SHARDED
// RUN: sed 's/mesh = "rows:2,cols:4", \(m.fc.partitioning\) = "explicit"/mesh = 8, \1 = "explicit"/' %s > %t.6.mlir
// RUN: not mtfc opt %t.6.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=NOTSTRING

// OK: mtfc.partitioning = "explicit"
// LOCAL: error: {{.*}}argument #1 (params/w): per-device shape [4, 4] is not the local shape [4, 16] of its global shape [4, 16] (dims ['d_in', 'd_hidden']) under the layout
// NAME: error: {{.*}}argument #0 (z): name z differs from the reference program's x
// COUNT: error: {{.*}}mhlo.num_replicas = 2, but a module partitioned explicit on a mesh of 8 device(s) has 8
// KIND: error: {{.*}}unknown mtfc.partitioning 'magic' (one of none, gspmd, explicit, shardy)
// NOTSTRING: error: {{.*}}module: mtfc.mesh must be a string, not 8
// SHARDED: error: {{.*}}argument #0 (x): carries mhlo.sharding {replicated}, but the module is explicit
module @tiny attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "batch:rows,d_hidden:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<4x4xf32> {mtfc.dims = ["batch", "d_in"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4x4xf32> {mtfc.dims = ["d_in", "d_hidden"], mtfc.init = "normal:0.5", mtfc.name = "params/w", mtfc.role = "parameter"}) -> (tensor<4x4xf32> {mtfc.dims = ["batch", "d_hidden"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_hidden"]} : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
    %1 = stablehlo.tanh %0 {mtfc.dims = ["batch", "d_hidden"]} : tensor<4x4xf32>
    return %1 : tensor<4x4xf32>
  }
  module @mtfc.reference attributes {mtfc.layout = "batch:rows,d_hidden:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
    func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d_in"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4x16xf32> {mtfc.dims = ["d_in", "d_hidden"], mtfc.init = "normal:0.5", mtfc.name = "params/w", mtfc.role = "parameter"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_hidden"], mtfc.name = "y", mtfc.role = "output"}) {
      %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_hidden"]} : (tensor<8x4xf32>, tensor<4x16xf32>) -> tensor<8x16xf32>
      %1 = stablehlo.tanh %0 {mtfc.dims = ["batch", "d_hidden"]} : tensor<8x16xf32>
      return %1 : tensor<8x16xf32>
    }
  }
}
