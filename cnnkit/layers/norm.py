"""Batch normalisation layers: BatchNorm1D and BatchNorm2D (variants: ``cnnkit.builtin``, layer
types ``batchnorm1d`` and ``batchnorm2d``)."""
from __future__ import annotations

import numpy as np

from .._checks import positive_int, real
from .base import Layer, _check_dtype

__all__ = ["BatchNorm2D", "BatchNorm1D"]


class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1.

    Training: normalise with the batch mean and biased variance, and update the running
    statistics in ``self.buffers`` as PyTorch does, ``running = (1 - momentum) * running +
    momentum * batch`` with the *unbiased* batch variance (``momentum=None``: cumulative average
    over ``num_batches_tracked``).  Inference: normalise with the running statistics (or the
    batch's when ``track_running_stats=False``).

    The training normalisation is computed by the layer's variants (``forward(x, params,
    config, need_backward)`` with batch statistics, ``config = {"eps": eps}``).  A variant may
    also provide ``statistics(ctx) -> (mean, biased_var)`` (see ``cnnkit.hookspecs``) so the
    layer reuses its batch statistics for the running averages; without it the layer computes
    them with NumPy.  The inference path with running statistics is a per-channel affine map
    done here with NumPy.  ``weight`` (gamma) starts at 1, ``bias`` (beta) at 0; both are
    ``None`` with ``affine=False``.
    """

    _rank_text = ""
    #: excluded from ``cnnkit.losses.L2Penalty`` by default
    is_normalization = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} ({type(self).__name__})"
        self.num_features = positive_int(num_features, "num_features", owner)
        self.eps = real(eps, "eps", owner, low=0.0, low_open=True)
        self.momentum = None if momentum is None else real(momentum, "momentum", owner,
                                                           low=0.0, high=1.0)
        for flag, what in ((affine, "affine"), (track_running_stats, "track_running_stats")):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{owner}: {what} must be True or False, got {flag!r}")
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dtype = _check_dtype(dtype, owner)
        c = self.num_features
        self.params["weight"] = np.ones(c, dtype=dtype) if self.affine else None
        self.params["bias"] = np.zeros(c, dtype=dtype) if self.affine else None
        self._param_shapes = {"weight": (c,) if self.affine else None,
                              "bias": (c,) if self.affine else None}
        self.buffers: dict[str, np.ndarray] = {}
        if self.track_running_stats:
            self.buffers = {"running_mean": np.zeros(c, dtype=dtype),
                            "running_var": np.ones(c, dtype=dtype),
                            "num_batches_tracked": np.zeros((), dtype=np.int64)}
        self.config = {"eps": self.eps}

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}

    def astype(self, dtype):
        super().astype(dtype)
        for key in ("running_mean", "running_var"):
            if key in self.buffers:
                self.buffers[key] = np.ascontiguousarray(self.buffers[key], dtype=np.dtype(dtype))
        return self

    def reset_running_stats(self):
        if self.track_running_stats:
            self.buffers["running_mean"][...] = 0
            self.buffers["running_var"][...] = 1
            self.buffers["num_batches_tracked"][...] = 0

    def check_input_shape(self, shape):
        owner = f"{self.name} ({type(self).__name__})"
        if len(shape) not in self._ranks:
            raise ValueError(f"{owner}: expected a {self._rank_text} input, got shape "
                             f"{tuple(shape)}")
        if shape[1] != self.num_features:
            raise ValueError(f"{owner}: expected {self.num_features} channels (num_features), "
                             f"got shape {tuple(shape)}")

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        return tuple(input_shape)

    def forward(self, x, training=None):
        training = self.training if training is None else bool(training)
        if training or not self.track_running_stats:
            if training and isinstance(x, np.ndarray) and x.ndim >= 2 and x.shape[0] and \
                    x.size // x.shape[1] < 2:
                raise ValueError(f"{self.name} ({type(self).__name__}): expected more than 1 "
                                 f"value per channel when training, got input shape {x.shape}")
            y = super().forward(x, training)
            if training and self.track_running_stats:
                self._update_running_stats(x)
            return y
        x = self._validate(x)
        self._ctx = None
        shape = (1, -1) + (1,) * (x.ndim - 2)
        var = self.buffers["running_var"].astype(np.float64)
        scale = 1.0 / np.sqrt(var + self.eps)
        shift = -self.buffers["running_mean"].astype(np.float64) * scale
        if self.affine:
            w = self.params["weight"].astype(np.float64)
            scale, shift = scale * w, shift * w + self.params["bias"]
        return x * scale.astype(x.dtype).reshape(shape) + shift.astype(x.dtype).reshape(shape)

    def _update_running_stats(self, x):
        variant, ctx = self._ctx[0], self._ctx[1]
        stats = getattr(variant.impl, "statistics", None)
        if stats is not None:
            mean, var = stats(ctx)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            mean, var = x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)
        m = x.size // x.shape[1]
        b = self.buffers
        b["num_batches_tracked"] = b["num_batches_tracked"] + 1
        f = (1.0 / float(b["num_batches_tracked"]) if self.momentum is None else self.momentum)
        unbiased = np.asarray(var, np.float64) * (m / (m - 1))
        dtype = b["running_mean"].dtype
        b["running_mean"] = ((1 - f) * b["running_mean"] + f * np.asarray(mean, np.float64)
                             ).astype(dtype)
        b["running_var"] = ((1 - f) * b["running_var"] + f * unbiased).astype(dtype)


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs per channel (PyTorch's BatchNorm2d)."""

    layer_type = "batchnorm2d"
    input_rank = 4
    _ranks = (4,)
    _rank_text = "4-D (N, C, H, W)"


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs per channel (PyTorch's BatchNorm1d)."""

    layer_type = "batchnorm1d"
    _ranks = (2, 3)
    _rank_text = "2-D (N, C) or 3-D (N, C, L)"
