// mtf.shift is one op in the IR: stablehlo.composite "mtfc.shift" (docs/IR.md
// "Composite ops").  Along a split dim the partitioner reads the composite and
// sends the one-column halo to the next device of the row -- whatever the
// decomposition looks like; the decomposition is dropped from the per-device
// program (it stays in the reference).
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-LABEL: func.func @main
// CHECK-NOT: stablehlo.composite
// CHECK: %[[HALO:.*]] = stablehlo.slice %arg0 [0:8, 3:4] {mtfc.dims = ["batch", "d"]} : (tensor<8x4xf32>) -> tensor<8x1xf32>
// CHECK-NEXT: %[[RECV:.*]] = "stablehlo.collective_permute"(%[[HALO]]) <{source_target_pairs = dense<{{\[}}[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7]]> : tensor<6x2xi64>}>
// CHECK-NEXT: %[[OWN:.*]] = stablehlo.slice %arg0 [0:8, 0:3]
// CHECK-NEXT: %[[Y:.*]] = stablehlo.concatenate %[[RECV]], %[[OWN]], dim = 1 {mtfc.dims = ["batch", "d"]} : (tensor<8x1xf32>, tensor<8x3xf32>) -> tensor<8x4xf32>
// CHECK-NEXT: return %[[Y]]
// CHECK-NOT: all_gather
// CHECK: module @mtfc.reference
// CHECK: stablehlo.composite "mtfc.shift"
// CHECK: func.func private @mtfc.shift

module @shift attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.composite "mtfc.shift" %arg0 {composite_attributes = {dim = 1 : i64, offset = 1 : i64, wrap = false}, decomposition = @mtfc.shift, mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
    return %0 : tensor<8x16xf32>
  }
  func.func private @mtfc.shift(%arg0: tensor<8x16xf32>) -> tensor<8x16xf32> {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [0, 1], high = [0, 15], interior = [0, 0] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x32xf32>
    %1 = stablehlo.slice %0 [0:8, 0:16] {mtfc.dims = ["batch", "d"]} : (tensor<8x32xf32>) -> tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}
