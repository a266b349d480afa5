// A cyclic shift by -6 (slice(concat(x, x))) on d split 4 ways in blocks of 4:
// two halves come from the devices 1 and 2 further along the row, cyclically.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: stablehlo.slice %arg0 [0:8, 2:4]
// CHECK-NEXT: "stablehlo.collective_permute"(%{{.*}}) <{source_target_pairs = dense<{{\[}}[1, 0], [2, 1], [3, 2], [0, 3], [5, 4], [6, 5], [7, 6], [4, 7]]> : tensor<8x2xi64>}>
// CHECK-NEXT: stablehlo.slice %arg0 [0:8, 0:2]
// CHECK-NEXT: "stablehlo.collective_permute"(%{{.*}}) <{source_target_pairs = dense<{{\[}}[2, 0], [3, 1], [0, 2], [1, 3], [6, 4], [7, 5], [4, 6], [5, 7]]> : tensor<8x2xi64>}>
// CHECK-NEXT: stablehlo.concatenate {{.*}} -> tensor<8x4xf32>

module @roll attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = stablehlo.concatenate %arg0, %arg0, dim = 1 {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x32xf32>
    %1 = stablehlo.slice %0 [0:8, 6:22] {mtfc.dims = ["batch", "d"]} : (tensor<8x32xf32>) -> tensor<8x16xf32>
    return %1 : tensor<8x16xf32>
  }
}

