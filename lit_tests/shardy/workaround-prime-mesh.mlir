// Workaround `prime-mesh` (mtfc/passes/shardy/workarounds.py): renaming a dim
// from `cols` to `rows` makes Shardy plan with sub-axes ("cols":(2)2), whose
// lowering in jaxlib 0.10 is inconsistent; sdy-partition plans again on the
// mesh rows=2, cols_0=2, cols_1=2: a permute then an all_gather, each device
// ending with its block.  Skipped, the sub-axis plan is lowered with another
// permutation (devices 1 and 4 swap instead of 2 and 4): devices end with
// duplicate blocks (`mtfc run --check`: "replicas of an output disagree").
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: env MTFC_SDY_SKIP_WORKAROUNDS=prime-mesh mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s --check-prefix=SKIP

// CHECK: "stablehlo.collective_permute"
// CHECK-SAME{LITERAL}: source_target_pairs = dense<[[0, 0], [1, 1], [2, 4], [3, 5], [4, 2], [5, 3], [6, 6], [7, 7]]>
// CHECK-NEXT: "stablehlo.all_gather"
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1], [2, 3], [4, 5], [6, 7]]> : tensor<4x2xi64>

// SKIP: "stablehlo.collective_permute"
// SKIP-SAME{LITERAL}: source_target_pairs = dense<[[0, 0], [1, 4], [2, 2], [3, 6], [4, 1], [5, 5], [6, 3], [7, 7]]>

module @w attributes {mtfc.layout = "d:cols,e_rows:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["b", "d"], mtfc.name = "z", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["b", "e_rows"], mtfc.name = "renamed", mtfc.role = "output"}) {
    %0 = stablehlo.reshape %arg0 {mtfc.dims = ["b", "e_rows"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
    return %0 : tensor<8x16xf32>
  }
}
