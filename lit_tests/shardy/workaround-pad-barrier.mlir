// Workaround `pad-barrier` (mtfc/passes/shardy/workarounds.py): a pad with a
// non-zero value feeding a dot_general that sums over a split dim reaches it
// through an optimization_barrier.  Skipped, jaxlib 0.10's
// sdy-convert-global-to-local fails a CHECK and aborts the process.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=pad-barrier mtfc opt %s --passes sdy-partition --no-debug-info > %t.SKIP 2>&1 || true
// RUN: FileCheck %s --check-prefix=SKIP --input-file %t.SKIP

// CHECK: %[[PAD:.*]] = stablehlo.pad %arg0, %{{.*}}, low = [1, 0], high = [1, 0], interior = [0, 0] {mtfc.dims = ["b", "k"]} : (tensor<6x4xf32>, tensor<f32>) -> tensor<8x4xf32>
// CHECK-NEXT: %[[B:.*]] = stablehlo.optimization_barrier {mtfc.dims = ["b", "k"]} %[[PAD]] : tensor<8x4xf32>
// CHECK-NEXT: %[[DOT:.*]] = stablehlo.dot_general %[[B]], %arg1, contracting_dims = [1] x [0]
// CHECK-NEXT: "stablehlo.all_reduce"(%[[DOT]])

// SKIP: Padding value must be zero for sharded contracting dot_general

module @w attributes {mtfc.layout = "k:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<6x16xf32> {mtfc.dims = ["b", "k"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<16x4xf32> {mtfc.dims = ["k", "n"], mtfc.name = "w", mtfc.role = "input"}) -> (tensor<8x4xf32> {mtfc.dims = ["b", "n"], mtfc.name = "y", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<1.0> : tensor<f32>
    %0 = stablehlo.pad %arg0, %cst, low = [1, 0], high = [1, 0], interior = [0, 0] {mtfc.dims = ["b", "k"]} : (tensor<6x16xf32>, tensor<f32>) -> tensor<8x16xf32>
    %1 = stablehlo.dot_general %0, %arg1, contracting_dims = [1] x [0] {mtfc.dims = ["b", "n"]} : (tensor<8x16xf32>, tensor<16x4xf32>) -> tensor<8x4xf32>
    return %1 : tensor<8x4xf32>
  }
}
