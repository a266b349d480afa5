"""A small decoder-only transformer whose feed-forward layers alternate
between dense and mixture-of-experts (GShard / Switch style).

embedding -> N x [causal self-attention + feed-forward, each pre-layer-norm
and residual; odd blocks' feed-forward is `mtf.layers.moe`, top-2 gating
over 4 experts] -> final layer norm -> logits; the loss is the mean
next-token cross-entropy plus AUX_COEF times the MoE layers' mean
load-balancing loss, which is also an output (`aux_loss`, a metric of the
train step).

Default layout, data x expert parallel on rows:2,cols:4: the batch (and so
the token groups) over all 8 devices, the experts over `cols`; inside the
experts the groups keep `rows` (`batch_unsplit:rows`, Mesh TF's outer
batch), so each MoE layer moves its tokens with one all_to_all over `cols`
into the experts and one back.  Other layouts:
  data parallel      --layout "batch:rows+cols"
  expert parallel    --layout "batch:rows,experts:rows"
  expert x tensor    --layout "batch:rows,experts:rows,d_ff:cols,expert_ff:cols"

Training on examples/data/tokens.npy (as examples/transformer.py):
  mtfc compile examples/moe.py --train -o moe.mlir
  mtfc run moe.mlir --steps 60 --data examples/data/tokens.npy
The loss falls from ~4.6 below 1.2 within 30 steps, as the dense example's does
(tests/test_train_moe.py).
"""

import mtfc as mtf

N_LAYERS = 2
AUX_COEF = 0.01
batch = mtf.Dim("batch", 16)
length = mtf.Dim("length", 32)
vocab = mtf.Dim("vocab", 64)
d_model = mtf.Dim("d_model", 64)
heads = mtf.Dim("heads", 4)
d_kv = mtf.Dim("d_kv", 16)
d_ff = mtf.Dim("d_ff", 256)
experts = mtf.Dim("experts", 4)
expert_ff = mtf.Dim("expert_ff", 128)
GROUP_SIZE = 64  # 512 tokens -> 8 groups, one per device under the default layout


@mtf.entry(
    inputs={
        "tokens": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
        "targets": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
    },
    mesh="rows:2,cols:4",
    layout="batch:rows+cols,batch_unsplit:rows,experts:cols",
    optimizer="adamw:lr=0.01,b2=0.99,warmup=10,decay=cosine,steps=200,clip=1.0",
)
def moe_transformer(tokens, targets):
    x = mtf.layers.embedding(tokens, vocab, d_model)
    aux_losses = []
    for i in range(N_LAYERS):
        with mtf.scope(f"block{i}"):
            x = x + mtf.layers.attention(
                mtf.layers.layer_norm(x, d_model, name="ln_attention"),
                io_dim=d_model, heads_dim=heads, kv_dim=d_kv, length_dim=length, causal=True,
            )
            h = mtf.layers.layer_norm(x, d_model, name="ln_feed_forward")
            if i % 2:
                y, aux = mtf.layers.moe(h, io_dim=d_model, hidden_dim=expert_ff, experts_dim=experts,
                                        group_size=GROUP_SIZE, gating="top2", activation=mtf.gelu)
                aux_losses.append(aux)
            else:
                y = mtf.layers.feed_forward(h, io_dim=d_model, hidden_dim=d_ff, activation=mtf.gelu)
            x = x + y
    x = mtf.layers.layer_norm(x, d_model, name="ln_final")
    logits = mtf.layers.dense(x, vocab, [d_model], use_bias=False, name="logits")
    target_logit = mtf.reduce_sum(logits * mtf.one_hot(targets, vocab), vocab)
    cross_entropy = mtf.reduce_mean(mtf.reduce_logsumexp(logits, vocab) - target_logit)
    aux_loss = sum(aux_losses[1:], aux_losses[0]) * (1.0 / len(aux_losses))
    return {"logits": logits, "loss": cross_entropy + AUX_COEF * aux_loss, "cross_entropy": cross_entropy,
            "aux_loss": aux_loss}
