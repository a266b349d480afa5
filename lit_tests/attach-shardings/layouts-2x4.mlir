// attach-shardings on a 2x4 mesh: the mhlo.sharding XLA needs for each layout.
// Tile assignments are iota-form: devices are numbered row-major over the mesh
// (rows major, cols minor); a dim split over `cols` alone transposes the iota.
//
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "" | FileCheck %s --check-prefix=REPL
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "batch:rows" | FileCheck %s --check-prefix=DP
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "d:cols" | FileCheck %s --check-prefix=MP
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "batch:rows,d:cols" | FileCheck %s --check-prefix=BOTH
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "batch:cols,d:rows" | FileCheck %s --check-prefix=SWAP
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "batch:rows+cols" | FileCheck %s --check-prefix=FLAT
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "batch:cols+rows" | FileCheck %s --check-prefix=FLATT
// Mesh TF's spelling of the same rules.
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "batch:rows;d:cols" | FileCheck %s --check-prefix=BOTH

// REPL: module @tiny attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32, mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "gspmd"}
// REPL: %arg0: tensor<8x4xf32> {mhlo.sharding = "{replicated}"
// REPL-SAME: %arg1: tensor<4xf32> {mhlo.sharding = "{replicated}"
// REPL: stablehlo.exponential %arg0 {mhlo.sharding = "{replicated}"
// REPL: stablehlo.reduce{{.*}}mhlo.sharding = "{replicated}"

// DP: %arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"
// DP-SAME: %arg1: tensor<4xf32> {mhlo.sharding = "{replicated}"
// DP-SAME: -> (tensor<8x4xf32> {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"
// DP-SAME: tensor<8xf32> {mhlo.sharding = "{devices=[2,4]<=[8] last_tile_dim_replicate}"
// DP: stablehlo.exponential %arg0 {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"
// DP: stablehlo.broadcast_in_dim %arg1, dims = [1] {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}"
// DP: stablehlo.constant {mhlo.sharding = "{replicated}"
// DP: stablehlo.reduce{{.*}}mhlo.sharding = "{devices=[2,4]<=[8] last_tile_dim_replicate}"

// MP: %arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[1,4,2]<=[2,4]T(1,0) last_tile_dim_replicate}"
// MP-SAME: %arg1: tensor<4xf32> {mhlo.sharding = "{devices=[4,2]<=[2,4]T(1,0) last_tile_dim_replicate}"
// MP: stablehlo.reduce{{.*}}mhlo.sharding = "{replicated}"

// BOTH: mtfc.layout = "batch:rows,d:cols"
// BOTH: %arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[2,4]<=[8]}"
// BOTH-SAME: %arg1: tensor<4xf32> {mhlo.sharding = "{devices=[4,2]<=[2,4]T(1,0) last_tile_dim_replicate}"
// BOTH: stablehlo.multiply %0, %1 {mhlo.sharding = "{devices=[2,4]<=[8]}"
// BOTH: stablehlo.reduce{{.*}}mhlo.sharding = "{devices=[2,4]<=[8] last_tile_dim_replicate}"

// SWAP: %arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[4,2]<=[2,4]T(1,0)}"
// SWAP-SAME: %arg1: tensor<4xf32> {mhlo.sharding = "{devices=[2,4]<=[8] last_tile_dim_replicate}"
// SWAP: stablehlo.reduce{{.*}}mhlo.sharding = "{devices=[4,2]<=[2,4]T(1,0) last_tile_dim_replicate}"

// FLAT: %arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[8,1]<=[8]}"
// FLAT: stablehlo.reduce{{.*}}mhlo.sharding = "{devices=[8]<=[8]}"

// FLATT: %arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[8,1]<=[2,4]T(1,0)}"
// FLATT: stablehlo.reduce{{.*}}mhlo.sharding = "{devices=[8]<=[2,4]T(1,0)}"

module @tiny attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4xf32> {mtfc.dims = ["d"], mtfc.init = "constant:1", mtfc.name = "params/w", mtfc.role = "parameter"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}, tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "s", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    %1 = stablehlo.broadcast_in_dim %arg1, dims = [1] {mtfc.dims = ["batch", "d"]} : (tensor<4xf32>) -> tensor<8x4xf32>
    %2 = stablehlo.multiply %0, %1 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %3 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x4xf32>, tensor<f32>) -> tensor<8xf32>
    return %2, %3 : tensor<8x4xf32>, tensor<8xf32>
  }
}
