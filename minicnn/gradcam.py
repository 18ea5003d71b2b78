"""Looking inside with gradients: input gradients (saliency), Grad-CAM, gradient ascent on the
input (filter visualisation) and DeepDream, all on minicnn's own manual backward pass.

These need a backward pass that starts or stops in the *middle* of a network. Two kinds of model
support that:

* a ResNet (``minicnn.models.resnet``): ``activations(x, upto=stage)`` runs the forward pass up to
  a named stage and ``backward_from(stage, grad, to=...)`` runs the backward pass between stages;
* any ``nn.Sequential``: its children are run one by one, so a layer is named by its index (or
  child name) and the backward pass stops or starts there.

Layers are given as ResNet stage names (``"stem"``, ``"layer1"``..``"layer4"``) or Sequential
child indices/names. While these functions run, the model is put in eval mode and its parameters
are frozen (no weight gradients are computed or accumulated); both are restored afterwards.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .backends import current, to_numpy
from .nn.module import backward_pass, forward_pass

__all__ = ["input_gradient", "grad_cam", "layer_activation", "gradient_ascent", "deep_dream", "class_target"]


# -- plumbing -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _inspecting(model):
    """Eval mode and frozen parameters for the duration; the caller's settings come back after."""
    modes = [(m, m.training) for m in model.modules()]  # per module: a model may mix train and eval
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad = False
    try:
        yield
    finally:
        for p, f, g in zip(params, flags, grads):
            p.requires_grad = f
            p.grad = g
        for m, mode in modes:
            object.__setattr__(m, "training", mode)


def _is_resnet(model):
    return callable(getattr(model, "backward_from", None)) and callable(getattr(model, "activations", None))


def _children(model):
    """Every (name, child) of a Sequential in run order; a module used twice is listed twice."""
    from .nn.module import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(
            f"{type(model).__name__}: layer-wise gradients need a ResNet (with activations/backward_from) "
            "or an nn.Sequential"
        )
    return list(model._modules.items())


def _seq_index(model, layer):
    kids = _children(model)
    names = [n for n, _ in kids]
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        k = int(layer) + (len(kids) if layer < 0 else 0)
        if not 0 <= k < len(kids):
            raise ValueError(f"{type(model).__name__}: layer index {layer} out of range for {len(kids)} layers")
        return k
    if str(layer) in names:
        return names.index(str(layer))
    raise ValueError(f"{type(model).__name__}: no layer {layer!r}; layers are {', '.join(names)}")


def _default_layer(model, x):
    """ResNet: layer4. Sequential: the last child whose output is still a spatial feature map
    (4-D and larger than 1x1, so a global pooling's output does not count)."""
    if _is_resnet(model):
        return "layer4"
    from .grad_mode import no_grad

    h, last, last_any = x, None, None
    with no_grad():
        for i, (_, m) in enumerate(_children(model)):
            h = m(h)
            if h.ndim == 4:
                last_any = i
                if h.shape[2] * h.shape[3] > 1:
                    last = i
    if last is None and last_any is None:
        raise ValueError(f"{type(model).__name__}: no layer outputs a feature map (N, C, H, W)")
    return last if last is not None else last_any


def _forward_to(model, x, layer):
    """Output of ``layer`` (and nothing after it), keeping what the backward pass needs."""
    if _is_resnet(model):
        return model.activations(x, upto=layer)[layer]
    k = _seq_index(model, layer)
    h = x
    with forward_pass():  # the children run as one pass, so a module used twice keeps both caches
        for _, m in _children(model)[:k + 1]:
            h = m(h)
    return h


def _backward_from(model, layer, grad):
    """dL/dinput from dL/d(output of ``layer``), after ``_forward_to``/``_forward_split``."""
    if _is_resnet(model):
        return model.backward_from(layer, grad)
    k = _seq_index(model, layer)
    with backward_pass():
        for _, m in reversed(_children(model)[:k + 1]):
            grad = m.backward(grad)
    return grad


def _forward_split(model, x, layer):
    """(output of ``layer``, final output), one forward pass."""
    if _is_resnet(model):
        acts = model.activations(x)
        if layer not in acts:
            raise ValueError(f"no stage {layer!r}; stages are {', '.join(acts)}")
        return acts[layer], acts["fc"]
    k = _seq_index(model, layer)
    h, a = x, None
    with forward_pass():
        for i, (_, m) in enumerate(_children(model)):
            h = m(h)
            if i == k:
                a = h
    return a, h


