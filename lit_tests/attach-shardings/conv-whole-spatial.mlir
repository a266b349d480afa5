// Workaround (mtfc/passes/gspmd_conv.py): XLA's SPMD partitioner (jaxlib
// 0.10) miscomputes some convolutions with split spatial dims (the kernel
// gradient under h:cols, a depthwise one under h:rows,o:cols).  In gspmd mode
// a convolution runs whole along its spatial dims: a @Sharding constraint
// whole along h on the input, the op's own sharding whole along h, and a
// @Sharding back to the layout after it.  Batch and features keep their split.
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "b:rows,h:cols" | FileCheck %s
// RUN: mtfc opt %s --passes attach-shardings --no-debug-info --layout "b:rows,o:cols" | FileCheck %s --check-prefix=FEATURES

// CHECK: %[[WHOLE:.*]] = stablehlo.custom_call @Sharding(%arg0) {mhlo.sharding = "{devices=[2,1,1,1,4]<=[8] last_tile_dim_replicate}", mtfc.dims = ["b", "h", "w", "c"]}
// CHECK-NEXT: %[[Y:.*]] = stablehlo.convolution(%[[WHOLE]], %arg1) {{.*}}mhlo.sharding = "{devices=[2,1,1,1,4]<=[8] last_tile_dim_replicate}", mtfc.dims = ["b", "h", "w", "o"]}
// CHECK-NEXT: %[[BACK:.*]] = stablehlo.custom_call @Sharding(%[[Y]]) {mhlo.sharding = "{devices=[2,4,1,1]<=[8]}", mtfc.dims = ["b", "h", "w", "o"]}
// CHECK-NEXT: return %[[BACK]]

// FEATURES-NOT: @Sharding
// FEATURES: stablehlo.convolution(%arg0, %arg1) {{.*}}mhlo.sharding = "{devices=[2,1,1,4]<=[8]}"

module @model attributes {mtfc.layout = "h:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "c"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<3x1x4x4xf32> {mtfc.dims = ["kh", "kw", "c", "o"], mtfc.init = "normal:1.0", mtfc.name = "k", mtfc.role = "input"}) -> (tensor<2x16x4x4xf32> {mtfc.dims = ["b", "h", "w", "o"], mtfc.name = "out", mtfc.role = "output"}) {
    %0 = stablehlo.convolution(%arg0, %arg1) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [1, 1], pad = [[1, 1], [0, 0]], lhs_dilate = [1, 1], rhs_dilate = [1, 1]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64, mtfc.dims = ["b", "h", "w", "o"]} : (tensor<2x16x4x4xf32>, tensor<3x1x4x4xf32>) -> tensor<2x16x4x4xf32>
    return %0 : tensor<2x16x4x4xf32>
  }
}
