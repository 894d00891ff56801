"""The norm family's built-in plugin: ``batchnorm1d`` and ``batchnorm2d`` (the training
normalisation with batch statistics; the layers keep the running statistics), each with

- ``"numpy"``: the reference, statistics accumulated in float64;
- ``"cython"``: ``cnnkit._ext.norm`` (priority 100), OpenMP over channels, two-pass statistics
  in double;
- ``"cython-avx2"``, ``"cython-avx512"``: the same kernels compiled per instruction set
  (``setup.py``'s ISA builds), refused on a CPU without the features.

Both provide ``statistics(ctx) -> (mean, biased_var)`` so the layer reuses the batch statistics
for its running averages.
"""
from __future__ import annotations

import numpy as np

from cnnkit._ext import norm as _norm
from cnnkit.builtin._kernel_args import ISA_FEATURES, as_input, contiguous, grad_like, isa_build
from cnnkit.layers import BatchNorm1D, BatchNorm2D
from cnnkit.plugins import hookimpl

#: Priority of the "cython-<isa>" variants against "cython"'s 100: above it where measured
#: faster.  The AVX2 build ran training forward+backward of (32, 64, 32, 32) float32 in
#: 0.8-0.9 of the portable build's time (twice as many doubles per instruction in the sums
#: and elementwise passes, which convert every float to double); the AVX-512 build is not
#: measured yet (no AVX-512 on the CPU measured).
ISA_PRIORITY = {"avx2": 101, "avx512": 99}

__all__ = ["BatchNormNumpy", "BatchNormCython"]


# ---------------------------------------------------------------------------------------------
# the reference (numpy)
# ---------------------------------------------------------------------------------------------
class BatchNormNumpy:
    """Normalise with the batch mean and biased variance of every channel (axis 1), then
    ``* weight + bias``.  Statistics are accumulated in float64."""

    @staticmethod
    def forward(x, params, config, need_backward):
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        mean = x3.mean(axis=(0, 2), dtype=np.float64)
        var = x3.var(axis=(0, 2), dtype=np.float64)
        inv = 1.0 / np.sqrt(var + config["eps"])
        xhat = (x3 - mean[None, :, None]) * inv[None, :, None]
        w, b = params.get("weight"), params.get("bias")
        y = xhat if w is None else xhat * w[None, :, None] + b[None, :, None]
        y = np.ascontiguousarray(y.reshape(x.shape), dtype=x.dtype)
        ctx = (xhat, inv, mean, var, w, x.dtype, x.shape) if need_backward else None
        return y, ctx

    @staticmethod
    def statistics(ctx):
        return ctx[2], ctx[3]

    @staticmethod
    def backward(dy, ctx):
        xhat, inv, _, _, w, dtype, shape = ctx
        n, c = shape[:2]
        dy3 = dy.reshape(n, c, -1).astype(np.float64)
        m = dy3.shape[0] * dy3.shape[2]
        sum_dy = dy3.sum(axis=(0, 2))
        sum_dy_xhat = (dy3 * xhat).sum(axis=(0, 2))
        g = np.ones(c) if w is None else w.astype(np.float64)
        dx = (g * inv)[None, :, None] * (dy3 - (sum_dy[None, :, None]
                                                + xhat * sum_dy_xhat[None, :, None]) / m)
        grads = {} if w is None else {"weight": sum_dy_xhat.astype(dtype),
                                      "bias": sum_dy.astype(dtype)}
        return np.ascontiguousarray(dx.reshape(shape), dtype=dtype), grads


# ---------------------------------------------------------------------------------------------
# the compiled kernel (cython)
# ---------------------------------------------------------------------------------------------
class BatchNormCython:
    """Batch-statistics normalisation over (N, C, M), parallel over channels; keeps x, the
    mean and 1/std (not x-hat) for backward; ``statistics(ctx)`` gives the batch mean and
    biased variance to the layer's running averages."""

    _kernels = _norm

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        if x.ndim < 2:
            raise ValueError(f"batchnorm expects (N, C, ...), got {x.shape}")
        w, b = params.get("weight"), params.get("bias")
        c = x.shape[1]
        if (w is None) != (b is None):
            raise ValueError("batchnorm: weight and bias must both be given or both be None")
        if w is not None:
            w, b = as_input(w, x.dtype, "weight"), as_input(b, x.dtype, "bias")
            if w.shape != (c,) or b.shape != (c,):
                raise ValueError(f"batchnorm: weight/bias shapes {w.shape}, {b.shape}, expected ({c},)")
        eps = float(config["eps"])
        if not 0.0 < eps < float("inf"):  # eps = 0 divides by zero for a constant channel
            raise ValueError(f"batchnorm: eps must be a finite number > 0, got {config['eps']!r}")
        view = (x.shape[0], c, int(np.prod(x.shape[2:])))
        y = np.empty_like(x)
        mean, var, inv = np.empty(c), np.empty(c), np.empty(c)
        cls._kernels.batchnorm_forward(x.reshape(view), w, b, y.reshape(view), eps, mean, var, inv)
        return y, ((x, w, mean, var, inv, view) if need_backward else None)

    @staticmethod
    def statistics(ctx):
        return ctx[2], ctx[3]

    @classmethod
    def backward(cls, dy, ctx):
        x, w, mean, var, inv, view = ctx
        dy = grad_like(dy, x.dtype, x.shape, "batchnorm")
        dx = np.empty_like(x)
        c = view[1]
        dw = np.empty(c, dtype=x.dtype) if w is not None else None
        db = np.empty(c, dtype=x.dtype) if w is not None else None
        cls._kernels.batchnorm_backward(dy.reshape(view), x.reshape(view), w, mean, inv,
                                        dx.reshape(view), dw, db)
        return dx, ({} if w is None else {"weight": dw, "bias": db})


