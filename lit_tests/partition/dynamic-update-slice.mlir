// A reverse loop writing a stacked output (a gradient loop's form, docs/IR.md
// "Loops"): layer k = 2 - i (stablehlo.subtract of the counter), h = tanh(h @
// w[k]) renamed back to d_model, and h written into saved[k] of a carried
// zeros buffer by dynamic_update_slice.  Under batch:rows,d_model:cols the
// buffer [layers, batch, d_model] is carried split (local [3, 4, 4]); the
// layer index and zero starts are replicated scalars; the update covers batch
// and d_model whole, so it is written at the device's own block with the same
// start indices (dynamic_update_slice clamps them to 0 along those dims).
// The carry h is split along d_model, which the body contracts
// (all_reduce) and then gets back whole as d_out: renaming it to d_model cuts
// the device's block again (a local dynamic_slice inside the body).
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: func.func @main(%arg0: tensor<4x4xf32> {{.*}}, %arg1: tensor<3x4x16xf32> {{.*}}) -> (tensor<4x4xf32> {{.*}}, tensor<3x4x4xf32>
// CHECK: %[[ZEROS:.*]] = stablehlo.constant {mtfc.dims = ["layers", "batch", "d_model"]} dense<0.000000e+00> : tensor<3x4x4xf32>
// CHECK-NEXT: %[[R:.*]]:4 = stablehlo.while(%[[I:.*]] = %{{.*}}, %[[H:.*]] = %arg0, %[[W:.*]] = %arg1, %[[S:.*]] = %[[ZEROS]]) : tensor<i32>, tensor<4x4xf32>, tensor<3x4x16xf32>, tensor<3x4x4xf32>
// CHECK: } do {
// CHECK: %[[K:.*]] = stablehlo.subtract %{{.*}}, %[[I]] {mtfc.dims = []} : tensor<i32>
// CHECK: %[[Z:.*]] = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
// CHECK: stablehlo.dynamic_slice %[[W]], %[[K]], %[[Z]], %[[Z]], sizes = [1, 4, 16] {{.*}} -> tensor<1x4x16xf32>
// CHECK: %[[U:.*]] = stablehlo.dot_general %[[H]], {{.*}} : (tensor<4x4xf32>, tensor<4x16xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%[[U]]) <{replica_groups = dense<{{\[\[}}0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}>
// CHECK: stablehlo.tanh {{.*}} : tensor<4x16xf32>
// CHECK-NOT: all_gather
// CHECK: stablehlo.replica_id
// CHECK: %[[CUT:.*]] = stablehlo.dynamic_slice {{.*}} sizes = [4, 4] {mtfc.dims = ["batch", "d_out"]} : (tensor<4x16xf32>, tensor<i32>, tensor<i32>) -> tensor<4x4xf32>
// CHECK-NEXT: %[[H2:.*]] = stablehlo.reshape %[[CUT]] {mtfc.dims = ["batch", "d_model"]} : (tensor<4x4xf32>) -> tensor<4x4xf32>
// CHECK-NEXT: %[[ROW:.*]] = stablehlo.reshape %[[H2]] {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<4x4xf32>) -> tensor<1x4x4xf32>
// CHECK-NEXT: %[[S2:.*]] = stablehlo.dynamic_update_slice %[[S]], %[[ROW]], %[[K]], %[[Z]], %[[Z]] {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<3x4x4xf32>, tensor<1x4x4xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<3x4x4xf32>
// CHECK-NOT: all_gather
// CHECK: stablehlo.return %{{.*}}, %[[H2]], %[[W]], %[[S2]] : tensor<i32>, tensor<4x4xf32>, tensor<3x4x16xf32>, tensor<3x4x4xf32>
// CHECK: return %[[R]]#1, %[[R]]#3 : tensor<4x4xf32>, tensor<3x4x4xf32>
// CHECK: module @mtfc.reference

module @loop_rev attributes {mtfc.layout = "batch:rows,d_model:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "x", mtfc.role = "input"},
                  %w: tensor<3x16x16xf32> {mtfc.dims = ["layers", "d_model", "d_out"], mtfc.name = "w", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"},
          tensor<3x8x16xf32> {mtfc.dims = ["layers", "batch", "d_model"], mtfc.name = "saved", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %zeros = stablehlo.constant {mtfc.dims = ["layers", "batch", "d_model"]} dense<0.0> : tensor<3x8x16xf32>
    %r:4 = stablehlo.while(%i = %c0, %h = %x, %a = %w, %s = %zeros) : tensor<i32>, tensor<8x16xf32>, tensor<3x16x16xf32>, tensor<3x8x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_out"], ["layers", "batch", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param", "activation"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %last = stablehlo.constant {mtfc.dims = []} dense<2> : tensor<i32>
      %k = stablehlo.subtract %last, %i {mtfc.dims = []} : tensor<i32>
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %k, %z, %z, sizes = [1, 16, 16] {mtfc.dims = ["layers", "d_model", "d_out"]} : (tensor<3x16x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x16xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_out"]} : (tensor<1x16x16xf32>) -> tensor<16x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_out"]} : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
      %t = stablehlo.tanh %u {mtfc.dims = ["batch", "d_out"]} : tensor<8x16xf32>
      %h2 = stablehlo.reshape %t {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %t1 = stablehlo.reshape %h2 {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<8x16xf32>) -> tensor<1x8x16xf32>
      %s2 = stablehlo.dynamic_update_slice %s, %t1, %k, %z, %z {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<3x8x16xf32>, tensor<1x8x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<3x8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %s2 : tensor<i32>, tensor<8x16xf32>, tensor<3x16x16xf32>, tensor<3x8x16xf32>
    }
    return %r#1, %r#3 : tensor<8x16xf32>, tensor<3x8x16xf32>
  }
}