def _backward_to(model, layer, dout):
    """dL/d(output of ``layer``) from dL/d(final output)."""
    if _is_resnet(model):
        return model.backward_from("fc", dout, to=layer)
    k = _seq_index(model, layer)
    with backward_pass():
        for _, m in reversed(_children(model)[k + 1:]):
            dout = m.backward(dout)
    return dout


def _dev(a):
    """An array in the memory of the backend in force (gradients fed to ``backward``)."""
    return current().asarray(a)


def _batch(x):
    x = np.asarray(to_numpy(x))
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {x.shape}")
    return x, False


def class_target(class_idx):
    """A ``target_fn`` for ``input_gradient``: the sum over the batch of logit ``class_idx``
    (one index for all samples, or one per sample; ``None`` picks each sample's top class)."""

    def target(out):
        out = np.asarray(to_numpy(out))
        n = out.shape[0]
        idx = out.argmax(axis=1) if class_idx is None else np.broadcast_to(np.asarray(class_idx, dtype=np.int64), (n,))
        if idx.min() < 0 or idx.max() >= out.shape[1]:
            raise ValueError(f"class index {class_idx} out of range for outputs of shape {out.shape}")
        grad = np.zeros_like(out)
        grad[np.arange(n), idx] = 1.0
        return float(out[np.arange(n), idx].sum()), grad

    return target


# -- input gradients and Grad-CAM --------------------------------------------------------------------

def input_gradient(model, x, target_fn=None):
    """d target / d input, computed with the model's manual backward pass.

    ``target_fn(output) -> (value, d value / d output)`` defines the scalar; by default it is the
    logit of each sample's predicted class (``class_target(None)``); an int is taken as a class
    index. Returns an array shaped like ``x``. Its absolute value, maxed over colour channels, is
    the classic saliency map (Simonyan et al., 2013).
    """
    xb, single = _batch(x)
    if target_fn is None or isinstance(target_fn, (int, np.integer)):
        target_fn = class_target(target_fn)
    with _inspecting(model):
        out = model(xb)
        _, dout = target_fn(out)
        dout = np.asarray(dout, dtype=np.asarray(to_numpy(out)).dtype)
        if dout.shape != tuple(out.shape):
            raise ValueError(f"target_fn returned a gradient of shape {dout.shape} for output of shape {tuple(out.shape)}")
        dx = np.asarray(to_numpy(model.backward(_dev(dout))))
    return dx[0] if single else dx


def grad_cam(model, x, class_idx=None, layer="layer4", upsample=True, return_logits=False):
    """Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

    With A the feature maps of ``layer`` (K, h, w) and y_c the class logit:
    ``alpha_k = mean_hw dy_c/dA_k`` (how much map k matters), ``cam = relu(sum_k alpha_k A_k)``.
    ``class_idx``: None (each sample's top class), an int, or one per sample. ``layer``: a ResNet
    stage or a Sequential child index/name (None: the last feature map larger than 1x1). Returns ``(N, H, W)``
    maps scaled to [0, 1] per sample (bilinearly upsampled to the input size unless
    ``upsample=False``), or ``(N, h, w)``; with ``return_logits`` also the logits.
    """
    from .augment import resize

    xb, single = _batch(x)
    if layer is None or (layer == "layer4" and not _is_resnet(model)):
        layer = _default_layer(model, xb)
    with _inspecting(model):
        a, out = _forward_split(model, xb, layer)
        a = np.asarray(to_numpy(a), dtype=np.float64)
        logits = np.asarray(to_numpy(out))
        if a.ndim != 4:
            raise ValueError(f"grad_cam: layer {layer!r} outputs shape {a.shape}, not a feature map (N, C, H, W)")
        _, dout = class_target(class_idx)(logits)
        da = np.asarray(to_numpy(_backward_to(model, layer, _dev(dout.astype(logits.dtype)))), dtype=np.float64)
    alpha = da.mean(axis=(2, 3), keepdims=True)
    cam = np.maximum((alpha * a).sum(axis=1), 0.0)
    if upsample:
        cam = resize(cam[:, None], xb.shape[2:])[:, 0]
        cam = np.maximum(cam, 0.0)
    top = cam.reshape(cam.shape[0], -1).max(axis=1).reshape(-1, 1, 1)
    cam = np.where(top > 0, cam / np.where(top > 0, top, 1.0), 0.0)
    cam = cam[0] if single else cam
    return (cam, logits) if return_logits else cam


# -- optimising the input --------------------------------------------------------------------------

def layer_activation(model, x, layer):
    """The output of ``layer`` for input ``x`` (eval mode, no weight gradients)."""
    xb, single = _batch(x)
    with _inspecting(model):
        a = np.asarray(to_numpy(_forward_to(model, xb, layer)))
    return a[0] if single else a


