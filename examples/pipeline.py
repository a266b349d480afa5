"""The transformer of examples/transformer.py, its blocks pipelined over 4 stages.

embedding -> LAYERS blocks (causal self-attention + feed-forward, each
pre-layer-norm and residual), cut into STAGES stages of LAYERS / STAGES
blocks by `mtf.layers.pipeline` -> final layer norm -> logits, and the mean
next-token cross-entropy.  Mesh ``pipe:4,data:2``; layout
``stages:pipe,batch:data``: stage s's block parameters (dims ``[stages,
...]``) live on the devices of `pipe` position s, each stage's activations
move to the next stage by one collective_permute per tick, and the batch is
data parallel over `data`.  Tensor parallelism composes on a third axis,
e.g. ``--mesh "pipe:2,data:2,model:2" --layout
"stages:pipe,batch:data,heads:model,d_ff:model"``.

The batch of 16 is cut into MICROBATCHES microbatches; the schedule runs
MICROBATCHES + STAGES - 1 ticks and leaves each stage idle for the bubble
fraction (STAGES - 1) / (MICROBATCHES + STAGES - 1) (`mtfc inspect` reports
it).  LAYERS, STAGES, MICROBATCHES and UNROLL are set here or on the
command line: ``mtfc compile examples/pipeline.py -D LAYERS=8 -D
MICROBATCHES=8`` (``-D STAGES=2 --mesh pipe:2,data:4`` for two stages).  The
ticks are one loop (`stablehlo.while`); ``-D UNROLL=True`` unrolls them (the
same parameters and numbers; docs/dsl.md, "Pipeline parallelism").

Numerics are the unpipelined transformer's: block j of stage s is block
``s * LAYERS / STAGES + j`` of examples/transformer.py's `decoder`
(``params/pipeline/stage/X[s, j]`` is ``params/block<i>/X``), and
tests/test_pipeline.py checks the outputs, gradients and train losses
against it with the same parameter values.  Training:
  mtfc compile examples/pipeline.py --train -o train.mlir
  mtfc run train.mlir --steps 60 --data examples/data/tokens.npy
"""

import mtfc as mtf

LAYERS = 4  # blocks in all, a multiple of STAGES
STAGES = 4
MICROBATCHES = 4  # must divide the batch (16)
UNROLL = False  # True: the ticks as a Python loop (the same numbers)
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
    mesh="pipe:4,data:2",
    layout="stages:pipe,batch:data",
    optimizer="adamw:lr=0.01,b2=0.99,warmup=10,decay=cosine,steps=200,clip=1.0",
)
def pipelined_transformer(tokens, targets):
    return pipelined_decoder(tokens, targets, layers=LAYERS, stages=mtf.Dim("stages", STAGES),
                             microbatches=MICROBATCHES)


def block(x):
    """One transformer block, as examples/transformer.py's `decoder` writes it
    (the same scopes, so the same parameter names below the stage scope)."""
    x = x + mtf.layers.attention(
        mtf.layers.layer_norm(x, d_model, name="ln_attention"),
        io_dim=d_model, heads_dim=heads, kv_dim=d_kv, length_dim=length, causal=True,
    )
    return x + mtf.layers.feed_forward(
        mtf.layers.layer_norm(x, d_model, name="ln_feed_forward"),
        io_dim=d_model, hidden_dim=d_ff, activation=mtf.gelu,
    )


def pipelined_decoder(tokens, targets, *, layers, stages, microbatches):
    """examples/transformer.py's decoder with its blocks pipelined."""
    x = mtf.layers.embedding(tokens, vocab, d_model)
    x = mtf.layers.pipeline(block, x, layers=layers, stages=stages, microbatches=microbatches, batch_dim=batch,
                            unroll=UNROLL)
    x = mtf.layers.layer_norm(x, d_model, name="ln_final")
    logits = mtf.layers.dense(x, vocab, [d_model], use_bias=False, name="logits")
    target_logit = mtf.reduce_sum(logits * mtf.one_hot(targets, vocab), vocab)
    loss = mtf.reduce_mean(mtf.reduce_logsumexp(logits, vocab) - target_logit)
    return {"logits": logits, "loss": loss}
