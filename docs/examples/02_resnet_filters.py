"""Lesson 02: the first layer of ResNet-18 - its 64 RGB filters and the maps they make.

``conv1`` holds 64 filters of shape 3x7x7: each looks at a 7x7 RGB patch and answers with one
number. Drawn as tiny colour images (each scaled to [0, 1] on its own), ImageNet-trained filters
are oriented edges, colour blobs and colour-opponent patterns. Seeded random weights (the
default, so the lesson runs offline) look like noise: that contrast *is* what training does.
Pass ``--weights resnet18.safetensors`` to see the real thing (``minicnn weights fetch resnet18``
downloads and converts torchvision's).

Then the maps: ``conv1`` (stride 2: 224 -> 112), after batchnorm and ReLU, and after layer1
(56x56, after the max pool and two residual blocks).

    python docs/examples/02_resnet_filters.py --out out/02

Writes 02_conv1_filters.png, 02_conv1_maps.png, 02_layer1_maps.png.
"""
import numpy as np

import _common
from minicnn import viz
from minicnn.grad_mode import no_grad


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "02", weights=True).parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    model, which = _common.resnet(args)
    size = 112 if args.quick else 224
    x = _common.photo("chelsea", size)[None]

    w = model.conv1.weight.data
    print(f"conv1.weight {tuple(w.shape)}: {w.shape[0]} filters over {w.shape[1]} colour channels, {w.shape[2]}x{w.shape[3]} each")
    _common.save(viz.filter_grid(w, ncols=8, title=f"ResNet-18 conv1: 64 RGB 7x7 filters\n({which})"),
                 out, "02_conv1_filters.png")

    with no_grad():
        c1 = model.conv1(x)
        stem = model.relu(model.bn1(c1))
        l1 = model.layer1(model.maxpool(stem))
    print(f"input {tuple(x.shape)} -> conv1 {tuple(c1.shape)} -> bn, relu -> maxpool -> layer1 {tuple(l1.shape)}")
    dead = (stem.reshape(64, -1).max(axis=1) <= 0).sum()
    print(f"after conv1+bn+relu: {100 * (stem > 0).mean():.0f}% of values positive, {dead} of 64 maps all zero")

    fig = viz.new_figure((4, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(_common.show(x[0]))
    ax.set_title("input")
    ax.axis("off")
    _common.save(fig, out, "02_input.png")
    _common.save(viz.tile_maps(stem[0], ncols=8, cmap="magma", tile_inches=1.0,
                               title=f"conv1 -> bn1 -> relu: 64 maps of {stem.shape[2]}x{stem.shape[3]} ({which})"),
                 out, "02_conv1_maps.png")
    _common.save(viz.tile_maps(l1[0], ncols=8, cmap="magma", tile_inches=1.0,
                               title=f"layer1 output: 64 maps of {l1.shape[2]}x{l1.shape[3]} ({which})"),
                 out, "02_layer1_maps.png")
    # the strongest maps, side by side with the photo
    strength = np.asarray(stem[0]).reshape(64, -1).mean(axis=1)
    top = np.argsort(-strength)[:7]
    imgs = [_common.show(x[0])] + [viz.to_image(stem[0, k]) for k in top]
    _common.save(viz.image_grid(imgs, titles=["input"] + [f"map {k}" for k in top], ncols=4, cmap="magma",
                                title=f"the 7 most active conv1 maps ({which})"), out, "02_top_maps.png")


if __name__ == "__main__":
    _common.run(main)
