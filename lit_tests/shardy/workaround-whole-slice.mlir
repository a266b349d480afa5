// Workaround `whole-slice` (mtfc/passes/shardy/workarounds.py): a slice
// along a split dim is computed whole along it -- the operand gathered, the
// slice taken, the result cut back to its layout by partition id.  Skipped,
// Shardy (jaxlib 0.10) refuses the module.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=whole-slice not mtfc opt %s --passes sdy-partition --no-debug-info 2>&1 | FileCheck %s --check-prefix=SKIP

// CHECK: %[[WHOLE:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64
// CHECK-SAME: (tensor<4x4xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[SLICE:.*]] = stablehlo.slice %[[WHOLE]] [0:4, 2:10] {mtfc.dims = ["batch", "d"]} : (tensor<4x16xf32>) -> tensor<4x8xf32>
// CHECK: stablehlo.dynamic_slice %[[SLICE]], %{{.*}}, %{{.*}}, sizes = [4, 2] {mtfc.dims = ["batch", "d"]}

// SKIP: error: sdy-partition: Shardy's sdy-convert-global-to-local failed: 'stablehlo.slice' op dimension 1 is sharded but the slice is not a full slice and requires device communication
// SKIP-NOT: Traceback

module @w attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x8xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "sliced", mtfc.role = "output"}) {
    %0 = stablehlo.slice %arg0 [0:8, 2:10] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>) -> tensor<8x8xf32>
    return %0 : tensor<8x8xf32>
  }
}
