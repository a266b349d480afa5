// Collectives inside a loop body (docs/IR.md "Loops") fuse among themselves,
// like those of @main's block: the two independent all_reduces over `cols` in
// the body become one variadic all_reduce inside the body.  A collective is
// never moved across the loop boundary: the all_reduce before the loop and
// the one after it stay single, outside the body.
// The per-device program of a 3-layer residual MLP (x [batch, d_ff], on
// rows:2,cols:4 with batch:rows,d_ff:cols), its global program beside it.
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s

// CHECK: %[[PRE:.*]] = "stablehlo.all_reduce"(%{{.*}}) <{replica_groups = dense<{{\[\[}}0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}>
// CHECK: stablehlo.while(%{{.*}} = %c{{.*}}, %{{.*}} = %[[PRE]],
// CHECK: do {
// CHECK-NOT: all_reduce
// CHECK: stablehlo.reduce(
// CHECK-NEXT: %[[M:.*]]:2 = "stablehlo.all_reduce"(%{{.*}}, %{{.*}})
// CHECK: (tensor<4x16xf32>, tensor<4xf32>) -> (tensor<4x16xf32>, tensor<4xf32>)
// CHECK-NOT: all_reduce
// CHECK: stablehlo.return
// CHECK-NEXT: }
// CHECK: "stablehlo.all_reduce"(%{{.*}}) <{replica_groups
// CHECK: (tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT: return
module @loop_mlp attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 8 : i32, mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"} {
  func.func @main(%arg0: tensor<4x8xf32> {mtfc.dims = ["batch", "d_ff"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                  %arg1: tensor<8x16xf32> {mtfc.dims = ["d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/in/w", mtfc.role = "parameter"},
                  %arg2: tensor<3x16x8xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/blocks/wi", mtfc.role = "parameter"},
                  %arg3: tensor<3x8x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/blocks/wo", mtfc.role = "parameter"},
                  %arg4: tensor<16x8xf32> {mtfc.dims = ["d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/out/w", mtfc.role = "parameter"})
      -> (tensor<4xf32> {mtfc.dims = ["batch"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
    %1 = "stablehlo.all_reduce"(%0) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%p: tensor<f32>, %q: tensor<f32>):
      %s = stablehlo.add %p, %q : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch", "d_model"]} : (tensor<4x16xf32>) -> tensor<4x16xf32>
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %r:4 = stablehlo.while(%i = %c0, %h = %1, %a = %arg2, %b = %arg3) : tensor<i32>, tensor<4x16xf32>, tensor<3x16x8xf32>, tensor<3x8x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "d_ff", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %i, %z, %z, sizes = [1, 16, 8] {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<3x16x8xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x8xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x8xf32>) -> tensor<16x8xf32>
      %b1 = stablehlo.dynamic_slice %b, %i, %z, %z, sizes = [1, 8, 16] {mtfc.dims = ["layers", "d_ff", "d_model"]} : (tensor<3x8x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x8x16xf32>
      %b2 = stablehlo.reshape %b1 {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x8x16xf32>) -> tensor<8x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<4x16xf32>, tensor<16x8xf32>) -> tensor<4x8xf32>
      %t = stablehlo.tanh %u {mtfc.dims = ["batch", "d_ff"]} : tensor<4x8xf32>
      %v = stablehlo.dot_general %t, %b2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
      %vs = "stablehlo.all_reduce"(%v) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
      ^bb0(%p: tensor<f32>, %q: tensor<f32>):
        %s = stablehlo.add %p, %q : tensor<f32>
        stablehlo.return %s : tensor<f32>
      }) {mtfc.dims = ["batch", "d_model"]} : (tensor<4x16xf32>) -> tensor<4x16xf32>
      %f0 = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
      %sm = stablehlo.reduce(%t init: %f0) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<4x8xf32>, tensor<f32>) -> tensor<4xf32>
      %ss = "stablehlo.all_reduce"(%sm) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
      ^bb0(%p: tensor<f32>, %q: tensor<f32>):
        %s = stablehlo.add %p, %q : tensor<f32>
        stablehlo.return %s : tensor<f32>
      }) {mtfc.dims = ["batch"]} : (tensor<4xf32>) -> tensor<4xf32>
      %sb = stablehlo.broadcast_in_dim %ss, dims = [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<4xf32>) -> tensor<4x16xf32>
      %h1 = stablehlo.add %h, %vs {mtfc.dims = ["batch", "d_model"]} : tensor<4x16xf32>
      %h2 = stablehlo.add %h1, %sb {mtfc.dims = ["batch", "d_model"]} : tensor<4x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %b : tensor<i32>, tensor<4x16xf32>, tensor<3x16x8xf32>, tensor<3x8x16xf32>
    }
    %e = stablehlo.dot_general %r#1, %arg4, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<4x16xf32>, tensor<16x8xf32>) -> tensor<4x8xf32>
    %e2 = stablehlo.tanh %e {mtfc.dims = ["batch", "d_ff"]} : tensor<4x8xf32>
    %f = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %y = stablehlo.reduce(%e2 init: %f) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<4x8xf32>, tensor<f32>) -> tensor<4xf32>
    %ys = "stablehlo.all_reduce"(%y) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%p: tensor<f32>, %q: tensor<f32>):
      %s = stablehlo.add %p, %q : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["batch"]} : (tensor<4xf32>) -> tensor<4xf32>
    return %ys : tensor<4xf32>
  }
  module @mtfc.reference attributes {mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
    func.func @main(%arg0: tensor<8x32xf32> {mtfc.dims = ["batch", "d_ff"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                    %arg1: tensor<32x16xf32> {mtfc.dims = ["d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/in/w", mtfc.role = "parameter"},
                    %arg2: tensor<3x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/blocks/wi", mtfc.role = "parameter"},
                    %arg3: tensor<3x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/blocks/wo", mtfc.role = "parameter"},
                    %arg4: tensor<16x32xf32> {mtfc.dims = ["d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/out/w", mtfc.role = "parameter"})
        -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "y", mtfc.role = "output"}) {
      %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>, tensor<32x16xf32>) -> tensor<8x16xf32>
      %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %r:4 = stablehlo.while(%i = %c0, %h = %0, %a = %arg2, %b = %arg3) : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
        attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "d_ff", "d_model"]],
                    mtfc.classes = ["activation", "activation", "param", "param"],
                    mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
      cond {
        %n = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
        %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
        stablehlo.return %lt : tensor<i1>
      } do {
        %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
        %a1 = stablehlo.dynamic_slice %a, %i, %z, %z, sizes = [1, 16, 32] {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<3x16x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x32xf32>
        %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x32xf32>) -> tensor<16x32xf32>
        %b1 = stablehlo.dynamic_slice %b, %i, %z, %z, sizes = [1, 32, 16] {mtfc.dims = ["layers", "d_ff", "d_model"]} : (tensor<3x32x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x32x16xf32>
        %b2 = stablehlo.reshape %b1 {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x32x16xf32>) -> tensor<32x16xf32>
        %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<8x16xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
        %t = stablehlo.tanh %u {mtfc.dims = ["batch", "d_ff"]} : tensor<8x32xf32>
        %v = stablehlo.dot_general %t, %b2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>, tensor<32x16xf32>) -> tensor<8x16xf32>
        %f0 = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
        %sm = stablehlo.reduce(%t init: %f0) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x32xf32>, tensor<f32>) -> tensor<8xf32>
        %sb = stablehlo.broadcast_in_dim %sm, dims = [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8xf32>) -> tensor<8x16xf32>
        %h1 = stablehlo.add %h, %v {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
        %h2 = stablehlo.add %h1, %sb {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
        %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
        %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
        stablehlo.return %i2, %h2, %a, %b : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
      }
      %e = stablehlo.dot_general %r#1, %arg4, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<8x16xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
      %e2 = stablehlo.tanh %e {mtfc.dims = ["batch", "d_ff"]} : tensor<8x32xf32>
      %f = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
      %y = stablehlo.reduce(%e2 init: %f) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x32xf32>, tensor<f32>) -> tensor<8xf32>
      return %y : tensor<8xf32>
    }
  }
}
