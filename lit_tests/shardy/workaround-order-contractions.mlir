// Workaround `order-contractions` (mtfc/passes/shardy/workarounds.py), after
// Shardy plans: each dot_general's contracting dims are listed in the order
// of the axes of the all_reduce Shardy planned after it, and what no order
// fixes is refused in one line.  Shown with `contraction-mesh-order` (which
// makes the order right before planning) skipped: the swap is done here
// (SWAP); a dim split out of mesh order is refused (WITHIN).  With both
// skipped, jaxlib 0.10's sdy-convert-global-to-local aborts the process
// (lit_tests/shardy/workaround-contraction-mesh-order.mlir, BOTH).
//
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=contraction-mesh-order mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=SWAP
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=contraction-mesh-order not mtfc opt %s --passes sdy-partition --layout "k1:cols+rows" 2>&1 | FileCheck %s --check-prefix=WITHIN

// SWAP: stablehlo.dot_general %arg0, %arg1, contracting_dims = [1, 0] x [1, 0] {mtfc.dims = ["n"]} : (tensor<2x2xf32>, tensor<2x2x3xf32>) -> tensor<3xf32>
// SWAP-NEXT: "stablehlo.all_reduce"
// SWAP-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]>

// WITHIN: error: sdy-partition: stablehlo.dot_general at {{.*}} sums over dims split over mesh axes cols + rows in an order Shardy (jaxlib 0.10) cannot lower (it would abort); use --mode explicit or gspmd for it
// WITHIN-NOT: Traceback

module @contract attributes {mtfc.layout = "k1:cols,k2:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["k1", "k2"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<8x4x3xf32> {mtfc.dims = ["k1", "k2", "n"], mtfc.name = "w", mtfc.role = "input"}) -> (tensor<3xf32> {mtfc.dims = ["n"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [0, 1] x [0, 1] {mtfc.dims = ["n"]} : (tensor<8x4xf32>, tensor<8x4x3xf32>) -> tensor<3xf32>
    return %0 : tensor<3xf32>
  }
}
