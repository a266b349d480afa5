// Two levels of contractions summed over different mesh axes (issue 8):
// u1 = x.w1 and u2 = x.w2 summed over `d` (axis a), then y1 = u1.v1 and
// y2 = u2.v2 summed over `kv` (axis b), y = y1 + y2.  Each level's two
// all_reduces become one variadic all_reduce, placed after its operands are
// computed and before its results are used: the first level's merged op comes
// before the second level's contractions, which come before theirs.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK: %[[P1:.*]] = stablehlo.dot_general %arg0, %arg1
// CHECK: %[[P2:.*]] = stablehlo.dot_general %arg0, %arg2
// CHECK: %[[U:.*]]:2 = "stablehlo.all_reduce"(%[[P1]], %[[P2]]) <{replica_groups = dense<{{\[\[}}0, 2, 4, 6], [1, 3, 5, 7]]>
// CHECK: %[[Q1:.*]] = stablehlo.dot_general %[[U]]#0, %arg3
// CHECK: %[[Q2:.*]] = stablehlo.dot_general %[[U]]#1, %arg4
// CHECK: %[[Y:.*]]:2 = "stablehlo.all_reduce"(%[[Q1]], %[[Q2]]) <{replica_groups = dense<{{\[\[}}0, 1], [2, 3], [4, 5], [6, 7]]>
// CHECK: %[[S:.*]] = stablehlo.add %[[Y]]#0, %[[Y]]#1
// CHECK-NEXT: return %[[S]]
// CHECK-NOT: all_reduce
module @chain attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "d:a,kv:b", mtfc.mesh = "a:4,b:2", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<4x2xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<2x2xf32> {mtfc.dims = ["d", "kv"], mtfc.name = "params/w1", mtfc.role = "parameter"}, %arg2: tensor<2x2xf32> {mtfc.dims = ["d", "kv"], mtfc.name = "params/w2", mtfc.role = "parameter"}, %arg3: tensor<2x4xf32> {mtfc.dims = ["kv", "o"], mtfc.name = "params/v1", mtfc.role = "parameter"}, %arg4: tensor<2x4xf32> {mtfc.dims = ["kv", "o"], mtfc.name = "params/v2", mtfc.role = "parameter"}) -> (tensor<4x4xf32> {mtfc.dims = ["batch", "o"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "kv"]} : (tensor<4x2xf32>, tensor<2x2xf32>) -> tensor<4x2xf32>
    %1 = "stablehlo.all_reduce"(%0) <{replica_groups = dense<[[0, 2, 4, 6], [1, 3, 5, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "kv"]} : (tensor<4x2xf32>) -> tensor<4x2xf32>
    %2 = stablehlo.dot_general %arg0, %arg2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "kv"]} : (tensor<4x2xf32>, tensor<2x2xf32>) -> tensor<4x2xf32>
    %3 = "stablehlo.all_reduce"(%2) <{replica_groups = dense<[[0, 2, 4, 6], [1, 3, 5, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "kv"]} : (tensor<4x2xf32>) -> tensor<4x2xf32>
    %4 = stablehlo.dot_general %1, %arg3, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "o"]} : (tensor<4x2xf32>, tensor<2x4xf32>) -> tensor<4x4xf32>
    %5 = "stablehlo.all_reduce"(%4) <{replica_groups = dense<[[0, 1], [2, 3], [4, 5], [6, 7]]> : tensor<4x2xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "o"]} : (tensor<4x4xf32>) -> tensor<4x4xf32>
    %6 = stablehlo.dot_general %3, %arg4, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "o"]} : (tensor<4x2xf32>, tensor<2x4xf32>) -> tensor<4x4xf32>
    %7 = "stablehlo.all_reduce"(%6) <{replica_groups = dense<[[0, 1], [2, 3], [4, 5], [6, 7]]> : tensor<4x2xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "o"]} : (tensor<4x4xf32>) -> tensor<4x4xf32>
    %8 = stablehlo.add %5, %7 {mtfc.dims = ["batch", "o"]} : tensor<4x4xf32>
    return %8 : tensor<4x4xf32>
  }
}
