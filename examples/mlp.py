"""A two-layer MLP: the smallest model with both data and model parallelism.

Default layout: batch split over `rows` (data parallel) and the hidden dim
over `cols` (model parallel, Megatron-style column/row split).
"""

import mtfc as mtf

batch = mtf.Dim("batch", 64)
d_in = mtf.Dim("d_in", 32)
d_hidden = mtf.Dim("d_hidden", 128)
d_out = mtf.Dim("d_out", 16)


@mtf.entry(
    inputs={"x": mtf.Input([batch, d_in])},
    mesh="rows:2,cols:4",
    layout="batch:rows,d_hidden:cols",
)
def mlp(x):
    h = mtf.layers.dense(x, d_hidden, name="fc1", activation=mtf.gelu)
    y = mtf.layers.dense(h, d_out, [d_hidden], name="fc2")
    return {"y": y, "probs": mtf.softmax(y, d_out)}
