// A gspmd module's shardings must be the ones its dims imply under the layout
// (the runner cuts inputs by the dims; a contradicting sharding used to crash
// `mtfc run`).  Equivalent spellings of one sharding agree.
// RUN: mtfc opt %s --passes verify-names --no-debug-info | FileCheck %s --check-prefix=OK
// RUN: sed 's/{devices=\[2,1,4\]<=\[8\] last_tile_dim_replicate}/{devices=[2,1,4]0,1,2,3,4,5,6,7 last_tile_dim_replicate}/' %s | mtfc opt - --passes verify-names --no-debug-info | FileCheck %s --check-prefix=OK
// RUN: sed 's/{devices=\[2,1,4\]<=\[8\] last_tile_dim_replicate}/{replicated}/' %s > %t.1.mlir
// RUN: not mtfc opt %t.1.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=ARG
// RUN: sed 's/layout = "batch:rows,d_hidden:cols"/layout = "batch:cols,d_hidden:rows"/' %s > %t.2.mlir
// RUN: not mtfc opt %t.2.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=LAYOUT
// RUN: sed 's/{mhlo.sharding = "{devices=\[2,4\]<=\[8\]}", \(m.fc.dims\) = \["batch", "d_hidden"\]} : tensor/{mhlo.sharding = "{replicated}", \1 = ["batch", "d_hidden"]} : tensor/' %s > %t.3.mlir
// RUN: not mtfc opt %t.3.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=OP
// RUN: sed 's/mhlo.sharding = "{devices=\[2,1,4\]<=\[8\] last_tile_dim_replicate}", //' %s > %t.4.mlir
// RUN: not mtfc opt %t.4.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=MISSING
// RUN: sed 's/mhlo.num_partitions = 8/mhlo.num_partitions = 4/' %s > %t.5.mlir
// RUN: not mtfc opt %t.5.mlir --passes verify-names 2>&1 | FileCheck %s --check-prefix=COUNT

// OK: mtfc.partitioning = "gspmd"
// ARG: error: {{.*}}argument #0 (x): mhlo.sharding {replicated} contradicts its dims ['batch', 'd_in'] under the layout, which give {devices=[2,1,4]<=[8] last_tile_dim_replicate}
// LAYOUT: error: {{.*}}argument #0 (x): mhlo.sharding {{.*}} contradicts its dims
// OP: error: {{.*}}stablehlo.tanh{{.*}}: mhlo.sharding {replicated} contradicts its dims under the layout, which give {devices=[2,4]<=[8]}
// MISSING: error: {{.*}}argument #0 (x): a gspmd module's arguments and results carry mhlo.sharding
// COUNT: error: {{.*}}mhlo.num_partitions = 4, but a module partitioned gspmd on a mesh of 8 device(s) has 8
module @tiny attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32, mtfc.layout = "batch:rows,d_hidden:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "gspmd"} {
  func.func @main(%arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}", mtfc.dims = ["batch", "d_in"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4x16xf32> {mhlo.sharding = "{devices=[1,4,2]<=[2,4]T(1,0) last_tile_dim_replicate}", mtfc.dims = ["d_in", "d_hidden"], mtfc.init = "normal:0.5", mtfc.name = "params/w", mtfc.role = "parameter"}) -> (tensor<8x16xf32> {mhlo.sharding = "{devices=[2,4]<=[8]}", mtfc.dims = ["batch", "d_hidden"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mhlo.sharding = "{devices=[2,4]<=[8]}", mtfc.dims = ["batch", "d_hidden"]} : (tensor<8x4xf32>, tensor<4x16xf32>) -> tensor<8x16xf32>
    %1 = stablehlo.tanh %0 {mhlo.sharding = "{devices=[2,4]<=[8]}", mtfc.dims = ["batch", "d_hidden"]} : tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}
