// An embedding lookup in a table split along the looked-up dim (vocab on
// `cols`): each device clamps the ids to [0, 15] (StableHLO's gather clamps,
// so an out-of-range id reads the row the unsharded program reads), looks up
// the ids in its block, zeroes the rest, and an all_reduce over `cols` sums
// the one non-zero row.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: %[[V:.*]] = stablehlo.constant {mtfc.dims = []} dense<15> : tensor<i32>
// CHECK-NEXT: %[[LAST:.*]] = stablehlo.broadcast_in_dim %[[V]], dims = [] {mtfc.dims = ["batch"]}
// CHECK-NEXT: %[[C:.*]] = stablehlo.clamp %{{.*}}, %arg0, %[[LAST]] {mtfc.dims = ["batch"]} : tensor<4xi32>
// CHECK-NEXT: stablehlo.subtract %[[C]], %{{.*}} {mtfc.dims = ["batch"]} : tensor<4xi32>
// CHECK: stablehlo.compare GE
// CHECK: stablehlo.compare LT
// CHECK: %[[G:.*]] = "stablehlo.gather"(%arg1, %{{.*}}) {{.*}} slice_sizes = array<i64: 1, 8>
// CHECK: %[[Z:.*]] = stablehlo.select %{{.*}}, %[[G]], %{{.*}} {mtfc.dims = ["batch", "f"]} : tensor<4x8xi1>, tensor<4x8xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%[[Z]]) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}>

module @lookup attributes {mtfc.layout = "vocab:cols,batch:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8xi32> {mtfc.dims = ["batch"], mtfc.init = "randint:0,2", mtfc.name = "ids", mtfc.role = "input"}, %arg1: tensor<16x8xf32> {mtfc.dims = ["vocab", "f"], mtfc.init = "normal:1.0", mtfc.name = "table", mtfc.role = "input"}) -> (tensor<8x8xf32> {mtfc.dims = ["batch", "f"], mtfc.name = "e", mtfc.role = "output"}) {
    %0 = "stablehlo.gather"(%arg1, %arg0) <{dimension_numbers = #stablehlo.gather<offset_dims = [1], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, indices_are_sorted = false, slice_sizes = array<i64: 1, 8>}> {mtfc.dims = ["batch", "f"]} : (tensor<16x8xf32>, tensor<8xi32>) -> tensor<8x8xf32>
    return %0 : tensor<8x8xf32>
  }
}

