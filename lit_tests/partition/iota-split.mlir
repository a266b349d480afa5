// iota along a split dim: a local iota plus this device's offset.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: %[[I:.*]] = stablehlo.iota dim = 1 {mtfc.dims = ["batch", "d"]} : tensor<8x4xi32>
// CHECK: stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 4, 8, 12, 0, 4, 8, 12]> : tensor<8xi32>
// CHECK: %[[OFF:.*]] = stablehlo.broadcast_in_dim %{{.*}}, dims = [] {mtfc.dims = ["batch", "d"]} : (tensor<i32>) -> tensor<8x4xi32>
// CHECK-NEXT: stablehlo.add %[[I]], %[[OFF]]
// CHECK-NOT: all_

module @iota attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main() -> (tensor<8x16xi32> {mtfc.dims = ["batch", "d"], mtfc.name = "i", mtfc.role = "output"}) {
    %0 = stablehlo.iota dim = 1 {mtfc.dims = ["batch", "d"]} : tensor<8x16xi32>
    return %0 : tensor<8x16xi32>
  }
}

