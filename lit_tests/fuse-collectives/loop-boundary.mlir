// A collective is never moved into a loop body: an all_reduce before the loop
// whose only use, inside the body, keeps this device's block does not become
// a reduce_scatter in the body (it would run once per trip), and one whose
// only use is a reshape in the body is not sunk through it.  Both stay
// before the loop (merged there into one variadic all_reduce).
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: "stablehlo.all_reduce"(%arg0, %{{.*}})
// CHECK-NOT: reduce_scatter
// CHECK: stablehlo.while
// CHECK: do {
// CHECK-NOT: all_reduce
// CHECK-NOT: reduce_scatter
// CHECK: stablehlo.dynamic_slice %{{.*}}#0
// CHECK-NOT: all_reduce
// CHECK-NOT: reduce_scatter
// CHECK: stablehlo.reshape %{{.*}}#1
// CHECK-NOT: all_reduce
// CHECK-NOT: reduce_scatter
// CHECK: return
module @boundary attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "f:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<4x8xf32> {mtfc.dims = ["batch", "f"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<4x2xf32> {mtfc.dims = ["batch", "f"], mtfc.name = "y", mtfc.role = "output"}, tensor<32xf32> {mtfc.dims = ["g"], mtfc.name = "z", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "f"]} : (tensor<4x8xf32>) -> tensor<4x8xf32>
    %sq = stablehlo.multiply %arg0, %arg0 {mtfc.dims = ["batch", "f"]} : tensor<4x8xf32>
    %1 = "stablehlo.all_reduce"(%sq) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "f"]} : (tensor<4x8xf32>) -> tensor<4x8xf32>
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %acc0 = stablehlo.constant {mtfc.dims = ["batch", "f"]} dense<0.0> : tensor<4x2xf32>
    %z0 = stablehlo.constant {mtfc.dims = ["g"]} dense<0.0> : tensor<32xf32>
    %w:3 = stablehlo.while(%i = %c0, %acc = %acc0, %zz = %z0) : tensor<i32>, tensor<4x2xf32>, tensor<32xf32>
      attributes {mtfc.dims = [[], ["batch", "f"], ["g"]], mtfc.classes = ["activation", "activation", "activation"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
      cond {
        %c3 = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
        %lt = stablehlo.compare LT, %i, %c3 {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
        stablehlo.return %lt : tensor<i1>
      } do {
        %zero = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
        %table = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 2, 4, 6, 0, 2, 4, 6]> : tensor<8xi32>
        %rid = stablehlo.replica_id {mtfc.dims = []} : tensor<ui32>
        %id = stablehlo.convert %rid {mtfc.dims = []} : (tensor<ui32>) -> tensor<i32>
        %row = stablehlo.dynamic_slice %table, %id, sizes = [1] {mtfc.dims = ["mesh"]} : (tensor<8xi32>, tensor<i32>) -> tensor<1xi32>
        %off = stablehlo.reshape %row {mtfc.dims = []} : (tensor<1xi32>) -> tensor<i32>
        %mine = stablehlo.dynamic_slice %0, %zero, %off, sizes = [4, 2] {mtfc.dims = ["batch", "f"]} : (tensor<4x8xf32>, tensor<i32>, tensor<i32>) -> tensor<4x2xf32>
        %flat = stablehlo.reshape %1 {mtfc.dims = ["g"]} : (tensor<4x8xf32>) -> tensor<32xf32>
        %next = stablehlo.add %acc, %mine {mtfc.dims = ["batch", "f"]} : tensor<4x2xf32>
        %z2 = stablehlo.add %zz, %flat {mtfc.dims = ["g"]} : tensor<32xf32>
        %c1 = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
        %n = stablehlo.add %i, %c1 {mtfc.dims = []} : tensor<i32>
        stablehlo.return %n, %next, %z2 : tensor<i32>, tensor<4x2xf32>, tensor<32xf32>
      }
    return %w#1, %w#2 : tensor<4x2xf32>, tensor<32xf32>
  }
}
