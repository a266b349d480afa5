// Shardy cuts a value once per consumer, each cut with its own partition_id
// arithmetic: an all_reduce whose every use keeps this device's block of
// dim 0 becomes one reduce_scatter, before the first use, read by both.
// If one of the slices is at other offsets, the all_reduce stays.
// RUN: sed 's/dense<\[7, 6, 5, 4, 3, 2, 1, 0\]>/dense<[0, 1, 2, 3, 4, 5, 6, 7]>/' %s | mtfc opt - --passes fuse-collectives --no-debug-info | FileCheck %s --check-prefix=EQUAL
// RUN: mtfc opt %s --passes fuse-collectives --no-debug-info | FileCheck %s --check-prefix=OTHER

// EQUAL: %[[RS:.*]] = "stablehlo.reduce_scatter"(%arg0) <{channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<{{\[\[}}0, 1, 2, 3, 4, 5, 6, 7]]> : tensor<1x8xi64>, scatter_dimension = 0 : i64, use_global_device_ids}>
// EQUAL: {mtfc.dims = ["d", "h"]} : (tensor<8x4xf32>) -> tensor<1x4xf32>
// EQUAL-NOT: all_reduce
// EQUAL: %[[Y:.*]] = stablehlo.multiply %[[RS]], %[[RS]]
// EQUAL-NEXT: return %[[Y]]

// OTHER: all_reduce
// OTHER-NOT: reduce_scatter
module @cuts attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32, mtfc.layout = "d:rows+cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "shardy"} {
  func.func @main(%arg0: tensor<8x4xf32> {mhlo.sharding = "{manual}", mtfc.dims = ["d", "h"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<1x4xf32> {mhlo.sharding = "{manual}", mtfc.dims = ["d", "h"], mtfc.name = "y", mtfc.role = "output"}) {
    %0 = "stablehlo.all_reduce"(%arg0) <{channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]> : tensor<1x8xi64>, use_global_device_ids}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) {mtfc.dims = ["d", "h"]} : (tensor<8x4xf32>) -> tensor<8x4xf32>
    %zero = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i64>
    %p1 = stablehlo.partition_id {mtfc.dims = []} : tensor<ui32>
    %i1 = stablehlo.convert %p1 {mtfc.dims = []} : (tensor<ui32>) -> tensor<i64>
    %t1 = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[0, 1, 2, 3, 4, 5, 6, 7]> : tensor<8xi64>
    %r1 = stablehlo.dynamic_slice %t1, %i1, sizes = [1] {mtfc.dims = ["mesh"]} : (tensor<8xi64>, tensor<i64>) -> tensor<1xi64>
    %o1 = stablehlo.reshape %r1 {mtfc.dims = []} : (tensor<1xi64>) -> tensor<i64>
    %1 = stablehlo.dynamic_slice %0, %o1, %zero, sizes = [1, 4] {mtfc.dims = ["d", "h"]} : (tensor<8x4xf32>, tensor<i64>, tensor<i64>) -> tensor<1x4xf32>
    %p2 = stablehlo.partition_id {mtfc.dims = []} : tensor<ui32>
    %i2 = stablehlo.convert %p2 {mtfc.dims = []} : (tensor<ui32>) -> tensor<i64>
    %t2 = stablehlo.constant {mtfc.dims = ["mesh"]} dense<[7, 6, 5, 4, 3, 2, 1, 0]> : tensor<8xi64>
    %r2 = stablehlo.dynamic_slice %t2, %i2, sizes = [1] {mtfc.dims = ["mesh"]} : (tensor<8xi64>, tensor<i64>) -> tensor<1xi64>
    %o2 = stablehlo.reshape %r2 {mtfc.dims = []} : (tensor<1xi64>) -> tensor<i64>
    %2 = stablehlo.dynamic_slice %0, %o2, %zero, sizes = [1, 4] {mtfc.dims = ["d", "h"]} : (tensor<8x4xf32>, tensor<i64>, tensor<i64>) -> tensor<1x4xf32>
    %3 = stablehlo.multiply %1, %2 {mtfc.dims = ["d", "h"]} : tensor<1x4xf32>
    return %3 : tensor<1x4xf32>
  }
}
