// Workaround `contraction-mesh-order` (mtfc/passes/shardy/workarounds.py),
// before Shardy plans: a dot_general's contracting dims are listed in the
// order of their axes, and a dim split over axes out of mesh order
// (`k1:cols+rows`) is resharded to mesh order on both operands
// (lit_tests/shardy/contraction-order.mlir shows the lowered result).
// Skipped, `order-contractions` still reorders the dims after planning
// (SWAP), but a dim out of mesh order is refused in one line (WITHIN); with
// both skipped, jaxlib 0.10's sdy-convert-global-to-local fails a CHECK and
// aborts the process (BOTH; the crash's message is checked, not its exit status).
//
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info --layout "k1:cols+rows" | FileCheck %s --check-prefix=RESHARD
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=contraction-mesh-order mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=SWAP
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=contraction-mesh-order not mtfc opt %s --passes sdy-partition --layout "k1:cols+rows" 2>&1 | FileCheck %s --check-prefix=WITHIN
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=contraction-mesh-order,order-contractions mtfc opt %s --passes sdy-partition > %t.BOTH 2>&1 || true
// RUN: FileCheck %s --check-prefix=BOTH --input-file %t.BOTH

// CHECK: stablehlo.dot_general %arg0, %arg1, contracting_dims = [1, 0] x [1, 0]
// CHECK-NOT: sdy.reshard

// RESHARD: %[[X:.*]] = sdy.reshard %arg0 <@mesh, [{"rows", "cols"}, {}]>
// RESHARD-NEXT: %[[W:.*]] = sdy.reshard %arg1 <@mesh, [{"rows", "cols"}, {}, {}]>
// RESHARD-NEXT: stablehlo.dot_general %[[X]], %[[W]], contracting_dims = [0, 1] x [0, 1]

// SWAP: stablehlo.dot_general %arg0, %arg1, contracting_dims = [1, 0] x [1, 0] {mtfc.dims = ["n"]} : (tensor<2x2xf32>, tensor<2x2x3xf32>) -> tensor<3xf32>
// SWAP-NEXT: "stablehlo.all_reduce"

// WITHIN: error: sdy-partition: stablehlo.dot_general at {{.*}} sums over dims split over mesh axes cols + rows in an order Shardy (jaxlib 0.10) cannot lower

// BOTH: The axes of the sdy.all_reduce should match the sharded contracting dimensions

module @contract attributes {mtfc.layout = "k1:cols,k2:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["k1", "k2"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<8x4x3xf32> {mtfc.dims = ["k1", "k2", "n"], mtfc.name = "w", mtfc.role = "input"}) -> (tensor<3xf32> {mtfc.dims = ["n"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [0, 1] x [0, 1] {mtfc.dims = ["n"]} : (tensor<8x4xf32>, tensor<8x4x3xf32>) -> tensor<3xf32>
    return %0 : tensor<3xf32>
  }
}
