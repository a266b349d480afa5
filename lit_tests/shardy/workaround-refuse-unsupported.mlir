// Workaround `refuse-unsupported` (mtfc/passes/shardy/workarounds.py): an op
// not marked `shardy` in mtfc/passes/op_rules.py with a split value is
// refused before Shardy runs (lit_tests/shardy/errors.mlir: the same for a
// module already partitioned).  Skipped, jaxlib 0.10's
// sdy-convert-global-to-local fails a CHECK on a reduce_window with a split
// window dim and aborts the process.
//
// RUN: not mtfc opt %s --passes sdy-partition 2>&1 | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=refuse-unsupported mtfc opt %s --passes sdy-partition > %t.SKIP 2>&1 || true
// RUN: FileCheck %s --check-prefix=SKIP --input-file %t.SKIP
// An unknown workaround name is one line.
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=refuse-unsupported,no-such not mtfc opt %s --passes sdy-partition 2>&1 | FileCheck %s --check-prefix=UNKNOWN

// CHECK: error: sdy-partition: stablehlo.reduce_window at window(model.py:7:1) has split values ([batch, d], [batch, d]) and is not known to go through Shardy
// CHECK-NOT: Traceback

// SKIP: In op stablehlo.reduce_window dimension 1 is sharded but is not a pass-through dimension

// UNKNOWN: error: MTFC_SDY_SKIP_WORKAROUNDS: unknown workaround 'no-such' (known: refuse-unsupported,
// UNKNOWN-NOT: Traceback

module @rw attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.0> : tensor<f32>
    %0 = "stablehlo.reduce_window"(%arg0, %cst) <{window_dimensions = array<i64: 1, 3>, padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %c = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %c : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x16xf32> loc(#window)
    return %0 : tensor<8x16xf32>
  }
}
#window = loc("window"("model.py":7:1))
