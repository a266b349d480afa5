// all_gather followed by taking this device's own block is the identity, and
// so is taking the own block and gathering it back; an all_to_all followed by
// its inverse is too.  What is left without uses is removed.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: func.func @main
// CHECK-NOT: all_gather
// CHECK-NOT: all_to_all
// CHECK-NOT: dynamic_slice
// CHECK: %[[S:.*]] = stablehlo.add %arg0, %arg1
// CHECK-NEXT: %[[W:.*]] = stablehlo.constant {{.*}} dense<1.000000e+00> : tensor<8x16xf32>
// CHECK-NEXT: %[[T:.*]] = stablehlo.add %[[S]], %arg1
// CHECK-NEXT: return %[[T]], %[[W]]
module @inv attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "z", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}, tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "w", mtfc.role = "output"}) {
    %g = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {mtfc.dims = ["batch", "d"]} : (tensor<8x4xf32>) -> tensor<8x16xf32>
    %zero = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %table = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 4, 8, 12, 0, 4, 8, 12]> : tensor<8xi32>
    %rid = stablehlo.replica_id {mtfc.dims = []} : tensor<ui32>
    %id = stablehlo.convert %rid {mtfc.dims = []} : (tensor<ui32>) -> tensor<i32>
    %row = stablehlo.dynamic_slice %table, %id, sizes = [1] {mtfc.dims = ["mesh"]} : (tensor<8xi32>, tensor<i32>) -> tensor<1xi32>
    %off = stablehlo.reshape %row {mtfc.dims = []} : (tensor<1xi32>) -> tensor<i32>
    %own = stablehlo.dynamic_slice %g, %zero, %off, sizes = [8, 4] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<i32>, tensor<i32>) -> tensor<8x4xf32>
    %a2a = "stablehlo.all_to_all"(%arg1) <{concat_dimension = 0 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, split_count = 4 : i64, split_dimension = 1 : i64}> {mtfc.dims = ["batch", "d"]} : (tensor<8x4xf32>) -> tensor<32x1xf32>
    %back = "stablehlo.all_to_all"(%a2a) <{concat_dimension = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, split_count = 4 : i64, split_dimension = 0 : i64}> {mtfc.dims = ["batch", "d"]} : (tensor<32x1xf32>) -> tensor<8x4xf32>
    %sum = stablehlo.add %own, %back {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    %whole = stablehlo.constant {mtfc.dims = ["batch", "d"]} dense<1.0> : tensor<8x16xf32>
    %mine = stablehlo.dynamic_slice %whole, %zero, %off, sizes = [8, 4] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<i32>, tensor<i32>) -> tensor<8x4xf32>
    %again = "stablehlo.all_gather"(%mine) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {mtfc.dims = ["batch", "d"]} : (tensor<8x4xf32>) -> tensor<8x16xf32>
    %t = stablehlo.add %sum, %arg1 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    return %t, %again : tensor<8x4xf32>, tensor<8x16xf32>
  }
}
