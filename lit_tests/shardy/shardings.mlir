// The closed sdy shardings sdy-partition hands Shardy, written alone by
// `sdy-shardings` (sdy-partition's output has none left: Shardy drops them).
// Every dim is closed (no `?`), so Shardy cannot pick any other layout; a dim
// on several mesh axes lists them major first; unused axes are replicated.
//
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info | FileCheck %s
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info --layout "batch:cols+rows" | FileCheck %s --check-prefix=FLAT
// RUN: mtfc opt %s --passes sdy-shardings --no-debug-info --layout "" | FileCheck %s --check-prefix=REPL

// CHECK: module @tiny attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"}
// CHECK-NEXT: sdy.mesh @mesh = <["rows"=2, "cols"=4]>
// CHECK-NEXT: func.func @main(%arg0: tensor<8x4xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{"rows"}, {"cols"}]>}, %arg1: tensor<4xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{"cols"}]>})
// CHECK-SAME: -> (tensor<8x4xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{"rows"}, {"cols"}]>}, tensor<8xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{"rows"}]>})
// CHECK-NEXT: stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"], sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{"rows"}, {"cols"}]>]>}
// CHECK-NEXT: stablehlo.broadcast_in_dim %arg1, dims = [1] {mtfc.dims = ["batch", "d"], sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{"rows"}, {"cols"}]>]>}
// CHECK-NEXT: stablehlo.multiply
// CHECK-NEXT: stablehlo.constant {mtfc.dims = [], sdy.sharding = #sdy.sharding_per_value<[<@mesh, []>]>}
// CHECK-NEXT: stablehlo.reduce{{.*}}{mtfc.dims = ["batch"], sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{"rows"}]>]>}

// FLAT: sdy.mesh @mesh = <["rows"=2, "cols"=4]>
// FLAT: %arg0: tensor<8x4xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{"cols", "rows"}, {}]>}, %arg1: tensor<4xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{}]>}
// FLAT: stablehlo.reduce{{.*}}sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{"cols", "rows"}]>]>

// REPL: %arg0: tensor<8x4xf32> {{{.*}}sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>}
// REPL: stablehlo.reduce{{.*}}sdy.sharding = #sdy.sharding_per_value<[<@mesh, [{}]>]>

module @tiny attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}, %arg1: tensor<4xf32> {mtfc.dims = ["d"], mtfc.name = "params/w", mtfc.role = "parameter"}) -> (tensor<8x4xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}, tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "s", mtfc.role = "output"}) {
    %0 = stablehlo.exponential %arg0 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    %1 = stablehlo.broadcast_in_dim %arg1, dims = [1] {mtfc.dims = ["batch", "d"]} : (tensor<4xf32>) -> tensor<8x4xf32>
    %2 = stablehlo.multiply %0, %1 {mtfc.dims = ["batch", "d"]} : tensor<8x4xf32>
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %3 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x4xf32>, tensor<f32>) -> tensor<8xf32>
    return %2, %3 : tensor<8x4xf32>, tensor<8xf32>
  }
}
