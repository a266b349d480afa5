// A three-axis mesh x:2,y:2,z:2 and a 1-axis mesh; --mesh overrides the module's.
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "a:x,b:z" | FileCheck %s --check-prefix=XZ
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "a:z+x,c:y" | FileCheck %s --check-prefix=ZXY
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --mesh "all:8" --layout "c:all" | FileCheck %s --check-prefix=ONE

// XZ: mtfc.mesh = "x:2,y:2,z:2"
// XZ: %arg0: tensor<4x6x8xf32> {mhlo.sharding = "{devices=[2,2,1,2]<=[2,2,2]T(0,2,1) last_tile_dim_replicate}"
// XZ: stablehlo.negate %arg0 {mhlo.sharding = "{devices=[2,2,1,2]<=[2,2,2]T(0,2,1) last_tile_dim_replicate}"

// ZXY: %arg0: tensor<4x6x8xf32> {mhlo.sharding = "{devices=[4,1,2]<=[2,2,2]T(2,0,1)}"

// ONE: mhlo.num_partitions = 8 : i32
// ONE-SAME: mtfc.mesh = "all:8"
// ONE: %arg0: tensor<4x6x8xf32> {mhlo.sharding = "{devices=[1,1,8]<=[8]}"

module @cube attributes {mtfc.layout = "", mtfc.mesh = "x:2,y:2,z:2", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<4x6x8xf32> {mtfc.dims = ["a", "b", "c"], mtfc.name = "t", mtfc.role = "input"}) -> (tensor<4x6x8xf32> {mtfc.dims = ["a", "b", "c"], mtfc.name = "u", mtfc.role = "output"}) {
    %0 = stablehlo.negate %arg0 {mtfc.dims = ["a", "b", "c"]} : tensor<4x6x8xf32>
    return %0 : tensor<4x6x8xf32>
  }
}
