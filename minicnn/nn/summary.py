"""Keras-style model summary: one row per leaf layer with its output shape and parameter count."""
import numpy as np

from ..grad_mode import no_grad


def summarize(model, input_shape) -> str:
    """The table ``Module.summary`` prints: one row per leaf module (or the model itself if bare)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    rows = []
    # a bare layer (no children) is its own single row
    leaves = [(name, m) for name, m in model.named_modules() if not m._modules and (name or m is model)]
    originals = {}

    def wrap(name, m):
        fwd = m.forward

        def recorder(x, *a, **k):
            y = fwd(x, *a, **k)
            rows.append((name, type(m).__name__, tuple(y.shape), sum(p.size for p in m.parameters())))
            return y

        return recorder

    for name, m in leaves:
        originals[name] = m.__dict__.get("forward")
        object.__setattr__(m, "forward", wrap(name, m))
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            model(np.zeros(shape, dtype=model.dtype))
    finally:
        model.train(was_training)
        for name, m in leaves:
            if originals[name] is None:
                del m.__dict__["forward"]
            else:
                object.__setattr__(m, "forward", originals[name])
    total = model.num_parameters()
    trainable = model.num_parameters(trainable_only=True)
    rows = [(f"{n} ({t})" if n else t, s, p) for n, t, s, p in rows]
    w_name = max([len("Layer (type)")] + [len(label) for label, _, _ in rows]) + 2
    w_shape = max([len("Output Shape")] + [len(str((None,) + s[1:])) for _, s, _ in rows]) + 2
    w_par = 12
    line = "=" * (w_name + w_shape + w_par)
    out = [f"Model: {type(model).__name__}", line,
           f"{'Layer (type)':<{w_name}}{'Output Shape':<{w_shape}}{'Param #':>{w_par}}", line]
    for label, s, p in rows:
        out.append(f"{label:<{w_name}}{str((None,) + s[1:]):<{w_shape}}{p:>{w_par},}")
    out += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", line]
    return "\n".join(out)
