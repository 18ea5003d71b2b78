"""Lesson 14: DeepDream with VGG19 - and, until VGG19's weights are converted, with a net minicnn trained itself.

DeepDream (Mordvintsev et al., 2015) runs gradient ascent on an image to *raise* the activations of
one layer, ``0.5 * mean(A ** 2)``: whatever the layer faintly sees in the picture it is pushed to see
more of, and the picture changes to show it. Done at several scales (octaves, coarsest first) with
random shifts of the image at each step (jitter), the patterns grow at several sizes instead of as
pixel noise. Each step is one forward pass to the layer and one manual backward pass from it to
the pixels (``minicnn.gradcam.deep_dream``; lesson 06 derives it on ResNet-18). VGG19's ``features``
is a plain Sequential, so its layers are named by index: ``features[26]`` is the ReLU after conv4_4.

What the dream shows is what the network learnt. With ImageNet weights VGG19 paints eyes, fur,
arches and dog faces into the photo; with random weights it can only paint the textures of random
filters. minicnn ships no VGG19 weights (torchvision's file is 548 MB and cannot be downloaded here),
so this lesson dreams twice:

1. with the **Fashion-MNIST convnet that minicnn trained itself** (its weights ship in
   ``minicnn/data/weights``; docs/results.md has the recipe and its test accuracy), on a grey photo:
   the patterns are those of a real trained network: the stripes, seams and edges of clothes;
2. with **VGG19** on the colour photo: with ``--weights vgg19.safetensors`` (torchvision's
   ``vgg19-dcbb9e9d.pth`` converted with ``minicnn convert``) the real dream; without it, VGG19's
   features with random weights, titled as such, showing only that the code path runs.

    python docs/examples/14_deep_dream_vgg19.py --out out/14 [--weights vgg19.safetensors]

Writes 14_fashion_dream.png, 14_fashion_channels.png, 14_vgg19_dream.png and 14_results.npz
(the dreamed image and the layer energy before and after, which the tests recompute).
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import gradcam, viz
from minicnn.augment import resize
from minicnn.models.fashion import fashion_convnet
from minicnn.models.vgg import VGG, vgg19

FASHION_LAYER = 4  # the ReLU after the second convolution (64 maps at 1/2 of the input size)


def energy(model, x, layer):
    """DeepDream's objective per image, ``0.5 * mean(A ** 2)`` of ``layer``'s output, in float64."""
    a = np.asarray(gradcam.layer_activation(model, x, layer), np.float64)
    return 0.5 * float((a ** 2).mean())


def fashion_part(args, out):
    """Dream with the shipped, trained Fashion-MNIST convnet on a grey photo; grow single channels from noise."""
    model = fashion_convnet(weights="DEFAULT").eval()
    size, octaves, steps = (56, 2, 4) if args.quick else (112, 3, 12)
    grey = _common.photo("chelsea", grey=True)
    img = resize(grey[None, None].astype(np.float32), (size, size))[0]  # (1, size, size) in [0, 1]
    with _common.Timer(f"DeepDream with the Fashion-MNIST net, layer {FASHION_LAYER}, {octaves} octaves x {steps} steps"):
        dream = gradcam.deep_dream(model, img, layer=FASHION_LAYER, octaves=octaves, octave_scale=1.4, jitter=2,
                                   steps=steps, lr=0.05, clip=(0.0, 1.0), rng=args.seed)
    before, after = energy(model, img, FASHION_LAYER), energy(model, dream, FASHION_LAYER)
    print(f"  layer {FASHION_LAYER} energy 0.5 * mean(A^2): {before:.4f} -> {after:.4f}")
    np.savez(out / "14_results.npz", image=img, dream=dream, before=before, after=after, layer=FASHION_LAYER)
    _common.save(viz.image_grid([img[0], dream[0], np.abs(dream - img)[0]],
                                titles=["photo (grey)", f"dreamed, layer {FASHION_LAYER}", "what changed"], ncols=3,
                                cmap="gray", cell_inches=3.0,
                                title="DeepDream with the Fashion-MNIST convnet minicnn trained (shipped weights)"),
                 out, "14_fashion_dream.png")

    rng = np.random.default_rng(args.seed)
    noise = (0.5 + rng.normal(0.0, 0.05, (8, 1, 28, 28))).astype(np.float32)
    act = gradcam.layer_activation(model, noise, FASHION_LAYER)
    channels = np.argsort(-act.mean(axis=(0, 2, 3)))[:8]  # the channels that respond most to grey noise
    with _common.Timer("gradient ascent on 8 channels"):
        grown = gradcam.gradient_ascent(model, noise, FASHION_LAYER, channel=channels, steps=2 * steps, lr=0.05,
                                        jitter=1, clip=(0.0, 1.0), rng=args.seed)
    _common.save(viz.image_grid([g[0] for g in grown], titles=[f"channel {c}" for c in channels], ncols=4, cmap="gray",
                                cell_inches=1.8, title=f"inputs grown to excite single channels of layer {FASHION_LAYER}"),
                 out, "14_fashion_channels.png")


def vgg19_part(args, out):
    """The same call on VGG19's features: real weights with --weights, else random ones (said in the title)."""
    if args.weights:
        feats, which = vgg19(weights=args.weights).eval().features, f"weights: {args.weights.rsplit('/', 1)[-1]}"
        size, layer, octaves, steps = 224, 26, 3, 10
    else:
        mc.manual_seed(args.seed)
        # torchvision's VGG19 features at full width (init as torchvision's); a tiny classifier, unused here
        feats = VGG("vgg19", hidden=8).eval().features
        which = "random weights, not ImageNet: textures of random filters"
        size, layer, octaves, steps = (64, 17, 2, 2) if args.quick else (160, 26, 3, 6)
    img = _common.photo("chelsea", size)
    with _common.Timer(f"DeepDream with VGG19 features[{layer}], {octaves} octaves x {steps} steps at {size}x{size}"):
        dream = gradcam.deep_dream(feats, img, layer=layer, octaves=octaves, octave_scale=1.4, jitter=8,
                                   steps=steps, lr=0.02, rng=args.seed)
    print(f"  VGG19 features[{layer}] energy: {energy(feats, img, layer):.4f} -> {energy(feats, dream, layer):.4f}")
    _common.save(viz.image_grid([_common.show(img), _common.show(dream), viz.to_image(np.abs(dream - img).mean(axis=0))],
                                titles=["photo", f"DeepDream, features[{layer}]", "what changed"], ncols=3,
                                cmap="magma", cell_inches=3.2, title=f"VGG19 DeepDream ({which})"),
                 out, "14_vgg19_dream.png")


def main():
    """Parse the options, run the lesson, write its figures."""
    p = _common.parser(__doc__.splitlines()[0], "14")
    p.add_argument("--weights", help="VGG19 weights (torchvision's, converted: minicnn convert vgg19-dcbb9e9d.pth "
                                     "vgg19.safetensors); without it VGG19 dreams with random weights")
    args = p.parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    fashion_part(args, out)
    vgg19_part(args, out)


if __name__ == "__main__":
    _common.run(main)
