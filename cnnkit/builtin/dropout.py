"""The dropout family's built-in plugin: ``dropout`` (:class:`~cnnkit.layers.Dropout`), inverted
dropout whose mask is a pure function of ``config["seed"]`` and the element index (splitmix64
of ``seed + (i + 1) * golden``, top 53 bits), identical in both variants:

- ``"numpy"``: the reference, the mask computed with uint64 NumPy arithmetic;
- ``"cython"``: ``cnnkit._ext.activation`` (priority 100), the mask drawn inside the loop and
  kept as uint8 for backward.
"""
from __future__ import annotations

import numpy as np

from cnnkit._ext import dropout as _dropout
from cnnkit.builtin._kernel_args import contiguous, grad_like
from cnnkit.layers import Dropout
from cnnkit.plugins import hookimpl

__all__ = ["DropoutNumpy", "DropoutCython", "dropout_keep_mask", "dropout_uniforms"]


# ---------------------------------------------------------------------------------------------
# the reference (numpy)
# ---------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def dropout_uniforms(seed, n):
    """The n uniforms in [0, 1) behind a dropout mask: splitmix64 of ``seed + (i + 1) * golden``,
    top 53 bits.  ``cnnkit._ext.dropout.dropout_forward`` computes the same numbers."""
    z = np.uint64(int(seed) % 2**64) + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def dropout_keep_mask(seed, shape, p):
    """Boolean keep-mask of a dropout call: element i survives when its uniform is >= p."""
    return (dropout_uniforms(seed, int(np.prod(shape))) >= p).reshape(shape)


class DropoutNumpy:
    """Inverted dropout with the mask of ``config["seed"]`` (see :func:`dropout_keep_mask`)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        p = float(config["p"])
        keep = dropout_keep_mask(config["seed"], x.shape, p)
        scale = x.dtype.type(1.0 / (1.0 - p))
        y = np.where(keep, x * scale, x.dtype.type(0))
        return y, ((keep, scale) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        keep, scale = ctx
        return np.where(keep, dy * scale, dy.dtype.type(0)), {}


# ---------------------------------------------------------------------------------------------
# the compiled kernel (cython)
# ---------------------------------------------------------------------------------------------
class DropoutCython:
    """Inverted dropout; the splitmix64 counter-based mask of ``config["seed"]`` (the same
    numbers as the NumPy reference), drawn inside the loop, kept as uint8 for backward."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = contiguous(x)
        p = float(config["p"])
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout: p must be in [0, 1), got {p}")
        y = np.empty_like(x)
        keep = np.empty(x.shape, dtype=np.uint8) if need_backward else None
        _dropout.dropout_forward(x.reshape(-1), y.reshape(-1),
                             None if keep is None else keep.reshape(-1),
                             int(config["seed"]) % 2**64, p)
        return y, ((keep, p) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        keep, p = ctx
        dy = contiguous(dy)
        dy = grad_like(dy, dy.dtype, keep.shape, "dropout")
        dx = np.empty_like(dy)
        _dropout.dropout_backward(dy.reshape(-1), keep.reshape(-1), dx.reshape(-1), p)
        return dx, {}


# ---------------------------------------------------------------------------------------------
# registration: written out per family as a third-party plugin writes it (the blocks of
# the families look alike on purpose; a shared helper would hide the plugin API they show)
# ---------------------------------------------------------------------------------------------
@hookimpl
def cnnkit_register_layers(register):
    register("dropout", Dropout)


@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    register("dropout", "numpy", DropoutNumpy, priority=0, dtypes=dtypes,
             capabilities=Dropout.FEATURES, description="NumPy splitmix64 counter-based mask")
    register("dropout", "cython", DropoutCython, priority=100, dtypes=dtypes,
             capabilities=Dropout.FEATURES,
             description="Cython, splitmix64 counter-based mask drawn in the loop")


# ONNX export (cnnkit.onnx.export): dropout is the identity in inference
def export_dropout_onnx(ctx, layer, inputs, input_shapes):
    return ctx.node("Identity", inputs[:1])


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("dropout", export_dropout_onnx)
