"""The built-in fused chains, registered through ``cnnkit_register_fusions`` as a plugin would
(the executor that uses them: :mod:`cnnkit.fusion`).

- ``conv2d+relu`` (training and inference): the Cython convolution applies max(0, .) to each
  band of its output right after the GEMM and bias, while it is in cache, instead of a second
  pass over the whole output.  Backward masks dy by y > 0 with the ReLU's own kernel, then runs
  the convolution's backward.  It stands in for the ``cython`` variants of both layers only,
  and gives bitwise their results.
- ``conv2d[direct*]+relu+maxpool2d`` (training and inference; 2x2 windows, stride 2, no
  padding): the direct convolution pools each image's output while it is in cache, so neither
  the convolution's nor the ReLU's output is ever stored (the pooled map and a byte per window
  for the maximum's place are).  Backward routes the pooled gradient straight into the
  convolution's backward.  Bitwise the results of the three layers run one by one (the maximum
  is taken before the ReLU: they commute; where the places differ the ReLU passes nothing).
- ``conv2d+batchnorm2d`` and ``conv2d+batchnorm2d+relu`` (inference, running statistics): the
  batch norm's per-channel affine map is folded into the convolution's weight and bias
  (``w * gamma / sqrt(var + eps)``, ``(b - mean) * gamma / sqrt(var + eps) + beta``, computed
  in float64), so the normalisation costs nothing.  Equal to the unfused layers within
  float32 rounding (the products are rounded once instead of twice), not bitwise.
"""
from __future__ import annotations

import numpy as np

from cnnkit._ext import activation as _act
from cnnkit.builtin._kernel_args import ISA_FEATURES, isa_build
from cnnkit.builtin.conv import Conv2dCython, Conv2dDirect
from cnnkit.plugins import hookimpl

__all__ = ["ConvRelu", "ConvReluPool", "ConvBatchNormFold"]


def _relu_mask(dy, y):
    """dy where y > 0, else 0: the ReLU variant's backward kernel, so the rule at exactly 0
    (gradient 0) and for NaN is the same bit for bit."""
    dx = np.empty_like(y)
    _act.relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


class ConvRelu:
    """relu(conv2d(x)) in one call of the Cython convolution (``conv``: the wrapper of the
    variant it stands in for)."""

    conv = Conv2dCython

    @classmethod
    def forward(cls, x, layers, configs, need_backward):
        y, ctx = cls.conv.forward(x, layers[0].params, configs[0], need_backward,
                                  fuse_relu=True)
        return y, ((ctx, y) if need_backward else None)

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        conv_ctx, y = ctx
        dx, grads = cls.conv.backward(_relu_mask(dy, y), conv_ctx,
                                      need_input_grad=need_input_grad)
        return dx, [grads, {}]


class ConvReluPool:
    """max_pool2d(relu(conv2d(x)), 2) in one call of a direct convolution (``conv``)."""

    conv = Conv2dDirect

    @classmethod
    def forward(cls, x, layers, configs, need_backward):
        return cls.conv.forward(x, layers[0].params, configs[0], need_backward, relu_pool2=True)

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        dx, grads = cls.conv.backward_relu_pool2(dy, ctx, need_input_grad=need_input_grad)
        return dx, [grads, {}, {}]


def _pool2_supported(layers, dtype):
    pool = layers[2]
    config = dict(kernel_size=pool.kernel_size, stride=pool.stride, padding=pool.padding,
                  padding_after=pool.padding_after, dilation=pool.dilation,
                  ceil_mode=pool.ceil_mode)
    wanted = dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), padding_after=(0, 0),
                  dilation=(1, 1), ceil_mode=False)
    if config != wanted:
        return f"the max pool is not 2x2, stride 2, unpadded, floor mode ({config})"
    return None


def _folded(conv, bn, dtype):
    """The convolution's weight and bias with the batch norm's inference map folded in."""
    buf = bn.buffers
    scale = 1.0 / np.sqrt(buf["running_var"].astype(np.float64) + bn.eps)
    shift = -buf["running_mean"].astype(np.float64) * scale
    if bn.affine:
        gamma = bn.params["weight"].astype(np.float64)
        scale, shift = scale * gamma, shift * gamma + bn.params["bias"].astype(np.float64)
    w = conv.params["weight"].astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    b = shift if conv.params["bias"] is None else (
        conv.params["bias"].astype(np.float64) * scale + shift)
    return {"weight": w.astype(dtype), "bias": b.astype(dtype)}


def _fold_supported(layers, dtype):
    bn = layers[1]
    if not bn.track_running_stats:
        return "the batch norm normalises with batch statistics (track_running_stats=False)"
    return None


class ConvBatchNormFold:
    """Inference only: conv2d followed by batchnorm2d (and optionally relu), as one convolution
    with folded parameters."""

    conv = Conv2dCython

    @classmethod
    def forward(cls, x, layers, configs, need_backward):
        params = _folded(layers[0], layers[1], x.dtype)
        y, _ = cls.conv.forward(x, params, configs[0], False, fuse_relu=len(layers) == 3)
        return y, None

    @staticmethod
    def backward(dy, ctx, need_input_grad=True):
        raise RuntimeError("conv2d+batchnorm2d folding runs in inference only")


@hookimpl
def cnnkit_register_fusions(register):
    register("conv2d+relu", ("conv2d", "relu"), ConvRelu, variants=("cython", "cython"),
             priority=100,
             description="ReLU applied in the Cython convolution's output loop; bitwise equal")
    fold = {"modes": ("inference",), "supports": _fold_supported, "priority": 100}
    register("conv2d+batchnorm2d", ("conv2d", "batchnorm2d"), ConvBatchNormFold,
             variants=("cython", None), **fold,
             description="batch norm (running statistics) folded into the convolution")
    register("conv2d+batchnorm2d+relu", ("conv2d", "batchnorm2d", "relu"), ConvBatchNormFold,
             variants=("cython", None, "cython"), **fold,
             description="batch norm folded into the convolution, ReLU in its output loop")
    # the same chains on the direct convolution (its portable build and each ISA build)
    for name, conv in [("direct", Conv2dDirect)] + [
            (f"direct-{isa}", isa_build(Conv2dDirect, "conv", isa)) for isa in ISA_FEATURES]:
        relu = type(f"ConvRelu_{name}", (ConvRelu,), {"conv": conv})
        pool = type(f"ConvReluPool_{name}", (ConvReluPool,), {"conv": conv})
        register(f"conv2d[{name}]+relu+maxpool2d", ("conv2d", "relu", "maxpool2d"), pool,
                 variants=(name, "cython", "cython"), priority=110, supports=_pool2_supported,
                 description=f"conv2d's {name!r} variant pools its ReLU'd output in cache "
                             "(2x2 max, stride 2); bitwise equal")
        folded = type(f"ConvBatchNormFold_{name}", (ConvBatchNormFold,), {"conv": conv})
        register(f"conv2d[{name}]+relu", ("conv2d", "relu"), relu, variants=(name, "cython"),
                 priority=100, description=f"as conv2d+relu, on conv2d's {name!r} variant")
        register(f"conv2d[{name}]+batchnorm2d", ("conv2d", "batchnorm2d"), folded,
                 variants=(name, None), **fold,
                 description=f"as conv2d+batchnorm2d, on conv2d's {name!r} variant")
        register(f"conv2d[{name}]+batchnorm2d+relu", ("conv2d", "batchnorm2d", "relu"), folded,
                 variants=(name, None, "cython"), **fold,
                 description=f"as conv2d+batchnorm2d+relu, on conv2d's {name!r} variant")