def _roll(x, dy, dx):
    return np.roll(np.roll(x, dy, axis=-2), dx, axis=-1)


def _ascent_steps(model, x, layer, objective_grad, steps, lr, jitter, rng, decay, clip):
    """Normalised gradient ascent on ``x`` (jittered by a random roll at each step)."""
    x = x.copy()
    for _ in range(int(steps)):
        oy, ox = (rng.integers(-jitter, jitter + 1, 2) if jitter else (0, 0))
        xs = _roll(x, oy, ox)
        a = _forward_to(model, xs, layer)
        da = objective_grad(np.asarray(to_numpy(a)))
        g = np.asarray(to_numpy(_backward_from(model, layer, _dev(da.astype(x.dtype)))))
        g = _roll(g, -oy, -ox)
        # dividing by the mean magnitude makes lr a step size in input units, whatever the layer's scale
        x += (lr / (np.abs(g).mean() + 1e-8)) * g
        if decay:
            x *= 1.0 - decay
        if clip is not None:
            np.clip(x, clip[0], clip[1], out=x)
    return x


def gradient_ascent(model, x, layer, channel=None, steps=20, lr=0.05, jitter=0, decay=0.0, clip=None, rng=None):
    """Change the input to excite ``layer``: the mean activation of ``channel`` (a filter
    visualisation, Erhan et al. 2009), or of the whole layer when ``channel`` is None.

    ``x`` is the start image (C, H, W) or batch (N, C, H, W), e.g. small noise around grey. Each
    step moves ``x`` by ``lr`` times the gradient divided by its mean magnitude; ``jitter`` rolls
    the image by up to that many pixels first (which suppresses high-frequency noise), ``decay``
    shrinks it towards 0 (an L2 prior) and ``clip=(lo, hi)`` keeps it in range. ``channel`` may
    also be a list, one per sample of the batch. Returns the optimised input.
    """
    xb, single = _batch(x)
    xb = xb.astype(np.float32 if xb.dtype.kind != "f" else xb.dtype)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def objective_grad(a):
        g = np.zeros_like(a)
        if channel is None:
            g[...] = 1.0 / a[0].size
        else:
            chans = np.broadcast_to(np.asarray(channel, dtype=np.int64), (a.shape[0],))
            if chans.min() < 0 or chans.max() >= a.shape[1]:
                raise ValueError(f"gradient_ascent: channel {channel} out of range for layer output {a.shape}")
            per = 1.0 / (a[0, 0].size if a.ndim == 4 else 1)
            g[np.arange(a.shape[0]), chans] = per
        return g

    with _inspecting(model):
        out = _ascent_steps(model, xb, layer, objective_grad, steps, lr, int(jitter), rng, decay, clip)
    return out[0] if single else out


def deep_dream(model, img, layer="layer3", octaves=3, octave_scale=1.4, jitter=8, steps=10, lr=0.02, clip=None,
               rng=None):
    """DeepDream (Mordvintsev et al., 2015): amplify whatever ``layer`` already sees in ``img``.

    Gradient ascent on ``0.5 * mean(A**2)`` of the layer's output, run from the coarsest of
    ``octaves`` scales (each ``octave_scale`` smaller) to the full image: the detail added at one
    scale is upsampled and carried to the next, so patterns grow at several sizes. ``jitter``,
    ``lr`` and ``clip`` are as in ``gradient_ascent``; ``steps`` is per octave. Returns the
    dreamed image in the input's layout.
    """
    from .augment import resize

    xb, single = _batch(img)
    xb = xb.astype(np.float32 if xb.dtype.kind != "f" else xb.dtype)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if octaves < 1 or octave_scale <= 1.0:
        raise ValueError(f"deep_dream: need octaves >= 1 and octave_scale > 1, got {octaves} and {octave_scale}")
    H, W = xb.shape[2:]
    sizes = [(max(1, round(H / octave_scale ** i)), max(1, round(W / octave_scale ** i))) for i in range(octaves)][::-1]

    def objective_grad(a):
        return a / a[0].size  # d/dA of 0.5 * mean(A**2) per sample

    detail = np.zeros((xb.shape[0], xb.shape[1]) + sizes[0], dtype=xb.dtype)
    with _inspecting(model):
        for size in sizes:
            base = resize(xb, size) if size != (H, W) else xb
            if detail.shape[2:] != tuple(size):
                detail = resize(detail, size)
            dreamed = _ascent_steps(model, base + detail, layer, objective_grad, steps, lr, int(jitter), rng, 0.0, clip)
            detail = dreamed - base
    out = xb + detail
    if clip is not None:
        out = np.clip(out, clip[0], clip[1])
    return out[0] if single else out
