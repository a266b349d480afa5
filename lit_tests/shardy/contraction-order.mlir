// Shardy's lowering of a dot_general aborts unless the contracting dims'
// axes, dim after dim, are in mesh order (the order of its all_reduce).
// sdy-partition lists the contracting dims in that order (free), and reshards
// a dim split over axes out of mesh order (`k1:cols+rows`) to mesh order first.
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info --layout "k1:rows,k2:cols" | FileCheck %s --check-prefix=ORDERED
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info --layout "k1:cols+rows" | FileCheck %s --check-prefix=WITHIN

// k1 on cols, k2 on rows: the contracting dims are swapped, nothing else.
// CHECK: %[[DOT:.*]] = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1, 0] x [1, 0] {mtfc.dims = ["n"]} : (tensor<2x2xf32>, tensor<2x2x3xf32>) -> tensor<3xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%[[DOT]])
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]>
// CHECK-NOT: collective_permute

// ORDERED: stablehlo.dot_general %arg0, %arg1, contracting_dims = [0, 1] x [0, 1]
// ORDERED-NOT: collective_permute

// k1 split over cols then rows: both operands move to rows then cols.
// WITHIN: "stablehlo.collective_permute"(%arg0)
// WITHIN: "stablehlo.collective_permute"(%arg1)
// WITHIN: stablehlo.dot_general {{.*}} -> tensor<3xf32>
// WITHIN-NEXT: "stablehlo.all_reduce"
// WITHIN-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]>

module @contract attributes {mtfc.layout = "k1:cols,k2:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["k1", "k2"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<8x4x3xf32> {mtfc.dims = ["k1", "k2", "n"], mtfc.name = "w", mtfc.role = "input"}) -> (tensor<3xf32> {mtfc.dims = ["n"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [0, 1] x [0, 1] {mtfc.dims = ["n"]} : (tensor<8x4xf32>, tensor<8x4x3xf32>) -> tensor<3xf32>
    return %0 : tensor<3xf32>
  }
}
