// all_reduce, then a transpose, then this device's own block: the all_reduce
// moves after the transpose and becomes a reduce_scatter (an FSDP gradient).
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: %[[T:.*]] = stablehlo.transpose %arg0, dims = [1, 0] {mtfc.dims = ["d", "f"]} : (tensor<16x8xf32>) -> tensor<8x16xf32>
// CHECK-NEXT: "stablehlo.reduce_scatter"(%[[T]]) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, scatter_dimension = 1 : i64}>
// CHECK: : (tensor<8x16xf32>) -> tensor<8x4xf32>
// CHECK-NOT: all_reduce
module @sink attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<16x8xf32> {mtfc.dims = ["f", "d"], mtfc.name = "g", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["d", "f"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["f", "d"]} : (tensor<16x8xf32>) -> tensor<16x8xf32>
    %1 = stablehlo.transpose %0, dims = [1, 0] {mtfc.dims = ["d", "f"]} : (tensor<16x8xf32>) -> tensor<8x16xf32>
    %zero = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %table = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 4, 8, 12, 0, 4, 8, 12]> : tensor<8xi32>
    %rid = stablehlo.replica_id {mtfc.dims = []} : tensor<ui32>
    %id = stablehlo.convert %rid {mtfc.dims = []} : (tensor<ui32>) -> tensor<i32>
    %row = stablehlo.dynamic_slice %table, %id, sizes = [1] {mtfc.dims = ["mesh"]} : (tensor<8xi32>, tensor<i32>) -> tensor<1xi32>
    %off = stablehlo.reshape %row {mtfc.dims = []} : (tensor<1xi32>) -> tensor<i32>
    %2 = stablehlo.dynamic_slice %1, %zero, %off, sizes = [8, 4] {mtfc.dims = ["d", "f"]} : (tensor<8x16xf32>, tensor<i32>, tensor<i32>) -> tensor<8x4xf32>
    return %2 : tensor<8x4xf32>
  }
}
