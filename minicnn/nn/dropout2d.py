"""Dropout2d: channel dropout, identity in eval mode."""
from .. import backends, ops
from .module import Module


class Dropout2d(Module):
    """Zero each whole channel (an (n, c) plane) with probability ``p`` in training and scale the
    surviving channels by 1/(1-p); identity in eval mode. ``Dropout2d(p=0.5, inplace=False)``.

    Neighbouring pixels of a feature map are strongly correlated, so dropping single values
    barely regularises a convolutional layer; dropping whole maps does (Tompson et al., 2015).
    The mask is drawn from the backend's generator (``minicnn.manual_seed`` fixes it), one draw
    per (n, c), so the numpy and numba backends drop the same channels for one seed.

    Shape: (N, C, H, W) -> same. 3-D input is refused: PyTorch 2.x reads it as (N, C, L) with a
    warning that the meaning will change to unbatched (C, H, W); reshape to say which you mean.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout2d: p must be in [0, 1], got {p}")
        self.p = float(p)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = self._prepare_input(x)
        if x.ndim != 4:
            raise ValueError(
                f"{self._short()}: expected 4-D input (N, C, H, W), got shape {tuple(x.shape)}; for 3-D input "
                "reshape to (N, C, L, 1) for channel dropout over (N, C, L), or to (1, C, H, W) for one image"
            )
        if not self.training or self.p == 0.0:
            self._save(None)
            return x
        y, mask = ops.dropout2d_forward(x, self.p, backends.current().generator())
        self._save(mask)
        return y

    def backward(self, dy):
        mask = self._saved()
        if mask is None:
            return dy
        return ops.dropout2d_backward(dy, mask)
