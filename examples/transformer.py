"""A small decoder-only transformer (GPT-style) over token ids.

embedding -> N x [causal self-attention + feed-forward, each pre-layer-norm
and residual] -> final layer norm -> logits over the vocabulary, and the
mean next-token cross-entropy against `targets`.

Default layout: data parallel over `rows` (batch), Megatron-style tensor
parallel over `cols` (heads and d_ff).  Other layouts:
  data parallel      --layout "batch:rows+cols"
  model parallel     --layout "heads:cols,d_ff:cols,vocab:rows"
  FSDP (ZeRO-3)      --layout "batch:rows+cols" --param-layout "d_model:rows+cols"

Training (the loss output, AdamW with warm-up and cosine decay) on the
generated token stream in examples/data/tokens.npy, whose best possible loss
is about 0.73 nats (ln 64 = 4.16 for guessing):
  mtfc compile examples/transformer.py --train -o train.mlir
  mtfc run train.mlir --steps 100 --data examples/data/tokens.npy
The loss falls below 1.2 within 60 steps under each layout above
(tests/test_train_transformer.py).  `--train --precision bf16` computes in
bf16 from f32 master weights and optimizer state (tests/test_train_bf16.py).
Only the loss is a result of the train step: `logits` is dropped, with a
warning (docs/training.md, "Metrics").
"""

import mtfc as mtf

N_LAYERS = 2  # the depth: mtfc compile examples/transformer.py -D N_LAYERS=48
SCAN = False  # True: the layers are one loop (mtf.layers.repeat): -D SCAN=True
RECOMPUTE = False  # with SCAN: rematerialize each layer in the backward pass
batch = mtf.Dim("batch", 16)
length = mtf.Dim("length", 32)
vocab = mtf.Dim("vocab", 64)
d_model = mtf.Dim("d_model", 64)
heads = mtf.Dim("heads", 4)
d_kv = mtf.Dim("d_kv", 16)
d_ff = mtf.Dim("d_ff", 256)


@mtf.entry(
    inputs={
        "tokens": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
        "targets": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
    },
    mesh="rows:2,cols:4",
    layout="batch:rows,heads:cols,d_ff:cols",
    optimizer="adamw:lr=0.01,b2=0.99,warmup=10,decay=cosine,steps=200,clip=1.0",
)
def transformer(tokens, targets):
    return decoder(tokens, targets, vocab=vocab, d_model=d_model, heads=heads, d_kv=d_kv, d_ff=d_ff,
                   n_layers=N_LAYERS, scan=SCAN, recompute=RECOMPUTE)


def decoder(tokens, targets, *, vocab, d_model, heads, d_kv, d_ff, n_layers, scan=False, recompute=False,
            unroll=False):
    """The model at any size (the benchmarks build it at several): logits
    over `vocab` and the mean next-token cross-entropy against `targets`.

    `scan`: the layers are one loop (`mtf.layers.repeat`, parameters
    ``params/blocks/...`` stacked along ``layers``), else unrolled
    (``params/block0/...``, ``params/block1/...``); `recompute`: the scanned
    layers are rematerialized in the backward pass; `unroll` (with `scan`):
    the same stacked parameters, the block traced once per layer."""
    length = tokens.shape[1]

    def block(x):
        x = x + mtf.layers.attention(
            mtf.layers.layer_norm(x, d_model, name="ln_attention"),
            io_dim=d_model, heads_dim=heads, kv_dim=d_kv, length_dim=length, causal=True,
        )
        return x + mtf.layers.feed_forward(
            mtf.layers.layer_norm(x, d_model, name="ln_feed_forward"),
            io_dim=d_model, hidden_dim=d_ff, activation=mtf.gelu,
        )

    x = mtf.layers.embedding(tokens, vocab, d_model)
    if scan:
        x = mtf.layers.repeat(block, x, n_layers, recompute=recompute, unroll=unroll)
    else:
        for i in range(n_layers):
            with mtf.scope(f"block{i}"):
                x = block(x)
    x = mtf.layers.layer_norm(x, d_model, name="ln_final")
    logits = mtf.layers.dense(x, vocab, [d_model], use_bias=False, name="logits")
    target_logit = mtf.reduce_sum(logits * mtf.one_hot(targets, vocab), vocab)
    loss = mtf.reduce_mean(mtf.reduce_logsumexp(logits, vocab) - target_logit)
    return {"logits": logits, "loss": loss}
