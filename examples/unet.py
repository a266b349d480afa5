"""A small 2-D U-Net-style encoder-decoder on synthetic images, with a
per-pixel loss: Mesh TF's spatial partitioning (images split along their
height and width, halos exchanged between neighbours).

images [batch, h, w, channels] ->
  encoder: 2 x conv2d 3x3 (relu)                    -> skip [batch, h, w, f1b]
  down:    max_pool 2x2                             -> [batch, h/2, w/2, f1b]
  middle:  2 x conv2d 3x3 (relu, stride 1; one dilated 2)
  up:      conv_transpose 3x3, stride 2             -> [batch, h, w, f1b]
  decoder: skip + up, conv2d 3x3 (relu), conv2d 1x1 -> logits [batch, h, w]
loss: the mean per-pixel sigmoid cross-entropy against a target mask made
from the image itself (is the 5x5 average of its channel mean positive?),
so the network has something to learn: a smoothed threshold.

`h` and `w` keep their names through the pool and the transposed
convolution (each spatial dim keeps its name with its new size), so the
default layout `h:rows,w:cols` splits every feature map over the 2 x 4 mesh:
each device holds a 16 x 8 tile of the 32 x 32 image (8 x 4 after the
pool), and every convolution exchanges only its halo (collective_permute;
no all_gather of an activation: `mtfc inspect`).  Other layouts:
  data parallel       --layout "batch:rows+cols"
  spatial x features  --layout "h:rows,f1:cols,f2:cols"
  batch x spatial     --layout "batch:rows,w:cols"

  mtfc compile examples/unet.py -o unet.mlir && mtfc run unet.mlir --check
  mtfc compile examples/unet.py --train -o unet-train.mlir && mtfc run unet-train.mlir --steps 60
"""

import mtfc as mtf

batch = mtf.Dim("batch", 8)
h = mtf.Dim("h", 32)
w = mtf.Dim("w", 32)
channels = mtf.Dim("channels", 3)
f1 = mtf.Dim("f1", 16)  # a convolution's output features need a name of their own: f1 -> f1b
f1b = mtf.Dim("f1b", 16)
f2 = mtf.Dim("f2", 32)
f2b = mtf.Dim("f2b", 32)
pixel = mtf.Dim("pixel", 1)


def target_mask(images):
    """1 where the 5x5 average of the image's channel mean is positive, else 0."""
    gray = mtf.reduce_mean(images, channels)
    smooth = mtf.avg_pool(gray, {h: 5, w: 5}, strides=1, padding="SAME")
    return mtf.cast(mtf.greater(smooth, 0.0), "f32")


@mtf.entry(
    inputs={"images": mtf.Input([batch, h, w, channels])},
    mesh="rows:2,cols:4",
    layout="h:rows,w:cols",
    optimizer="adam:lr=0.01",
)
def unet(images):
    x = mtf.layers.conv2d(images, f1, (3, 3), activation=mtf.relu, name="enc1")
    skip = mtf.layers.conv2d(x, f1b, (3, 3), activation=mtf.relu, name="enc2")
    x = mtf.max_pool(skip, {h: 2, w: 2})
    x = mtf.layers.conv2d(x, f2, (3, 3), activation=mtf.relu, name="mid1")
    x = mtf.layers.conv2d(x, f2b, (3, 3), dilation=2, activation=mtf.relu, name="mid2")
    x = mtf.layers.conv_transpose(x, f1b, (3, 3), strides=2, activation=mtf.relu, name="up")
    x = mtf.layers.conv2d(x + skip, f1, (3, 3), activation=mtf.relu, name="dec")
    logits = mtf.reduce_sum(mtf.layers.conv2d(x, pixel, (1, 1), name="head"), pixel)
    target = target_mask(images)
    # sigmoid cross-entropy, stable: max(z, 0) - z * t + log(1 + exp(-|z|))
    per_pixel = mtf.relu(logits) - logits * target + mtf.log(1.0 + mtf.exp(-mtf.abs(logits)))
    return {"logits": logits, "loss": mtf.reduce_mean(per_pixel)}
