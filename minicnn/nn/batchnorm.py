"""BatchNorm2d with PyTorch's semantics (see docs/batchnorm.md for the derivation)."""
import numpy as np

from .. import ops
from ._utils import check_input
from .module import Module, Parameter


class BatchNorm2d(Module):
    """Normalise each channel over (N, H, W).

    Training: batch mean and *biased* variance normalise; the running statistics are updated
    with the *unbiased* variance, ``running = (1 - momentum) * running + momentum * batch``
    (``momentum=None``: cumulative average). Eval: the running statistics normalise.
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` are buffers in ``state_dict``.

    With ``affine=False`` there is no ``weight`` or ``bias`` (PyTorch's ``state_dict`` keys), but the
    ops still take a gamma of ones and a beta of zeros: they are kept as non-persistent buffers
    (``_const_gamma``, ``_const_beta``), so they live where the other arrays do (the backend's
    memory, the module's dtype after ``.to``) without being saved.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        ones, zeros = np.ones(num_features, np.float32), np.zeros(num_features, np.float32)
        if affine:
            self.weight = Parameter(ones.copy())
            self.bias = Parameter(zeros.copy())
        else:
            self.weight = self.bias = None
            self.register_buffer("_const_gamma", ones, persistent=False)
            self.register_buffer("_const_beta", zeros, persistent=False)
        if track_running_stats:
            self.register_buffer("running_mean", zeros.copy())
            self.register_buffer("running_var", ones.copy())
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _gamma_beta(self):
        if self.affine:
            return self.weight.data, self.bias.data
        return self._const_gamma, self._const_beta

    def _uses_batch_stats(self):
        return self.training or not self.track_running_stats

    def forward(self, x):
        x = self._prepare_input(x)
        check_input(self, x, 4, 1, self.num_features)
        gamma, beta = self._gamma_beta()
        if self._uses_batch_stats():
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                raise ValueError(
                    f"{self._short()}: training needs more than 1 value per channel, got input shape {tuple(x.shape)}"
                )
            y, mean, var = ops.batchnorm2d_forward_train(x, gamma, beta, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, m)
            self._save(("train", x, mean, var))
        else:
            y = ops.batchnorm2d_forward_eval(x, gamma, beta, self.running_mean, self.running_var, self.eps)
            self._save(("eval", x))
        return y

    def _update_running_stats(self, mean, var, m):
        """``running = (1 - mom) * running + mom * batch``, with the unbiased variance.

        Array arithmetic and methods only (no ``np.*`` function), so the buffers stay arrays of the
        backend that holds them; the Python-float factors do not promote float32.
        """
        self._set_buffer("num_batches_tracked", self.num_batches_tracked + 1)
        mom = float(self.momentum) if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * (m / (m - 1))
        self._set_buffer("running_mean", ((1 - mom) * self.running_mean + mom * mean).astype(self.dtype))
        self._set_buffer("running_var", ((1 - mom) * self.running_var + mom * unbiased).astype(self.dtype))

    def backward(self, dy):
        cache = self._saved()
        gamma, _ = self._gamma_beta()
        need_params = self.affine and (self.weight.requires_grad or self.bias.requires_grad)
        if cache[0] == "train":
            _, x, mean, var = cache
            dx, dg, db = ops.batchnorm2d_backward_train(dy, x, gamma, mean, var, self.eps, True, need_params)
        else:
            x = cache[1]
            dx, dg, db = ops.batchnorm2d_backward_eval(
                dy, x, gamma, self.running_mean, self.running_var, self.eps, True, need_params
            )
        if need_params:
            self.weight.accumulate(dg)
            self.bias.accumulate(db)
        return dx
