// A bf16 all_reduce whose only use is a convert to f32 whose only use keeps
// this device's block of dim 1 along `cols` -> a bf16 reduce_scatter, then
// the convert of the block (a slice commutes with a convert; the sum stays
// in bf16, as before).  A slice at other offsets is left alone.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s
// RUN: sed 's/dense<\[0, 2, 4, 6, 0, 2, 4, 6\]>/dense<[0, 2, 4, 6, 6, 4, 2, 0]>/' %s | mtfc opt - --passes fuse-collectives --no-debug-info | FileCheck %s --check-prefix=OTHER

// CHECK: %[[RS:.*]] = "stablehlo.reduce_scatter"(%arg0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>, scatter_dimension = 1 : i64}>
// CHECK: stablehlo.add {{.*}} : tensor<bf16>
// CHECK: {mtfc.dims = ["batch", "f"]} : (tensor<4x8xbf16>) -> tensor<4x2xbf16>
// CHECK-NEXT: %[[C:.*]] = stablehlo.convert %[[RS]] {mtfc.dims = ["batch", "f"]} : (tensor<4x2xbf16>) -> tensor<4x2xf32>
// CHECK-NEXT: return %[[C]]
// CHECK-NOT: all_reduce

// OTHER: all_reduce
// OTHER-NOT: reduce_scatter
module @rs attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "f:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<4x8xbf16> {mtfc.dims = ["batch", "f"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<4x2xf32> {mtfc.dims = ["batch", "f"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<bf16>, %b: tensor<bf16>):
      %s = stablehlo.add %a, %b : tensor<bf16>
      stablehlo.return %s : tensor<bf16>
    }) {mtfc.dims = ["batch", "f"]} : (tensor<4x8xbf16>) -> tensor<4x8xbf16>
    %c = stablehlo.convert %0 {mtfc.dims = ["batch", "f"]} : (tensor<4x8xbf16>) -> tensor<4x8xf32>
    %zero = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %table = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 2, 4, 6, 0, 2, 4, 6]> : tensor<8xi32>
    %rid = stablehlo.replica_id {mtfc.dims = []} : tensor<ui32>
    %id = stablehlo.convert %rid {mtfc.dims = []} : (tensor<ui32>) -> tensor<i32>
    %row = stablehlo.dynamic_slice %table, %id, sizes = [1] {mtfc.dims = ["mesh"]} : (tensor<8xi32>, tensor<i32>) -> tensor<1xi32>
    %off = stablehlo.reshape %row {mtfc.dims = []} : (tensor<1xi32>) -> tensor<i32>
    %1 = stablehlo.dynamic_slice %c, %zero, %off, sizes = [4, 2] {mtfc.dims = ["batch", "f"]} : (tensor<4x8xf32>, tensor<i32>, tensor<i32>) -> tensor<4x2xf32>
    return %1 : tensor<4x2xf32>
  }
}
