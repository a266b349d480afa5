// Table row: a reduction over a split dim -> all_reduce with the same reducer,
// over the axis of the reduced dim: `cols` groups rows of the mesh, `rows`
// groups its columns.
// RUN: mtfc opt %s --passes partition --no-debug-info | FileCheck %s

// CHECK: stablehlo.reduce(%arg0 init: %{{.*}}) applies stablehlo.maximum across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<4x4xf32>, tensor<f32>) -> tensor<4xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%{{.*}}) <{replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}>
// CHECK: stablehlo.maximum
// CHECK: stablehlo.reduce(%arg0 init: %{{.*}}) applies stablehlo.add across dimensions = [0] {mtfc.dims = ["d"]} : (tensor<4x4xf32>, tensor<f32>) -> tensor<4xf32>
// CHECK-NEXT: "stablehlo.all_reduce"(%{{.*}}) <{replica_groups = dense<[[0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>}>
// CHECK: stablehlo.add

module @reductions attributes {mtfc.layout = "batch:rows,d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8xf32> {mtfc.dims = ["batch"], mtfc.name = "m", mtfc.role = "output"}, tensor<16xf32> {mtfc.dims = ["d"], mtfc.name = "s", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0xFF800000> : tensor<f32>
    %0 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.maximum across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8xf32>
    %cst_0 = stablehlo.constant {mtfc.dims = []} dense<0.000000e+00> : tensor<f32>
    %1 = stablehlo.reduce(%arg0 init: %cst_0) applies stablehlo.add across dimensions = [0] {mtfc.dims = ["d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<16xf32>
    return %0, %1 : tensor<8xf32>, tensor<16xf32>
  }
}

