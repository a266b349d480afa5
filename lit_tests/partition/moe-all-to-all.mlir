// Mixture of experts (Mesh TF's rename of the split dim, docs/passes/partition.md,
// "Mixture of experts"): the dispatched tokens [experts_unsplit, batch, capacity, d]
// have the groups (`batch`) split over `rows`; renamed to [experts, batch_unsplit,
// capacity, d] (a reshape of equal shape) the experts take `rows`: ONE all_to_all
// (split the experts dim 0, concatenate the groups dim 1, over each mesh column);
// the experts compute locally; the rename back is the mirror all_to_all; the
// combine is local.  fuse-collectives keeps both.
// RUN: mtfc opt %s --passes partition,fuse-collectives --no-debug-info | FileCheck %s

// CHECK-NOT: all_gather
// CHECK: stablehlo.dot_general %arg1, %arg0, {{.*}} -> tensor<2x4x2x8xf32>
// CHECK-NEXT: stablehlo.transpose {{.*}} -> tensor<4x2x2x8xf32>
// CHECK: %[[IN:.*]] = "stablehlo.all_to_all"(%{{.*}}) <{concat_dimension = 1 : i64, replica_groups = dense<{{\[\[}}0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>, split_count = 2 : i64, split_dimension = 0 : i64}> {mtfc.dims = ["experts_unsplit", "batch", "expert_capacity", "d_model"]} : (tensor<4x2x2x8xf32>) -> tensor<2x4x2x8xf32>
// CHECK-NEXT: stablehlo.reshape %[[IN]] {mtfc.dims = ["experts", "batch_unsplit", "expert_capacity", "d_model"]} : (tensor<2x4x2x8xf32>) -> tensor<2x4x2x8xf32>
// CHECK-NOT: all_to_all
// CHECK: stablehlo.dot_general %{{.*}}, %arg3, {{.*}} -> tensor<2x4x2x8xf32>
// CHECK-NEXT: %[[BACK:.*]] = "stablehlo.all_to_all"(%{{.*}}) <{concat_dimension = 0 : i64, replica_groups = dense<{{\[\[}}0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>, split_count = 2 : i64, split_dimension = 1 : i64}> {mtfc.dims = ["experts", "batch_unsplit", "expert_capacity", "d_out"]} : (tensor<2x4x2x8xf32>) -> tensor<4x2x2x8xf32>
// CHECK-NEXT: stablehlo.reshape %[[BACK]] {mtfc.dims = ["experts_unsplit", "batch", "expert_capacity", "d_out"]} : (tensor<4x2x2x8xf32>) -> tensor<4x2x2x8xf32>
// CHECK-NOT: all_to_all
// CHECK-NOT: all_gather
// CHECK: return

module @moe attributes {mtfc.layout = "batch:rows,experts:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<4x4x8xf32> {mtfc.dims = ["batch", "group", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                  %dispatch: tensor<4x4x4x2xf32> {mtfc.dims = ["batch", "group", "experts_unsplit", "expert_capacity"], mtfc.init = "normal:1.0", mtfc.name = "dispatch", mtfc.role = "input"},
                  %combine: tensor<4x4x4x2xf32> {mtfc.dims = ["batch", "group", "experts_unsplit", "expert_capacity"], mtfc.init = "normal:1.0", mtfc.name = "combine", mtfc.role = "input"},
                  %w: tensor<4x8x8xf32> {mtfc.dims = ["experts", "d_model", "d_out"], mtfc.init = "normal:1.0", mtfc.name = "w", mtfc.role = "parameter"})
      -> (tensor<4x4x8xf32> {mtfc.dims = ["batch", "group", "d_out"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.dot_general %dispatch, %x, batching_dims = [0] x [0], contracting_dims = [1] x [1] {mtfc.dims = ["batch", "experts_unsplit", "expert_capacity", "d_model"]} : (tensor<4x4x4x2xf32>, tensor<4x4x8xf32>) -> tensor<4x4x2x8xf32>
    %1 = stablehlo.transpose %0, dims = [1, 0, 2, 3] {mtfc.dims = ["experts_unsplit", "batch", "expert_capacity", "d_model"]} : (tensor<4x4x2x8xf32>) -> tensor<4x4x2x8xf32>
    %2 = stablehlo.reshape %1 {mtfc.dims = ["experts", "batch_unsplit", "expert_capacity", "d_model"]} : (tensor<4x4x2x8xf32>) -> tensor<4x4x2x8xf32>
    %3 = stablehlo.dot_general %2, %w, batching_dims = [0] x [0], contracting_dims = [3] x [1] {mtfc.dims = ["experts", "batch_unsplit", "expert_capacity", "d_out"]} : (tensor<4x4x2x8xf32>, tensor<4x8x8xf32>) -> tensor<4x4x2x8xf32>
    %4 = stablehlo.reshape %3 {mtfc.dims = ["experts_unsplit", "batch", "expert_capacity", "d_out"]} : (tensor<4x4x2x8xf32>) -> tensor<4x4x2x8xf32>
    %5 = stablehlo.dot_general %combine, %4, batching_dims = [0] x [1], contracting_dims = [2, 3] x [0, 2] {mtfc.dims = ["batch", "group", "d_out"]} : (tensor<4x4x4x2xf32>, tensor<4x4x2x8xf32>) -> tensor<4x4x8xf32>
    return %5 : tensor<4x4x8xf32>
  }
}
