// Carried value #1 enters with dims ["batch", "d_other"]; the loop carries it as ["batch", "d_model"].
module @loop_mlp attributes {mtfc.layout = "batch:rows,d_ff:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"},
                  %w1: tensor<3x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.init = "normal:0.25", mtfc.name = "params/blocks/wi", mtfc.role = "parameter"},
                  %w2: tensor<3x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.init = "normal:0.17", mtfc.name = "params/blocks/wo", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %x2 = stablehlo.negate %x {mtfc.dims = ["batch", "d_other"]} : tensor<8x16xf32>
    %r:4 = stablehlo.while(%i = %c0, %h = %x2, %a = %w1, %b = %w2) : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "d_ff", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %i, %z, %z, sizes = [1, 16, 32] {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<3x16x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x32xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x32xf32>) -> tensor<16x32xf32>
      %b1 = stablehlo.dynamic_slice %b, %i, %z, %z, sizes = [1, 32, 16] {mtfc.dims = ["layers", "d_ff", "d_model"]} : (tensor<3x32x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x32x16xf32>
      %b2 = stablehlo.reshape %b1 {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x32x16xf32>) -> tensor<32x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<8x16xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
      %t = stablehlo.tanh %u {mtfc.dims = ["batch", "d_ff"]} : tensor<8x32xf32>
      %v = stablehlo.dot_general %t, %b2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>, tensor<32x16xf32>) -> tensor<8x16xf32>
      %h2 = stablehlo.add %h, %v {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %b : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
    }
    return %r#1 : tensor<8x16xf32>
  }
}
