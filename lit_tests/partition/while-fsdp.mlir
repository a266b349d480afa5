// FSDP over a loop: the stacked parameters are stored split along d_model
// (mtfc.param_layout), carried split, and each trip gathers only the layer it
// slices.  The body also decays wi in place: the decayed layer is written
// back by an (activation-class) dynamic_update_slice, and the return cuts it
// back to the carried parameter layout.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: func.func @main(%arg0: tensor<4x16xf32> {{.*}}, %arg1: tensor<3x4x32xf32> {{.*}}, %arg2: tensor<3x32x4xf32> {{.*}}) -> (tensor<4x16xf32> {{.*}}, tensor<3x4x32xf32>
// The stacked parameters enter the loop as they are stored: no gather outside it.
// CHECK-NOT: all_gather
// CHECK: %[[R:.*]]:4 = stablehlo.while(%[[I:.*]] = %{{.*}}, %[[H:.*]] = %arg0, %[[A:.*]] = %arg1, %[[B:.*]] = %arg2) : tensor<i32>, tensor<4x16xf32>, tensor<3x4x32xf32>, tensor<3x32x4xf32>
// CHECK: } do {
// One layer sliced from the split stack, then gathered along d_model.
// CHECK: %[[A1:.*]] = stablehlo.dynamic_slice %[[A]], %[[I]], {{.*}} sizes = [1, 4, 32] {{.*}} -> tensor<1x4x32xf32>
// CHECK-NEXT: %[[AG:.*]] = "stablehlo.all_gather"(%[[A1]]) <{all_gather_dim = 1 : i64, replica_groups = dense<{{\[\[}}0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<1x4x32xf32>) -> tensor<1x16x32xf32>
// CHECK-NEXT: %[[W1:.*]] = stablehlo.reshape %[[AG]] {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x32xf32>) -> tensor<16x32xf32>
// CHECK: %[[B1:.*]] = stablehlo.dynamic_slice %[[B]], %[[I]], {{.*}} sizes = [1, 32, 4] {{.*}} -> tensor<1x32x4xf32>
// CHECK-NEXT: "stablehlo.all_gather"(%[[B1]]) <{all_gather_dim = 2 : i64{{.*}} -> tensor<1x32x16xf32>
// CHECK-NOT: all_reduce
// The decayed layer is cut to this device's block of d_model and written into
// the split stack; the activation-class result is gathered, and the return
// cuts it back to the carried parameter layout.
// CHECK: %[[UPD:.*]] = stablehlo.dynamic_slice %{{.*}}, %{{.*}}, %[[OFF:.*]], %{{.*}}, sizes = [1, 4, 32] {{.*}} : (tensor<1x16x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x4x32xf32>
// CHECK-NEXT: %[[DUS:.*]] = stablehlo.dynamic_update_slice %[[A]], %[[UPD]], %[[I]], {{.*}} : (tensor<3x4x32xf32>, tensor<1x4x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<3x4x32xf32>
// CHECK-NEXT: %[[FULL:.*]] = "stablehlo.all_gather"(%[[DUS]]) {{.*}} -> tensor<3x16x32xf32>
// CHECK: %[[BACK:.*]] = stablehlo.dynamic_slice %[[FULL]], %{{.*}}, %[[OFF]], %{{.*}}, sizes = [3, 4, 32]
// CHECK-NEXT: stablehlo.return %{{.*}}, %{{.*}}, %[[BACK]], %[[B]] : tensor<i32>, tensor<4x16xf32>, tensor<3x4x32xf32>, tensor<3x32x4xf32>
// CHECK: return %[[R]]#1, %[[R]]#2 : tensor<4x16xf32>, tensor<3x4x32xf32>

module @loop_fsdp attributes {mtfc.layout = "batch:rows", mtfc.param_layout = "d_model:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "x", mtfc.role = "input"},
                  %w1: tensor<3x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.name = "params/blocks/wi", mtfc.role = "parameter"},
                  %w2: tensor<3x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.name = "params/blocks/wo", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"},
          tensor<3x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.name = "params/blocks/wi", mtfc.role = "parameter"}) {
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
      %decay = stablehlo.constant {mtfc.dims = ["d_model", "d_ff"]} dense<0.5> : tensor<16x32xf32>
      %a3 = stablehlo.multiply %a2, %decay {mtfc.dims = ["d_model", "d_ff"]} : tensor<16x32xf32>
      %a4 = stablehlo.reshape %a3 {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<16x32xf32>) -> tensor<1x16x32xf32>
      %a5 = stablehlo.dynamic_update_slice %a, %a4, %i, %z, %z {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<3x16x32xf32>, tensor<1x16x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<3x16x32xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a5, %b : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
    }
    return %r#1, %r#2 : tensor<8x16xf32>, tensor<3x16x32xf32>
  }
}
