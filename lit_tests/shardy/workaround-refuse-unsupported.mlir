// Workaround `refuse-unsupported` (mtfc/passes/shardy/workarounds.py): an op
// not marked `shardy` in mtfc/passes/op_rules.py with a split value is
// refused before Shardy runs (lit_tests/shardy/errors.mlir: the same for a
// module already partitioned): jaxlib 0.10's sdy-convert-global-to-local
// aborts the process on some ops it cannot partition (a reduce_window did,
// before `whole-reduce-window`: lit_tests/shardy/workaround-whole-reduce-window.mlir).
// Skipped, an op mtfc has not checked is handed to Shardy as it is (here a
// reduce_precision, lowered block by block).
//
// RUN: not mtfc opt %s --passes sdy-partition 2>&1 | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=refuse-unsupported mtfc opt %s --passes sdy-partition --no-debug-info 2>&1 | FileCheck %s --check-prefix=SKIP
// An unknown workaround name is one line.
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=refuse-unsupported,no-such not mtfc opt %s --passes sdy-partition 2>&1 | FileCheck %s --check-prefix=UNKNOWN

// CHECK: error: sdy-partition: stablehlo.reduce_precision at precision(model.py:8:1) has split values ([batch, d], [batch, d]) and is not known to go through Shardy
// CHECK-NOT: Traceback

// SKIP: stablehlo.reduce_precision %arg0, format = e5m10 {{.*}} : tensor<8x4xf32>

// UNKNOWN: error: MTFC_SDY_SKIP_WORKAROUNDS: unknown workaround 'no-such' (known: refuse-unsupported,
// UNKNOWN-NOT: Traceback

module @rp attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %1 = stablehlo.reduce_precision %arg0, format = e5m10 {mtfc.dims = ["batch", "d"]} : tensor<8x16xf32> loc(#precision)
    return %1 : tensor<8x16xf32>
  }
}
#precision = loc("precision"("model.py":8:1))
