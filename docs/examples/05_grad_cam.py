"""Lesson 05: where does the network look? Grad-CAM and input gradients, on the manual backward pass.

Grad-CAM (Selvaraju et al., 2017) asks layer4 which of its 512 maps matter for a class: the
gradient of the class logit with respect to each map, averaged over the map, is that map's weight
alpha_k; the weighted sum of the maps, through a ReLU, is a coarse heat map of the evidence for
the class, upsampled to the image. For ResNet, avgpool + fc are linear, so alpha_k is simply the
fc weight W[c, k] / 49: Grad-CAM at layer4 is exactly the older class activation map (CAM).

The saliency map (Simonyan et al., 2013) goes all the way back to the pixels: |d logit / d x|,
the largest over the colour channels. Both come from ``model.backward_from``: minicnn's
hand-written backward started at the logits and stopped where we ask.

    python docs/examples/05_grad_cam.py --out out/05 [--weights resnet18.safetensors]

Writes 05_grad_cam.png (every sample photo with the heat map of its top class), 05_saliency.png
and 05_grad_cam_layers.png (the same class explained at layer2, layer3 and layer4).
"""
import numpy as np

import _common
from minicnn import gradcam, viz
from minicnn.io.labels import imagenet_classes


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "05", weights=True).parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    model, which = _common.resnet(args)
    size = 96 if args.quick else 224
    names = list(_common.SAMPLES[:3] if args.quick else _common.SAMPLES)
    x = _common.photos(size, names)
    classes = imagenet_classes()

    with _common.Timer(f"Grad-CAM at layer4 for {len(names)} images"):
        cams, logits = gradcam.grad_cam(model, x, class_idx=None, layer="layer4", return_logits=True)
    top = logits.argmax(axis=1)
    imgs = [_common.show(v) for v in x]
    titles = [f"{n}: {classes[c]}" for n, c in zip(names, top)]
    for t in titles:
        print("  top class", t)
    panels = imgs + [viz.overlay_array(im, cam, alpha=0.5) for im, cam in zip(imgs, cams)]
    _common.save(viz.image_grid(panels, titles=names + titles, ncols=len(names), cell_inches=2.6,
                                title=f"Grad-CAM (layer4) of each image's top class ({which})"),
                 out, "05_grad_cam.png")

    with _common.Timer("input gradients"):
        g = gradcam.input_gradient(model, x)  # d(top logit)/d(pixels)
    sal = np.abs(g).max(axis=1)
    sal = [np.clip(s / np.percentile(s, 99), 0, 1) for s in sal]  # the 1% brightest pixels saturate
    _common.save(viz.image_grid(imgs + sal, titles=names + ["|d logit / d pixel|"] * len(names), ncols=len(names),
                                cmap="hot", cell_inches=2.6, title=f"saliency: input gradients ({which})"),
                 out, "05_saliency.png")

    layers = ["layer2", "layer3", "layer4"]
    one = x[:1]
    maps = [gradcam.grad_cam(model, one, class_idx=int(top[0]), layer=l)[0] for l in layers]
    _common.save(viz.image_grid([imgs[0]] + [viz.overlay_array(imgs[0], m) for m in maps],
                                titles=[names[0]] + [f"Grad-CAM at {l}" for l in layers], ncols=4, cell_inches=2.6,
                                title=f"the same class at three depths: finer maps, less class-specific ({which})"),
                 out, "05_grad_cam_layers.png")


if __name__ == "__main__":
    _common.run(main)
