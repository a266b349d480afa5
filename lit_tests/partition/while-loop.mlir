// A loop over stacked layers (docs/IR.md "Loops"): the contract's 3-layer
// residual MLP under batch:rows,d_ff:cols.  Each carried value has its local
// type (x [8/2, 16], wi [3, 16, 32/4], wo [3, 32/4, 16]) at entry, as the
// regions' block arguments and at exit; the body is partitioned like a
// function body: the slices of one layer are local, the contraction over the
// split d_ff is completed by an all_reduce over `cols` inside the body.  The
// body's values already have their carried layouts, so the return reshards
// nothing.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: func.func @main(%arg0: tensor<4x16xf32> {{.*}}, %arg1: tensor<3x16x8xf32> {{.*}}, %arg2: tensor<3x8x16xf32> {{.*}}) -> (tensor<4x16xf32>
// CHECK: %[[C0:.*]] = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
// CHECK-NEXT: %[[R:.*]]:4 = stablehlo.while(%[[I:.*]] = %[[C0]], %[[H:.*]] = %arg0, %[[A:.*]] = %arg1, %[[B:.*]] = %arg2) : tensor<i32>, tensor<4x16xf32>, tensor<3x16x8xf32>, tensor<3x8x16xf32> attributes {mtfc.classes = ["activation", "activation", "param", "param"], mtfc.dims = {{\[\[\]}}, ["batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "d_ff", "d_model"]], mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
// CHECK-NEXT: cond {
// CHECK: stablehlo.compare LT, %[[I]]
// CHECK: } do {
// CHECK-NOT: all_gather
// CHECK: %[[A1:.*]] = stablehlo.dynamic_slice %[[A]], %[[I]], %{{.*}}, %{{.*}}, sizes = [1, 16, 8] {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<3x16x8xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x8xf32>
// CHECK-NEXT: stablehlo.reshape %[[A1]] {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x8xf32>) -> tensor<16x8xf32>
// CHECK: %[[B1:.*]] = stablehlo.dynamic_slice %[[B]], %[[I]], %{{.*}}, %{{.*}}, sizes = [1, 8, 16]
// CHECK-NEXT: stablehlo.reshape %[[B1]] {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x8x16xf32>) -> tensor<8x16xf32>
// CHECK: %[[U:.*]] = stablehlo.dot_general %[[H]], {{.*}} -> tensor<4x8xf32>
// CHECK: %[[V:.*]] = stablehlo.dot_general {{.*}} {mtfc.dims = ["batch", "d_model"]} : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[SUM:.*]] = "stablehlo.all_reduce"(%[[V]]) <{replica_groups = dense<{{\[\[}}0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}>
// CHECK: %[[H2:.*]] = stablehlo.add %[[H]], %[[SUM]] {mtfc.dims = ["batch", "d_model"]} : tensor<4x16xf32>
// CHECK: %[[I2:.*]] = stablehlo.add %[[I]]
// CHECK-NEXT: stablehlo.return %[[I2]], %[[H2]], %[[A]], %[[B]] : tensor<i32>, tensor<4x16xf32>, tensor<3x16x8xf32>, tensor<3x8x16xf32>
// CHECK-NEXT: }
// CHECK-NEXT: return %[[R]]#1 : tensor<4x16xf32>
// CHECK: module @mtfc.reference

module @loop_mlp attributes {mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                  %w1: tensor<3x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/blocks/wi", mtfc.role = "parameter"},
                  %w2: tensor<3x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/blocks/wo", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %r:4 = stablehlo.while(%i = %c0, %h = %x, %a = %w1, %b = %w2) : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
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
      %h2 = stablehlo.add %h, %v {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %b : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
    }
    return %r#1 : tensor<8x16xf32>
  }
}
