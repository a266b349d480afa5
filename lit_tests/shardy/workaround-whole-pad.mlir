// Workaround `whole-pad` (mtfc/passes/shardy/workarounds.py): a pad along a
// split dim is computed whole along it (operand gathered, padded, cut back).
// Skipped, Shardy (jaxlib 0.10) pads each device's block as if it were the
// whole dim -- a 4-wide block padded to 12 and cut: silently wrong numbers.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=whole-pad mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=SKIP

// CHECK: %[[WHOLE:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64
// CHECK-NEXT: %[[PAD:.*]] = stablehlo.pad %[[WHOLE]], %{{.*}}, low = [0, 4], high = [0, 4], interior = [0, 0] {mtfc.dims = ["batch", "d"]} : (tensor<4x16xf32>, tensor<f32>) -> tensor<4x24xf32>
// CHECK: stablehlo.dynamic_slice %[[PAD]], %{{.*}}, %{{.*}}, sizes = [4, 6]

// SKIP-NOT: all_gather
// SKIP: stablehlo.pad %arg0, %{{.*}}, low = [0, 4], high = [0, 4], interior = [0, 0] {mtfc.dims = ["batch", "d"]} : (tensor<4x4xf32>, tensor<f32>) -> tensor<4x12xf32>

module @w attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x24xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "padded", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<1.0> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [0, 4], high = [0, 4], interior = [0, 0] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x24xf32>
    return %0 : tensor<8x24xf32>
  }
}
