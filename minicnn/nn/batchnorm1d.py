"""BatchNorm1d: BatchNorm2d's ops on a reshaped view (see docs/batchnorm.md)."""
from .batchnorm import BatchNorm2d


class BatchNorm1d(BatchNorm2d):
    """Normalise each feature (channel) of (N, C) or (N, C, L) input over N (and L).

    ``BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)``,
    with PyTorch's semantics and state-dict keys (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``): training normalises with the batch mean and biased
    variance and updates the running statistics with the unbiased one; eval uses the running
    statistics.

    The input is viewed as (N, C, 1, 1) or (N, C, L, 1) and goes through the batchnorm2d ops. That
    is exact, not an approximation: BatchNorm2d reduces over every axis but the channel, (N, H, W),
    and a view with W = 1 has the same values per channel in the same count m = N*L, so the mean,
    the variances (including the unbiased m/(m-1) correction of the running variance) and the
    gradients are those of BatchNorm1d over (N, L). The view costs no copy.

    Shape: (N, C) or (N, C, L), output the same shape.
    """

    def forward(self, x):
        x = self._prepare_input(x)
        if x.ndim not in (2, 3):
            raise ValueError(f"{self._short()}: expected 2-D (N, C) or 3-D (N, C, L) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{self._short()}: expected input of shape (N, {self.num_features}) or "
                             f"(N, {self.num_features}, L) ({self.num_features} features), got shape {tuple(x.shape)}")
        if self._uses_batch_stats() and x.size // max(x.shape[1], 1) < 2:
            raise ValueError(f"{self._short()}: training needs more than 1 value per channel, got input shape "
                             f"{tuple(x.shape)}")
        y = super().forward(x.reshape(x.shape + (1,) * (4 - x.ndim)))
        return y.reshape(x.shape)

    def backward(self, dy):
        dx = super().backward(dy.reshape(dy.shape + (1,) * (4 - dy.ndim)))
        return dx.reshape(dy.shape)
