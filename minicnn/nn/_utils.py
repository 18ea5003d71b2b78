"""The one shape check every layer uses at its boundary (``pair`` lives in ``minicnn.shapes``)."""
from ..shapes import conv_output_size, pair  # noqa: F401 - re-exported for the layers


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
