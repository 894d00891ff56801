"""The dense family's built-in plugin: ``dense`` (:class:`~cnnkit.layers.Dense`), y = x @ W.T + b,
and ``rbfoutput`` (:class:`~cnnkit.layers.RBFOutput`), squared distances to class codes.

One variant each, ``"numpy"``: the products are BLAS already, so a compiled loop would add
nothing.  Small products run on one BLAS thread (:func:`cnnkit._threads.dense_blas_threads`).
"""
from __future__ import annotations

from cnnkit._threads import dense_blas_threads
import numpy as np

from cnnkit.layers import Dense, RBFOutput
from cnnkit.plugins import hookimpl

__all__ = ["DenseNumpy", "RBFOutputNumpy"]


class DenseNumpy:
    """y = x @ W.T + b, W of shape (out_features, in_features) as in PyTorch."""

    @staticmethod
    def forward(x, params, config, need_backward):
        w, b = params["weight"], params.get("bias")
        with dense_blas_threads(x.shape[0] * w.size):
            y = x @ w.T
        if b is not None:
            y += b
        return y, ((x, w, b is not None) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, w, has_bias = ctx
        with dense_blas_threads(x.shape[0] * w.size):
            grads = {"weight": dy.T @ x}
            dx = dy @ w
        if has_bias:
            grads["bias"] = dy.sum(axis=0)
        return dx, grads


class RBFOutputNumpy:
    """y[n, k] = |x_n - c_k|^2 from the differences themselves (the expansion
    |x|^2 - 2 x.c + |c|^2 cancels badly for an input near a code, the case training aims at);
    dx_n = 2 sum_k dy[n, k] (x_n - c_k), dc_k = -2 sum_n dy[n, k] (x_n - c_k)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        c = params["codes"]
        diff = x[:, None, :] - c[None, :, :]
        y = np.einsum("nkf,nkf->nk", diff, diff)
        return y, ((x, c) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, c = ctx
        with dense_blas_threads(x.shape[0] * c.size):
            dyc = dy @ c
            dyx = dy.T @ x
        dx = 2 * (dy.sum(axis=1)[:, None] * x - dyc)
        dc = -2 * (dyx - dy.sum(axis=0)[:, None] * c)
        return dx.astype(x.dtype, copy=False), {"codes": dc.astype(c.dtype, copy=False)}


@hookimpl
def cnnkit_register_layers(register):
    register("dense", Dense)
    register("rbfoutput", RBFOutput)


@hookimpl
def cnnkit_register_variants(register):
    register("dense", "numpy", DenseNumpy, priority=0, dtypes=("float32", "float64"),
             capabilities=Dense.FEATURES, description="BLAS matmul")
    register("rbfoutput", "numpy", RBFOutputNumpy, priority=0, dtypes=("float32", "float64"),
             description="squared distances to the class codes from their differences")


# ONNX export (cnnkit.onnx.export): Gemm with the weight transposed, as PyTorch writes Linear
def export_dense_onnx(ctx, layer, inputs, input_shapes):
    bias = [ctx.param(layer, "bias")] if layer.params.get("bias") is not None else []
    return ctx.node("Gemm", [inputs[0], ctx.param(layer, "weight")] + bias, transB=1)


def export_rbfoutput_onnx(ctx, layer, inputs, input_shapes):
    """sum_f (x - c_k)^2 as |x|^2 + (|c_k|^2 - 2 x . c_k): a MatMul of x*x by ones, plus a Gemm
    of x by the codes with |c|^2 as its C; only standard operators at every opset."""
    codes = np.asarray(layer.params["codes"], dtype=np.float64)
    x = inputs[0]
    x_sq = ctx.node("MatMul", [ctx.node("Mul", [x, x]),
                               ctx.constant(np.ones((codes.shape[1], 1)), "ones")])
    cross = ctx.node("Gemm", [x, ctx.constant(codes, "codes"),
                              ctx.constant((codes ** 2).sum(axis=1), "codes_sq")],
                     alpha=-2.0, transB=1)
    return ctx.node("Add", [x_sq, cross])


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("dense", export_dense_onnx)
    register("rbfoutput", export_rbfoutput_onnx)