# ---------------------------------------------------------------------------------------------
# registration: written out per family as a third-party plugin writes it (the blocks of
# the families look alike on purpose; a shared helper would hide the plugin API they show)
# ---------------------------------------------------------------------------------------------
@hookimpl
def cnnkit_register_layers(register):
    register("batchnorm1d", BatchNorm1D)
    register("batchnorm2d", BatchNorm2D)


@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    for cls in (BatchNorm1D, BatchNorm2D):
        register(cls.layer_type, "numpy", BatchNormNumpy, priority=0, dtypes=dtypes,
                 capabilities=cls.FEATURES, description="NumPy, statistics in float64")
        register(cls.layer_type, "cython", BatchNormCython, priority=100, dtypes=dtypes,
                 capabilities=cls.FEATURES,
                 description="Cython, OpenMP over channels, two-pass statistics in double")
    # the same kernels compiled per instruction set; refused on a CPU without the features
    for isa, cpu in ISA_FEATURES.items():
        for cls in (BatchNorm1D, BatchNorm2D):
            register(cls.layer_type, f"cython-{isa}", isa_build(BatchNormCython, "norm", isa),
                     priority=ISA_PRIORITY[isa], dtypes=dtypes, capabilities=cls.FEATURES,
                     cpu_features=cpu, description=f"as cython, compiled for {', '.join(cpu)}")


# ---------------------------------------------------------------------------------------------
# ONNX export (cnnkit.onnx.export): the inference form
# ---------------------------------------------------------------------------------------------
def _onnx_reduce_mean(ctx, x, axes):
    if ctx.opset >= 18:  # the axes became an input
        return ctx.node("ReduceMean", [x, ctx.constant(np.array(axes, np.int64), "axes")],
                        keepdims=1)
    return ctx.node("ReduceMean", [x], axes=axes, keepdims=1)


def export_batchnorm_onnx(ctx, layer, inputs, input_shapes):
    """BatchNormalization with the running statistics; a layer without them
    (``track_running_stats=False``) normalises with the statistics of the batch it is given,
    in inference too, written out with ReduceMean."""
    x, rank, c = inputs[0], len(input_shapes[0]), layer.num_features
    if layer.affine:
        scale, shift = ctx.param(layer, "weight"), ctx.param(layer, "bias")
    else:
        scale, shift = ctx.constant(np.ones(c), "scale"), ctx.constant(np.zeros(c), "shift")
    if layer.track_running_stats:
        return ctx.node("BatchNormalization", [x, scale, shift, ctx.param(layer, "running_mean"),
                                               ctx.param(layer, "running_var")],
                        epsilon=layer.eps)
    centred = ctx.node("Sub", [x, _onnx_reduce_mean(ctx, x, [0] + list(range(2, rank)))])
    var = _onnx_reduce_mean(ctx, ctx.node("Mul", [centred, centred]),
                            [0] + list(range(2, rank)))
    std = ctx.node("Sqrt", [ctx.node("Add", [var, ctx.constant(layer.eps, "eps")])])
    y = ctx.node("Div", [centred, std])
    if not layer.affine:
        return y
    per_channel = (-1,) + (1,) * (rank - 2)
    y = ctx.node("Mul", [y, ctx.constant(np.reshape(layer.params["weight"], per_channel),
                                         "weight")])
    return ctx.node("Add", [y, ctx.constant(np.reshape(layer.params["bias"], per_channel),
                                            "bias")])


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("batchnorm1d", export_batchnorm_onnx)
    register("batchnorm2d", export_batchnorm_onnx)
