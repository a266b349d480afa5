// Workaround `whole-concatenate` (mtfc/passes/shardy/workarounds.py): a
// concatenate along a split dim is computed whole along it: every operand is
// gathered, concatenated, and the result cut back to its layout.  (Found
// refused by jaxlib 0.10's sdy-convert-global-to-local, "dimension N is
// sharded but the concatenation is on this dimension"; on this module
// Shardy alone now plans all_to_alls instead, with the right numbers (checked
// once by hand) -- run the op and property tests with it skipped to drop it.)
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=whole-concatenate mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=SKIP

// CHECK: %[[A:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64
// CHECK-NEXT: %[[B:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64
// CHECK-NEXT: %[[CAT:.*]] = stablehlo.concatenate %[[A]], %[[B]], dim = 1 {mtfc.dims = ["batch", "d"]} : (tensor<4x16xf32>, tensor<4x16xf32>) -> tensor<4x32xf32>
// CHECK: stablehlo.dynamic_slice %[[CAT]], %{{.*}}, %{{.*}}, sizes = [4, 8]

// SKIP-NOT: all_gather
// SKIP: "stablehlo.all_to_all"(%arg0)

module @w attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x32xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "cat", mtfc.role = "output"}) {
    %0 = stablehlo.concatenate %arg0, %arg0, dim = 1 {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x32xf32>
    return %0 : tensor<8x32xf32>
  }
}
