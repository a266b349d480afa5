// Where Shardy (jaxlib 0.10) needs help, and what sdy-partition makes of it
// (docs/passes/shardy.md, "Where Shardy needs help").
//
// RUN: mtfc opt %s --passes sdy-partition --no-debug-info | FileCheck %s

// A max over a split dim: Shardy's all_reduce combines with the reduce's own
// reducer (Shardy alone writes an add).
// CHECK-LABEL: func.func @main
// CHECK: %[[MAX:.*]] = stablehlo.reduce(%arg0 init: %{{.*}}) applies stablehlo.maximum across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<4x4xf32>, tensor<f32>) -> tensor<4xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%[[MAX]])
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>
// CHECK-NEXT: ^bb0
// CHECK-NEXT: stablehlo.maximum

// A slice of a split dim: the operand is gathered along it, sliced whole,
// and the result cut back to its layout by partition id.
// CHECK: %[[WHOLE:.*]] = "stablehlo.all_gather"(%arg0) <{all_gather_dim = 1 : i64
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>
// CHECK-SAME: (tensor<4x4xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[SLICE:.*]] = stablehlo.slice %[[WHOLE]] [0:4, 2:10] {mtfc.dims = ["batch", "d"]} : (tensor<4x16xf32>) -> tensor<4x8xf32>
// CHECK: stablehlo.partition_id
// CHECK: stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 2, 4, 6, 0, 2, 4, 6]> : tensor<8xi64>
// CHECK: stablehlo.dynamic_slice %[[SLICE]], %{{.*}}, %{{.*}}, sizes = [4, 2] {mtfc.dims = ["batch", "d"]} : (tensor<4x8xf32>, tensor<i64>, tensor<i64>) -> tensor<4x2xf32>

// A lookup in a table split along the looked-up dim: the table is gathered
// first (Shardy's own plan crashes it).
// CHECK: "stablehlo.all_gather"(%arg1) <{all_gather_dim = 0 : i64
// CHECK-SAME: {mtfc.dims = ["vocab", "e"]} : (tensor<16x4xf32>) -> tensor<64x4xf32>
// CHECK-NEXT: "stablehlo.gather"

// A dim renamed from `cols` to `rows`: Shardy plans it with sub-axes, whose
// lowering is inconsistent, so it is planned on the mesh rows=2, cols_0=2,
// cols_1=2: a permute then an all_gather, each device ending with its block.
// CHECK: "stablehlo.collective_permute"
// CHECK-SAME{LITERAL}: source_target_pairs = dense<[[0, 0], [1, 1], [2, 4], [3, 5], [4, 2], [5, 3], [6, 6], [7, 7]]>
// CHECK-NEXT: "stablehlo.all_gather"
// CHECK-SAME{LITERAL}: replica_groups = dense<[[0, 1], [2, 3], [4, 5], [6, 7]]> : tensor<4x2xi64>
// CHECK-SAME: -> tensor<8x8xf32>

// CHECK: module @mtfc.reference
// CHECK-NOT: sdy.

module @workarounds attributes {mtfc.layout = "batch:rows,d:cols,vocab:cols,e_rows:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"},
                  %arg1: tensor<64x4xf32> {mtfc.dims = ["vocab", "e"], mtfc.name = "table", mtfc.role = "parameter"},
                  %arg2: tensor<8x4xi32> {mtfc.dims = ["batch", "seq"], mtfc.name = "ids", mtfc.role = "input"},
                  %arg3: tensor<8x16xf32> {mtfc.dims = ["b", "d"], mtfc.name = "z", mtfc.role = "input"})
      -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "max", mtfc.role = "output"},
          tensor<8x8xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "sliced", mtfc.role = "output"},
          tensor<8x4x4xf32> {mtfc.dims = ["batch", "seq", "e"], mtfc.name = "looked_up", mtfc.role = "output"},
          tensor<8x16xf32> {mtfc.dims = ["b", "e_rows"], mtfc.name = "renamed", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0xFF800000> : tensor<f32>
    %0 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.maximum across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8xf32>
    %1 = stablehlo.slice %arg0 [0:8, 2:10] {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>) -> tensor<8x8xf32>
    %2 = "stablehlo.gather"(%arg1, %arg2) <{dimension_numbers = #stablehlo.gather<offset_dims = [2], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 2>, indices_are_sorted = false, slice_sizes = array<i64: 1, 4>}> {mtfc.dims = ["batch", "seq", "e"]} : (tensor<64x4xf32>, tensor<8x4xi32>) -> tensor<8x4x4xf32>
    %3 = stablehlo.reshape %arg3 {mtfc.dims = ["b", "e_rows"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
    return %0, %1, %2, %3 : tensor<8xf32>, tensor<8x8xf32>, tensor<8x4x4xf32>, tensor<8x16xf32>
  }
}
