// A loop (docs/IR.md, "Loops"; docs/passes/attach-shardings.md, "Loops"): a
// reverse loop over stacked layers that writes a stacked output with
// dynamic_update_slice.  Every op of the cond and the body carries the
// mhlo.sharding of its dims (the carried param by the parameter rules); the
// while itself carries none -- XLA (jaxlib 0.10) drops the values the body
// returns unchanged from the while and then fails a RET_CHECK on a tuple
// sharding written for all of them -- so XLA gives it the shardings its
// operands and body imply.
// RUN: mtfc opt %s --pipeline gspmd --no-debug-info | FileCheck %s
// RUN: not mtfc opt %s --pipeline gspmd --layout "layers:cols" 2>&1 | FileCheck %s --check-prefix=SPLIT

// CHECK: %[[ZEROS:.*]] = stablehlo.broadcast_in_dim %{{.*}}, dims = [] {mhlo.sharding = "{devices=[1,2,4]<=[8]}", mtfc.dims = ["layers", "batch", "d_ff"]}
// CHECK: stablehlo.while(%[[I:[^ ]*]] = %{{.*}}, %[[G:[^ ]*]] = %arg0, %[[X:[^ ]*]] = %arg1, %[[W:[^ ]*]] = %arg2, %[[H:[^ ]*]] = %[[ZEROS]])
// CHECK-NOT: mhlo.sharding
// CHECK-SAME: mtfc.classes
// CHECK-NEXT: cond {
// CHECK-NEXT: stablehlo.constant {mhlo.sharding = "{replicated}", mtfc.dims = []} dense<4>
// CHECK-NEXT: stablehlo.compare LT, %[[I]], %{{.*}} {mhlo.sharding = "{replicated}", mtfc.dims = []}
// CHECK: } do {
// CHECK: %[[K:.*]] = stablehlo.subtract %{{.*}}, %[[I]] {mhlo.sharding = "{replicated}", mtfc.dims = []}
// CHECK-NEXT: stablehlo.dynamic_slice %[[X]], %[[K]], {{.*}} {mhlo.sharding = "{devices=[1,2,1,4]<=[8] last_tile_dim_replicate}", mtfc.dims = ["layers", "batch", "d_model"]}
// CHECK: stablehlo.dynamic_slice %[[W]], %[[K]], {{.*}} {mhlo.sharding = "{devices=[1,1,4,2]<=[2,4]T(1,0) last_tile_dim_replicate}", mtfc.dims = ["layers", "d_model", "d_ff"]}
// CHECK: stablehlo.dot_general {{.*}} {mhlo.sharding = "{devices=[2,4]<=[8]}", mtfc.dims = ["batch", "d_ff"]}
// CHECK: %[[H2:.*]] = stablehlo.dynamic_update_slice %[[H]], %{{.*}}, %[[K]], {{.*}} {mhlo.sharding = "{devices=[1,2,4]<=[8]}", mtfc.dims = ["layers", "batch", "d_ff"]}
// CHECK: stablehlo.return %{{.*}}, %{{.*}}, %[[X]], %[[W]], %[[H2]] :
// CHECK: return %{{.*}}#1, %{{.*}}#4

// SPLIT: error: {{.*}}layout rule layers:cols splits the dim 'layers' that the loop at {{.*}} runs over; a scanned dim must stay whole

module @loop_reverse attributes {mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%g0: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "g", mtfc.role = "input"},
                  %xs: tensor<4x8x16xf32> {mtfc.dims = ["layers", "batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "xs", mtfc.role = "input"},
                  %w: tensor<4x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/w", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "g_out", mtfc.role = "output"},
          tensor<4x8x32xf32> {mtfc.dims = ["layers", "batch", "d_ff"], mtfc.name = "hs", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %zf = stablehlo.constant {mtfc.dims = []} dense<0.0> : tensor<f32>
    %h0 = stablehlo.broadcast_in_dim %zf, dims = [] {mtfc.dims = ["layers", "batch", "d_ff"]} : (tensor<f32>) -> tensor<4x8x32xf32>
    %r:5 = stablehlo.while(%i = %c0, %g = %g0, %x = %xs, %a = %w, %h = %h0) : tensor<i32>, tensor<8x16xf32>, tensor<4x8x16xf32>, tensor<4x16x32xf32>, tensor<4x8x32xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "batch", "d_ff"]],
                  mtfc.classes = ["activation", "activation", "activation", "param", "activation"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 4 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<4> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %last = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
      %k = stablehlo.subtract %last, %i {mtfc.dims = []} : tensor<i32>
      %x1 = stablehlo.dynamic_slice %x, %k, %z, %z, sizes = [1, 8, 16] {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<4x8x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x8x16xf32>
      %x2 = stablehlo.reshape %x1 {mtfc.dims = ["batch", "d_model"]} : (tensor<1x8x16xf32>) -> tensor<8x16xf32>
      %a1 = stablehlo.dynamic_slice %a, %k, %z, %z, sizes = [1, 16, 32] {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<4x16x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x32xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x32xf32>) -> tensor<16x32xf32>
      %s = stablehlo.add %g, %x2 {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %y = stablehlo.dot_general %s, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<8x16xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
      %t = stablehlo.tanh %y {mtfc.dims = ["batch", "d_ff"]} : tensor<8x32xf32>
      %t1 = stablehlo.reshape %t {mtfc.dims = ["layers", "batch", "d_ff"]} : (tensor<8x32xf32>) -> tensor<1x8x32xf32>
      %h2 = stablehlo.dynamic_update_slice %h, %t1, %k, %z, %z {mtfc.dims = ["layers", "batch", "d_ff"]} : (tensor<4x8x32xf32>, tensor<1x8x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<4x8x32xf32>
      %g2 = stablehlo.dot_general %t, %a2, contracting_dims = [1] x [1] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>, tensor<16x32xf32>) -> tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %g2, %x, %a, %h2 : tensor<i32>, tensor<8x16xf32>, tensor<4x8x16xf32>, tensor<4x16x32xf32>, tensor<4x8x32xf32>
    }
    return %r#1, %r#4 : tensor<8x16xf32>, tensor<4x8x32xf32>
  }
}
