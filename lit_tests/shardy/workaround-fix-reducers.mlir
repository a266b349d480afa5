// Workaround `fix-reducers` (mtfc/passes/shardy/workarounds.py): the
// all_reduce completing a max over a split dim combines with a maximum.
// Skipped, Shardy (jaxlib 0.10) writes an add: silently wrong numbers.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=fix-reducers mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=SKIP

// CHECK: %[[MAX:.*]] = stablehlo.reduce(%arg0 init: %{{.*}}) applies stablehlo.maximum across dimensions = [1]
// CHECK-NEXT: "stablehlo.all_reduce"(%[[MAX]])
// CHECK-NEXT: ^bb0
// CHECK-NEXT: stablehlo.maximum

// SKIP: "stablehlo.all_reduce"
// SKIP-NEXT: ^bb0
// SKIP-NEXT: stablehlo.add

module @w attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "max", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0xFF800000> : tensor<f32>
    %0 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.maximum across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8xf32>
    return %0 : tensor<8xf32>
  }
}
