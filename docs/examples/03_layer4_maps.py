"""Lesson 03: the last feature map - all 512 channels of ResNet-18's layer4 at once.

After five stride-2 steps a 224x224 image is a 512x7x7 block: 512 detectors, each with a coarse
7x7 map of where in the image it fired. Everything the classifier knows about the image is in
this block (the fc layer only sees its spatial averages). Tiling the 512 maps as 16 rows x 32
columns shows how sparse it is: after the ReLU most maps are zero, a few light up.

    python docs/examples/03_layer4_maps.py --out out/03 [--weights resnet18.safetensors]

Writes 03_layer4_tiles.png (one colour scale for all maps, so strong and weak maps compare),
03_layer4_tiles_each.png (each map scaled on its own, to see shapes) and 03_layer4_top.png (the
six strongest maps upsampled over the photo).
"""
import numpy as np

import _common
from minicnn import viz
from minicnn.augment import resize
from minicnn.grad_mode import no_grad


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "03", weights=True).parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    model, which = _common.resnet(args)
    size = 128 if args.quick else 224
    name = "chelsea"
    x = _common.photo(name, size)[None]
    with _common.Timer("forward_features"), no_grad():
        fmap = np.asarray(model.forward_features(x))[0]  # (512, h, w)
    k, h, w = fmap.shape
    print(f"{name}: layer4 output {k} x {h} x {w}; {100 * (fmap > 0).mean():.0f}% of values positive, "
          f"{int((fmap.reshape(k, -1).max(axis=1) <= 0).sum())} maps entirely zero")

    _common.save(viz.tile_maps(fmap, ncols=32, normalize="all", cmap="inferno",
                               title=f"ResNet-18 layer4 of {name}.jpg: 512 maps of {h}x{w} as 16 x 32 tiles, one "
                                     f"colour scale\n({which})"), out, "03_layer4_tiles.png")
    _common.save(viz.tile_maps(fmap, ncols=32, normalize="each", cmap="inferno",
                               title=f"the same 512 maps, each scaled to its own range ({which})"),
                 out, "03_layer4_tiles_each.png")

    strength = fmap.reshape(k, -1).mean(axis=1)
    top = np.argsort(-strength)[:6]
    print("strongest channels (mean activation): " + ", ".join(f"{c} ({strength[c]:.2f})" for c in top))
    img = _common.show(x[0])
    panels = [img] + [viz.overlay_array(img, resize(fmap[c][None, None], (size, size))[0, 0], alpha=0.55, cmap="inferno")
                      for c in top]
    _common.save(viz.image_grid(panels, titles=["input"] + [f"channel {c}" for c in top], ncols=4,
                                title=f"the six strongest layer4 channels over the image ({which})"),
                 out, "03_layer4_top.png")


if __name__ == "__main__":
    _common.run(main)
