"""A two-layer MLP classifier: the smallest model with both data and model parallelism.

Default layout: batch split over `rows` (data parallel) and the hidden dim
over `cols` (model parallel, Megatron-style column/row split).

Outputs: the logits `y`, their softmax `probs`, the mean cross-entropy
`loss` against `labels`, and `accuracy` (the fraction of examples whose
label has the largest logit).  `mtfc compile examples/mlp.py --train`
trains on the loss; `accuracy`, a scalar, becomes a metric of the train
step (docs/training.md).
"""

import mtfc as mtf

batch = mtf.Dim("batch", 64)
d_in = mtf.Dim("d_in", 32)
d_hidden = mtf.Dim("d_hidden", 128)
d_out = mtf.Dim("d_out", 16)


@mtf.entry(
    inputs={"x": mtf.Input([batch, d_in]), "labels": mtf.Input([batch], "i32", mtf.init.randint(0, d_out.size))},
    mesh="rows:2,cols:4",
    layout="batch:rows,d_hidden:cols",
)
def mlp(x, labels):
    h = mtf.layers.dense(x, d_hidden, name="fc1", activation=mtf.gelu)
    y = mtf.layers.dense(h, d_out, [d_hidden], name="fc2")
    label_logit = mtf.reduce_sum(y * mtf.one_hot(labels, d_out), d_out)
    loss = mtf.reduce_mean(mtf.reduce_logsumexp(y, d_out) - label_logit)
    accuracy = mtf.reduce_mean(mtf.cast(mtf.equal(label_logit, mtf.reduce_max(y, d_out)), "f32"))
    return {"y": y, "probs": mtf.softmax(y, d_out), "loss": loss, "accuracy": accuracy}
