// An all_reduce whose result is used only inside a loop body is used at the
// loop: it is not merged with an all_reduce that reads the loop's result
// (the merged op would come after the loop, which reads it).  (The loops
// mtfc emits carry every value their body reads, docs/IR.md "Loops"; a
// hand-written body may still read @main's values.)
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: %[[A:.*]] = "stablehlo.all_reduce"(%arg0)
// CHECK: stablehlo.while
// CHECK: stablehlo.add %{{.*}}, %[[A]]
// CHECK: %[[E:.*]] = stablehlo.exponential
// CHECK: "stablehlo.all_reduce"(%[[E]])
module @loop attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<8xf32>) -> tensor<8xf32>
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %c3 = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
    %c1 = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
    %w:2 = stablehlo.while(%i = %c0, %acc = %arg0) : tensor<i32>, tensor<8xf32> attributes {mtfc.dims = [[], ["batch"]], mtfc.classes = ["activation", "activation"], mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
      cond {
        %lt = stablehlo.compare LT, %i, %c3 {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
        stablehlo.return %lt : tensor<i1>
      } do {
        %n = stablehlo.add %i, %c1 {mtfc.dims = []} : tensor<i32>
        %next = stablehlo.add %acc, %0 {mtfc.dims = ["batch"]} : tensor<8xf32>
        stablehlo.return %n, %next : tensor<i32>, tensor<8xf32>
      }
    %1 = stablehlo.exponential %w#1 {mtfc.dims = ["batch"]} : tensor<8xf32>
    %2 = "stablehlo.all_reduce"(%1) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<8xf32>) -> tensor<8xf32>
    return %2 : tensor<8xf32>
  }
}
