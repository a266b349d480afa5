// Workaround (mtfc/passes/shardy_conv.py): Shardy (jaxlib 0.10) reverses each
// block of a split dim in place (a convolution's flipped kernel under
// `kw:rows` gave a wrong input gradient).  sdy-partition computes a reverse
// whole along its reversed dims; the other dims keep their split.
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s

// CHECK: %[[WHOLE:.*]] = sdy.reshard %arg0 <@mesh, [{}, {"cols"}]> {mtfc.dims = ["kh", "o"]}
// CHECK-NEXT: %[[R:.*]] = stablehlo.reverse %[[WHOLE]], dims = [0] {{.*}}sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{}, {"cols"}]>]>
// CHECK-NEXT: %[[BACK:.*]] = sdy.reshard %[[R]] <@mesh, [{"rows"}, {"cols"}]>
// CHECK-NEXT: return %[[BACK]]

module @rev attributes {mtfc.layout = "kh:rows,o:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<4x8xf32> {mtfc.dims = ["kh", "o"], mtfc.init = "normal:1.0", mtfc.name = "k", mtfc.role = "input"}) -> (tensor<4x8xf32> {mtfc.dims = ["kh", "o"], mtfc.name = "r", mtfc.role = "output"}) {
    %0 = stablehlo.reverse %arg0, dims = [0] {mtfc.dims = ["kh", "o"]} : tensor<4x8xf32>
    return %0 : tensor<4x8xf32>
  }
}
