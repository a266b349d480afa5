// A loop (docs/IR.md, "Loops"; docs/passes/shardy.md, "Loops") whose body
// holds a composite (mtfc.shift along the split d_model, inlined first and
// computed whole along it: whole-pad, whole-slice).  Every carried value is
// local in the cond, the body and at exit; the ops Shardy inserts in the
// body (all_gathers, offset tables) carry mtfc.dims.
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s --check-prefix=SDY
// RUN: not mtfc opt %s --passes sdy-partition --layout "layers:rows" 2>&1 | FileCheck %s --check-prefix=SPLIT

// CHECK-LABEL: func.func @main(%arg0: tensor<8x4xf32> {{.*}}, %arg1: tensor<2x16x4xf32>
// CHECK: stablehlo.while(%[[I:[^ ]*]] = %{{.*}}, %[[H:[^ ]*]] = %arg0, %[[W:[^ ]*]] = %arg1) : tensor<i32>, tensor<8x4xf32>, tensor<2x16x4xf32>
// CHECK: } do {
// CHECK-NOT: {{optimization_barrier|unrealized_conversion_cast|stablehlo.composite}}
// CHECK: stablehlo.dynamic_slice %[[W]], %[[I]], %{{.*}}, %{{.*}}, sizes = [1, 16, 4] {mtfc.dims = ["layers", "d_in", "d_model"]} : (tensor<2x16x4xf32>, {{.*}}) -> tensor<1x16x4xf32>
// CHECK: "stablehlo.all_gather"(%[[H]]) <{all_gather_dim = 1 : i64
// CHECK-SAME: {mtfc.dims = ["batch", "d_model"]} : (tensor<8x4xf32>) -> tensor<8x16xf32>
// CHECK-NOT: {{unrealized_conversion_cast|stablehlo.composite}}
// CHECK: stablehlo.pad {{.*}} {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x32xf32>
// CHECK: stablehlo.constant {mtfc.dims = ["mesh"]}
// CHECK: stablehlo.tanh {{.*}} {mtfc.dims = ["batch", "d_model"]} : tensor<8x4xf32>
// CHECK-NOT: stablehlo.composite
// CHECK: stablehlo.return %{{.*}}, %{{.*}}, %[[W]] : tensor<i32>, tensor<8x4xf32>, tensor<2x16x4xf32>
// CHECK-NOT: unrealized_conversion_cast
// CHECK: module @mtfc.reference

// Shardy is handed one sharding per carried value on the while, the ops of
// the body annotated, and the body's block arguments read through one barrier.
// SDY: stablehlo.while
// SDY-SAME: sdy.sharding = #sdy.sharding_per_value<[<@mesh, []>, <@mesh, [{}, {"cols"}]>, <@mesh, [{}, {}, {"cols"}]>]>
// SDY: } do {
// SDY-NEXT: stablehlo.optimization_barrier
// SDY-SAME: mtfc.loop_arguments
// SDY-SAME: sdy.sharding = #sdy.sharding_per_value<[<@mesh, []>, <@mesh, [{}, {"cols"}]>, <@mesh, [{}, {}, {"cols"}]>]>
// SDY: stablehlo.dot_general {{.*}} sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{}, {"cols"}]>]>

// SPLIT: error: {{.*}}layout rule layers:rows splits the dim 'layers' that the loop at {{.*}} runs over

module @loop_shift attributes {mtfc.layout = "d_model:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                  %w: tensor<2x16x16xf32> {mtfc.dims = ["layers", "d_in", "d_model"], mtfc.init = "normal:0.25", mtfc.name = "params/w", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %r:3 = stablehlo.while(%i = %c0, %h = %x, %a = %w) : tensor<i32>, tensor<8x16xf32>, tensor<2x16x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_in", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 2 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<2> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %i, %z, %z, sizes = [1, 16, 16] {mtfc.dims = ["layers", "d_in", "d_model"]} : (tensor<2x16x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x16xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_in", "d_model"]} : (tensor<1x16x16xf32>) -> tensor<16x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
      %s = stablehlo.composite "mtfc.shift" %h {composite_attributes = {dim = 1 : i64, offset = 1 : i64, wrap = false}, decomposition = @mtfc.shift, mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %e = stablehlo.add %u, %s {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %h2 = stablehlo.tanh %e {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a : tensor<i32>, tensor<8x16xf32>, tensor<2x16x16xf32>
    }
    return %r#1 : tensor<8x16xf32>
  }
  func.func private @mtfc.shift(%arg0: tensor<8x16xf32>) -> tensor<8x16xf32> {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [0, 1], high = [0, 15], interior = [0, 0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x32xf32>
    %1 = stablehlo.slice %0 [0:8, 0:16] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>) -> tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}
