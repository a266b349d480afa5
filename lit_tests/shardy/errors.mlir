// sdy-partition refuses, in one line naming the op, what Shardy (jaxlib 0.10)
// cannot take: an op it is not known to handle with split values (here a
// reduce_precision; a reduce_window with a split window dim, on which its lowering
// aborts the process, is computed whole along it instead:
// workaround-whole-reduce-window.mlir), and a module that is already partitioned.
//
// RUN: not mtfc opt %s --passes sdy-partition 2>&1 | FileCheck %s --check-prefix=OP
// RUN: mtfc opt %s --passes sdy-partition --layout "" --no-debug-info | FileCheck %s --check-prefix=WHOLE
// RUN: mtfc opt %s --passes sdy-partition --layout "" -o %t.mlir
// RUN: not mtfc opt %t.mlir --passes sdy-partition 2>&1 | FileCheck %s --check-prefix=TWICE

// OP: error: sdy-partition: stablehlo.reduce_precision at precision(model.py:8:1) has split values ([batch, d], [batch, d]) and is not known to go through Shardy
// OP-NOT: Traceback
// With no split value it goes through.
// WHOLE: mtfc.partitioning = "shardy"
// WHOLE: "stablehlo.reduce_window"(%arg0, %cst)
// WHOLE: }) {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x16xf32>
// TWICE: error: sdy-partition: the module is already partitioned (shardy)

module @rw attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"}) -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.0> : tensor<f32>
    %0 = "stablehlo.reduce_window"(%arg0, %cst) <{window_dimensions = array<i64: 1, 3>, padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %c = stablehlo.add %a, %b : tensor<f32>
      stablehlo.return %c : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8x16xf32> loc(#window)
    %1 = stablehlo.reduce_precision %0, format = e5m10 {mtfc.dims = ["batch", "d"]} : tensor<8x16xf32> loc(#precision)
    return %1 : tensor<8x16xf32>
  }
}
#window = loc("window"("model.py":7:1))
#precision = loc("precision"("model.py":8:1))
