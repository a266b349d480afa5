// Workaround `whole-gather` (mtfc/passes/shardy/workarounds.py): a lookup in
// a table split along the looked-up dim gets the table resharded whole along
// it first (`sdy.reshard`, lowered to an all_gather).  Without it Shardy
// (jaxlib 0.10) plans local lookups + all_reduce and its lowering writes a
// garbage index constant, then crashes the process -- so the skipped run is
// shown on `sdy-shardings` only: the reshard is gone.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s --check-prefix=PLAN
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=whole-gather mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s --check-prefix=SKIP

// CHECK: %[[T:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 0 : i64
// CHECK-SAME: {mtfc.dims = ["vocab", "e"]} : (tensor<16x4xf32>) -> tensor<64x4xf32>
// CHECK-NEXT: "stablehlo.gather"(%[[T]], %arg1)

// PLAN: %[[R:.*]] = sdy.reshard %arg0 <@mesh, [{}, {}]>
// PLAN-NEXT: "stablehlo.gather"(%[[R]], %arg1)

// SKIP-NOT: sdy.reshard
// SKIP: "stablehlo.gather"(%arg0, %arg1)

module @w attributes {mtfc.layout = "batch:rows,vocab:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<64x4xf32> {mtfc.dims = ["vocab", "e"], mtfc.name = "table", mtfc.role = "parameter"}, %arg1: tensor<8x4xi32> {mtfc.dims = ["batch", "seq"], mtfc.name = "ids", mtfc.role = "input"}) -> (tensor<8x4x4xf32> {mtfc.dims = ["batch", "seq", "e"], mtfc.name = "looked_up", mtfc.role = "output"}) {
    %0 = "stablehlo.gather"(%arg0, %arg1) <{dimension_numbers = #stablehlo.gather<offset_dims = [2], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 2>, indices_are_sorted = false, slice_sizes = array<i64: 1, 4>}> {mtfc.dims = ["batch", "seq", "e"]} : (tensor<64x4xf32>, tensor<8x4xi32>) -> tensor<8x4x4xf32>
    return %0 : tensor<8x4x4xf32>
  }
}
