// Workaround (mtfc/passes/shardy_conv.py): Shardy (jaxlib 0.10) partitions a
// convolution with a split spatial dim as if each block were the whole image
// (no halo: wrong numbers).  sdy-partition computes it whole along its
// spatial dims: the input is resharded whole along h (batch stays split),
// the convolution's sharding is whole along h, and its result is resharded
// back to the layout.  Split batch and features are left to Shardy.
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info --layout "b:rows,h:cols" | FileCheck %s
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info --layout "b:rows,o:cols" | FileCheck %s --check-prefix=FEATURES
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info --layout "b:rows,h:cols" | FileCheck %s --check-prefix=LOWERED

// CHECK: %[[WHOLE:.*]] = sdy.reshard %arg0 <@mesh, [{"rows"}, {}, {}, {}]> {mtfc.dims = ["b", "h", "w", "c"]}
// CHECK-NEXT: %[[Y:.*]] = stablehlo.convolution(%[[WHOLE]], %arg1) {{.*}} sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{"rows"}, {}, {}, {}]>]>
// CHECK-NEXT: %[[BACK:.*]] = sdy.reshard %[[Y]] <@mesh, [{"rows"}, {"cols"}, {}, {}]>
// CHECK-NEXT: return %[[BACK]]

// FEATURES-NOT: sdy.reshard
// FEATURES: stablehlo.convolution(%arg0, %arg1) {{.*}} sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{"rows"}, {}, {}, {"cols"}]>]>

// LOWERED: all_gather
// LOWERED: stablehlo.convolution{{.*}} -> tensor<1x16x4x4xf32>
// LOWERED: stablehlo.dynamic_slice

module @model attributes {mtfc.layout = "h:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<3x1x4x4xf32> {mtfc.dims = ["kh", "kw", "c", "o"], mtfc.init = "normal:1.0", mtfc.name = "k", mtfc.role = "input"}) -> (tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "o"], mtfc.name = "out", mtfc.role = "output"}) {
    %0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [1, 1], pad = [[1, 1], [0, 0]], lhs_dilate = [1, 1], rhs_dilate = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64, mtfc.dims = ["b", "h", "w", "o"]} : (tensor<2x16x4x4xf32>, tensor<3x1x4x4xf32>) -> tensor<2x16x4x4xf32>
    return %0 : tensor<2x16x4x4xf32>
  }
}
