"""Argument normalisation and the one shape check every layer uses at its boundary."""


def pair(v, name="argument"):
    """PyTorch accepts an int or an (h, w) pair for kernel_size, stride, padding and dilation."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (a, b)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (a, b)


def check_input(layer, x, ndim, dim=None, size=None, what="channels"):
    """Raise ValueError naming the layer, the expected shape and the shape it got."""
    letters = {4: "(N, C, H, W)", 2: "(N, F)"}
    if x.ndim != ndim:
        exp = letters.get(ndim, f"{ndim}-D")
        if dim is not None:
            exp = exp.replace("C" if ndim == 4 else "F", str(size), 1)
        raise ValueError(f"{layer._short()}: expected {ndim}-D input of shape {exp}, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[dim] != size:
        exp = ("(N, %d, H, W)" if ndim == 4 else "(N, %d)") % size
        raise ValueError(
            f"{layer._short()}: expected input of shape {exp} ({size} {what}), got shape {tuple(x.shape)}"
        )
