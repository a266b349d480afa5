// Table row: replace_dims that makes a dim split (d -> heads x d_k, heads on
// `cols`): the input is whole along d, so each device cuts its own block --
// no communication.  The offset is a per-device table indexed by replica_id.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK-NOT: all_
// CHECK: %[[TABLE:.*]] = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 4, 8, 12, 0, 4, 8, 12]> : tensor<8xi32>
// CHECK: stablehlo.replica_id
// CHECK: %[[BLOCK:.*]] = stablehlo.dynamic_slice %arg0, %{{.*}}, %{{.*}}, sizes = [4, 4] {mtfc.dims = ["batch", "d"]} : (tensor<4x16xf32>, tensor<i32>, tensor<i32>) -> tensor<4x4xf32>
// CHECK-NEXT: stablehlo.reshape %[[BLOCK]] {mtfc.dims = ["batch", "heads", "d_k"]} : (tensor<4x4xf32>) -> tensor<4x1x4xf32>

module @split_heads attributes {mtfc.layout = "batch:rows,heads:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x4x4xf32> {mtfc.dims = ["batch", "heads", "d_k"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.reshape %arg0 {mtfc.dims = ["batch", "heads", "d_k"]} : (tensor<8x16xf32>) -> tensor<8x4x4xf32>
    return %0 : tensor<8x4x4xf32>
  }
}

