"""Lesson 06: run backprop on the image instead of the weights - filter visualisation and DeepDream.

Training changes weights to lower a loss. Freeze the weights and change the *input* to raise an
activation instead, and the image becomes a picture of what that unit responds to (Erhan et al.,
2009). Each step here is one forward pass up to the layer, one manual backward pass from it to
the pixels (``model.backward_from``), and a step along the normalised gradient; random rolls of
the image (jitter) keep it from collecting high-frequency noise.

DeepDream (Mordvintsev et al., 2015) does the same to a photo with the objective "more of
whatever this layer already sees", at several scales (octaves), coarse to fine.

    python docs/examples/06_dream.py --out out/06 [--weights resnet18.safetensors]

Writes 06_filters.png (eight channels of one layer, each grown from noise) and 06_deep_dream.png.
With seeded random weights the patterns are textures of the random filters; with ImageNet
weights they become eyes, fur and wheels.
"""
import numpy as np

import _common
from minicnn import gradcam, viz


def main():
    """Parse the options, run the lesson, write its figures."""
    p = _common.parser(__doc__.splitlines()[0], "06", weights=True)
    p.add_argument("--layer", default="layer2", choices=["stem", "layer1", "layer2", "layer3", "layer4"],
                   help="stage whose channels are visualised (default: %(default)s; try layer3 with real weights)")
    args = p.parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    model, which = _common.resnet(args)
    rng = np.random.default_rng(args.seed)

    layer = args.layer
    size, steps = (48, 8) if args.quick else (96, 60)
    noise = rng.normal(0.0, 0.05, (8, 3, size, size)).astype(np.float32)  # faint noise around the mean colour
    # pick channels that respond somewhere to noise: a unit that never fires has zero gradient
    act = gradcam.layer_activation(model, noise, layer)
    alive = np.argsort(-(act > 0).mean(axis=(0, 2, 3)))
    channels = np.sort(rng.choice(alive[: max(8, len(alive) // 8)], 8, replace=False))
    with _common.Timer(f"gradient ascent, 8 channels of {layer}, {steps} steps at {size}x{size}"):
        grown = gradcam.gradient_ascent(model, noise, layer, channel=channels, steps=steps, lr=0.05,
                                        jitter=max(1, size // 24), decay=1e-3, rng=args.seed)
    # (each image is min-max scaled for display: the pattern, not its amplitude, is the point)
    after = gradcam.layer_activation(model, grown, layer)
    gain = [after[i, c].mean() / max(act[i, c].mean(), 1e-6) for i, c in enumerate(channels)]
    print("mean activation grew by x" + ", x".join(f"{g:.1f}" for g in gain))
    _common.save(viz.image_grid([viz.to_image(g) for g in grown], titles=[f"{layer} ch {c}" for c in channels],
                                ncols=4, cell_inches=2.2,
                                title=f"inputs grown to excite single channels ({which})"), out, "06_filters.png")

    dsize, dlayer = (96, "layer2") if args.quick else (224, "layer3")
    octaves, dsteps = (2, 3) if args.quick else (3, 10)
    img = _common.photo("chelsea", dsize)
    with _common.Timer(f"DeepDream on {dlayer}, {octaves} octaves x {dsteps} steps at {dsize}x{dsize}"):
        dream = gradcam.deep_dream(model, img, layer=dlayer, octaves=octaves, octave_scale=1.4, jitter=8,
                                   steps=dsteps, lr=0.02, rng=args.seed)
    energy = [float((gradcam.layer_activation(model, v, dlayer).astype(np.float64) ** 2).mean()) for v in (img, dream)]
    print(f"mean squared {dlayer} activation: {energy[0]:.3f} -> {energy[1]:.3f}")
    diff = np.abs(dream - img).mean(axis=0)
    _common.save(viz.image_grid([_common.show(img), _common.show(dream), viz.to_image(diff)],
                                titles=["photo", f"DeepDream ({dlayer})", "what changed"], ncols=3, cmap="magma",
                                cell_inches=3.2, title=f"DeepDream, {octaves} octaves with jitter ({which})"),
                 out, "06_deep_dream.png")


if __name__ == "__main__":
    _common.run(main)
