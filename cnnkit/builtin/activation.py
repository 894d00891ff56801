"""The activation family's built-in plugin: ``relu``, ``sigmoid``, ``tanh``, ``leakyrelu``,
``elu``, ``gelu``, ``scaledtanh``, ``softmax``, ``logsoftmax`` (and ``clip``, ``relu6``: NumPy
only, numpy.clip is one SIMD pass already), each with

- ``"numpy"``: the reference, plain elementwise NumPy;
- ``"cython"``: ``cnnkit._ext.activation`` on flat views (softmax: an (outer, C, inner) view).

Priorities: the Cython ReLU-like kernels (100) beat NumPy.  The ELU, GELU, scaled-tanh, softmax
and log-softmax kernels call scalar libm functions, which NumPy's SIMD exp/tanh/erf beat on
float32 (measured forward+backward on (64, 32, 28, 28): GELU-tanh 7 ms NumPy vs 35 ms, softmax
4 vs 6 ms); they register with priority -10 so automatic selection keeps NumPy, and
``impl="cython"`` still picks them.
"""
from __future__ import annotations

import math

import numpy as np

from cnnkit._ext import activation as _act
from cnnkit.builtin._kernel_args import (ISA_FEATURES, config_int, contiguous, grad_like,
                                         isa_build)
from cnnkit.layers import (ELU, GELU, Clip, LeakyReLU, LogSoftmax, ReLU, ReLU6, ScaledTanh,
                           Sigmoid, Softmax, Tanh)
from cnnkit.plugins import hookimpl

#: Priority of the "cython-<isa>" variants (the "cython" kernels compiled per instruction set)
#: relative to their "cython" variant's: above it only where measured at least as fast.
#: Below for now: the AVX2 build measured within noise of the portable one (fwd+bwd,
#: interleaved, ratios 0.95-1.12: BLAS already dispatches on the CPU, the rest is memory
#: bound); the AVX-512 build is not measured yet.
ISA_PRIORITY_STEP = {"avx2": -1, "avx512": -1}

__all__ = ["ReluNumpy", "ReluCython", "SigmoidNumpy", "SigmoidCython", "TanhNumpy", "TanhCython",
           "LeakyReluNumpy", "LeakyReluCython", "EluNumpy", "EluCython", "GeluNumpy",
           "GeluCython", "ScaledTanhNumpy", "ScaledTanhCython", "SoftmaxNumpy", "SoftmaxCython",
           "LogSoftmaxNumpy", "LogSoftmaxCython", "ClipNumpy"]


# ---------------------------------------------------------------------------------------------
# the reference (numpy)
# ---------------------------------------------------------------------------------------------
class ReluNumpy:
    """max(x, 0); NaN propagates; the gradient at 0 is 0 (as PyTorch)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        y = np.maximum(x, 0)  # keeps NaN, keeps the dtype
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y = ctx
        return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False), {}


class ClipNumpy:
    """``clip`` and ``relu6``: numpy.clip (NaN propagates); the gradient passes strictly inside
    the bounds."""

    @staticmethod
    def forward(x, params, config, need_backward):
        lo, hi = config["min"], config["max"]
        y = np.clip(x, lo, hi) if lo is not None or hi is not None else x.copy()
        return y.astype(x.dtype, copy=False), ((x, lo, hi) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, lo, hi = ctx
        inside = ~np.isnan(x)
        if lo is not None:
            inside &= x > lo
        if hi is not None:
            inside &= x < hi
        return np.where(inside, dy, 0).astype(dy.dtype, copy=False), {}


def _sigmoid(x):
    """Stable logistic: exp is only ever taken of a non-positive number."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


class SigmoidNumpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        y = _sigmoid(x)
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y = ctx
        return dy * y * (1 - y), {}


class TanhNumpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        y = np.tanh(x)
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y = ctx
        return dy * (1 - y * y), {}


class LeakyReluNumpy:
    """x if x > 0 else slope * x; the gradient at 0 is the slope (PyTorch)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        a = x.dtype.type(config["negative_slope"])
        return np.where(x > 0, x, x * a), ((x, a) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, a = ctx
        return np.where(x > 0, dy, dy * a), {}


class EluNumpy:
    """x if x > 0 else alpha * expm1(x); the gradient at 0 is alpha (PyTorch)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        a = x.dtype.type(config["alpha"])
        y = np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))
        return y, ((x, a) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, a = ctx
        return np.where(x > 0, dy, dy * (a * np.exp(np.minimum(x, 0)))), {}


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_CUBIC = 0.044715


def _erf(x):
    from scipy.special import erf  # imported on first use: keeps plugin loading light

    return erf(x)


class GeluNumpy:
    """x * Phi(x) (exact, with erf) or PyTorch's tanh approximation (``approximate="tanh"``)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        if config.get("approximate", "none") == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
            y = 0.5 * x * (1 + t)
            ctx = (x, t, True)
        else:
            cdf = 0.5 * (1 + _erf(x * math.sqrt(0.5)))
            y = x * cdf
            ctx = (x, cdf, False)
        return y.astype(x.dtype, copy=False), (ctx if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, t, tanh_form = ctx
        if tanh_form:
            du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            g = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
        else:
            g = t + x * (_INV_SQRT_2PI * np.exp(-0.5 * x * x))
        return (dy * g).astype(dy.dtype, copy=False), {}


class ScaledTanhNumpy:
    """amplitude * tanh(slope * x); backward from y: slope * (amplitude - y^2 / amplitude)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        a, s = config["amplitude"], config["slope"]
        y = (a * np.tanh(s * x)).astype(x.dtype, copy=False)
        return y, ((y, a, s) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y, a, s = ctx
        if a == 0:
            return np.zeros_like(dy), {}
        return (dy * (s * (a - y * y / a))).astype(dy.dtype, copy=False), {}


def _feature_axis(config, ndim):
    axis = int(config.get("axis", 1))
    return axis + ndim if axis < 0 else axis


class SoftmaxNumpy:
    """exp(x - max) / sum along ``config["axis"]``; backward y * (dy - sum(dy * y))."""

    @staticmethod
    def forward(x, params, config, need_backward):
        axis = _feature_axis(config, x.ndim)
        e = np.exp(x - x.max(axis=axis, keepdims=True, initial=-np.inf))
        y = e / e.sum(axis=axis, keepdims=True)
        return y, ((y, axis) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y, axis = ctx
        return y * (dy - np.sum(dy * y, axis=axis, keepdims=True)), {}


class LogSoftmaxNumpy:
    """x - max - log(sum(exp(x - max))); backward dy - exp(y) * sum(dy)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        axis = _feature_axis(config, x.ndim)
        shifted = x - x.max(axis=axis, keepdims=True, initial=-np.inf)
        y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return y, ((y, axis) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y, axis = ctx
        return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True), {}


# ---------------------------------------------------------------------------------------------
# the compiled kernels (cython)
# ---------------------------------------------------------------------------------------------
def _elementwise(what, kernel_fwd, kernel_bwd, keep="y", args_of=lambda config: ()):
    """A variant class for a pair of flat elementwise kernels, by their names in the module
    ``cls._kernels``.

    ``keep`` is the array the backward kernel reads besides dy ("x" or "y");
    ``args_of(config)`` gives the kernels' scalar arguments (slopes, alpha, ...)."""

    class _Variant:
        _kernels = _act

        @classmethod
        def forward(cls, x, params, config, need_backward):
            x = contiguous(x)
            y = np.empty_like(x)
            args = args_of(config)
            getattr(cls._kernels, kernel_fwd)(x.reshape(-1), y.reshape(-1), *args)
            return y, (((x if keep == "x" else y), args) if need_backward else None)

        @classmethod
        def backward(cls, dy, ctx):
            kept, args = ctx
            dy = grad_like(dy, kept.dtype, kept.shape, what)
            dx = np.empty_like(kept)
            getattr(cls._kernels, kernel_bwd)(dy.reshape(-1), kept.reshape(-1), dx.reshape(-1),
                                              *args)
            return dx, {}

    return _Variant


class ReluCython(_elementwise("relu", "relu_forward", "relu_backward")):
    """max(x, 0), NaN propagating; backward masks dy with y > 0."""


class SigmoidCython(_elementwise("sigmoid", "sigmoid_forward", "sigmoid_backward")):
    """Overflow-free logistic; backward dy * y * (1 - y)."""


class TanhCython(_elementwise("tanh", "tanh_forward", "tanh_backward")):
    """tanh; backward dy * (1 - y^2)."""


class LeakyReluCython(_elementwise(
        "leakyrelu", "leaky_relu_forward", "leaky_relu_backward", "x",
        lambda c: (float(c["negative_slope"]),))):
    """x if x > 0 else slope * x; backward from x (the gradient at 0 is the slope)."""


class EluCython(_elementwise("elu", "elu_forward", "elu_backward", "x",
                             lambda c: (float(c["alpha"]),))):
    """x if x > 0 else alpha * expm1(x); backward from x."""


class GeluCython(_elementwise("gelu", "gelu_forward", "gelu_backward", "x",
                              lambda c: (c.get("approximate", "none") == "tanh",))):
    """Exact (erf) or tanh-approximated GELU, evaluated in double; backward from x."""


class ScaledTanhCython(_elementwise(
        "scaledtanh", "scaled_tanh_forward", "scaled_tanh_backward", "y",
        lambda c: (float(c["amplitude"]), float(c["slope"])))):
    """amplitude * tanh(slope * x); backward from y."""


def _outer_c_inner(shape, config):
    axis = config_int(config.get("axis", 1), "axis", "softmax")
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise ValueError(f"softmax: axis {config.get('axis')} out of range for shape {shape}")
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    return (outer, shape[axis], inner)


def _softmax_variant(log_form):
    class _Variant:
        _kernels = _act

        @classmethod
        def forward(cls, x, params, config, need_backward):
            x = contiguous(x)
            view = _outer_c_inner(x.shape, config)
            y = np.empty_like(x)
            cls._kernels.softmax_forward(x.reshape(view), y.reshape(view), log_form)
            return y, ((y, view) if need_backward else None)

        @classmethod
        def backward(cls, dy, ctx):
            y, view = ctx
            dy = grad_like(dy, y.dtype, y.shape, "softmax")
            dx = np.empty_like(y)
            cls._kernels.softmax_backward(dy.reshape(view), y.reshape(view), dx.reshape(view),
                                          log_form)
            return dx, {}

    return _Variant


class SoftmaxCython(_softmax_variant(False)):
    """Softmax over one axis of an (outer, C, inner) view, sums in double."""


class LogSoftmaxCython(_softmax_variant(True)):
    """Log-softmax over one axis of an (outer, C, inner) view, sums in double."""


# ---------------------------------------------------------------------------------------------
# registration: written out per family as a third-party plugin writes it (the blocks of
# the families look alike on purpose; a shared helper would hide the plugin API they show)
# ---------------------------------------------------------------------------------------------
@hookimpl
def cnnkit_register_layers(register):
    for cls in (ReLU, Sigmoid, Tanh, LeakyReLU, ELU, GELU, ScaledTanh, Softmax, LogSoftmax, Clip,
                ReLU6):
        register(cls.layer_type, cls)


@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    fast = dict(priority=100, dtypes=dtypes)
    # scalar libm in these loops loses to NumPy's SIMD exp/tanh/erf (see the module docstring)
    slow = dict(priority=-10, dtypes=dtypes)
    ref = dict(priority=0, dtypes=dtypes)
    register("relu", "numpy", ReluNumpy, **ref, capabilities=ReLU.FEATURES,
             description="NumPy elementwise")
    register("relu", "cython", ReluCython, **fast, capabilities=ReLU.FEATURES,
             description="Cython elementwise")
    register("leakyrelu", "numpy", LeakyReluNumpy, **ref, capabilities=LeakyReLU.FEATURES,
             description="NumPy elementwise")
    register("leakyrelu", "cython", LeakyReluCython, **fast, capabilities=LeakyReLU.FEATURES,
             description="Cython elementwise")
    register("sigmoid", "numpy", SigmoidNumpy, **ref, capabilities=Sigmoid.FEATURES,
             description="NumPy elementwise, stable")
    register("sigmoid", "cython", SigmoidCython, **slow, capabilities=Sigmoid.FEATURES,
             description="Cython elementwise, overflow-free")
    register("tanh", "numpy", TanhNumpy, **ref, capabilities=Tanh.FEATURES,
             description="NumPy elementwise")
    register("tanh", "cython", TanhCython, **slow, capabilities=Tanh.FEATURES,
             description="Cython elementwise")
    register("elu", "numpy", EluNumpy, **ref, capabilities=ELU.FEATURES,
             description="NumPy elementwise")
    register("elu", "cython", EluCython, **slow, capabilities=ELU.FEATURES,
             description="Cython elementwise (expm1)")
    register("gelu", "numpy", GeluNumpy, **ref, capabilities=GELU.FEATURES,
             description="NumPy elementwise, scipy.special.erf or the tanh form")
    register("gelu", "cython", GeluCython, **slow, capabilities=GELU.FEATURES,
             description="Cython elementwise, libm erf (float32: erff)")
    register("scaledtanh", "numpy", ScaledTanhNumpy, **ref, capabilities=ScaledTanh.FEATURES,
             description="NumPy elementwise")
    register("scaledtanh", "cython", ScaledTanhCython, **slow, capabilities=ScaledTanh.FEATURES,
             description="Cython elementwise")
    register("softmax", "numpy", SoftmaxNumpy, **ref, capabilities=Softmax.FEATURES,
             description="NumPy, max-shifted")
    register("softmax", "cython", SoftmaxCython, **slow, capabilities=Softmax.FEATURES,
             description="Cython, (outer, C, inner) view, sums in double")
    register("logsoftmax", "numpy", LogSoftmaxNumpy, **ref, capabilities=LogSoftmax.FEATURES,
             description="NumPy, max-shifted log-sum-exp")
    register("logsoftmax", "cython", LogSoftmaxCython, **slow, capabilities=LogSoftmax.FEATURES,
             description="Cython, (outer, C, inner) view, sums in double")
    # numpy.clip is one SIMD pass already: no compiled kernel
    register("clip", "numpy", ClipNumpy, **ref, capabilities=Clip.FEATURES,
             description="numpy.clip")
    register("relu6", "numpy", ClipNumpy, **ref, capabilities=ReLU6.FEATURES,
             description="numpy.clip to [0, 6]")
    # the same kernels compiled per instruction set; refused on a CPU without the features
    for isa, cpu in ISA_FEATURES.items():
        for layer_cls, cython, opts in (
                (ReLU, ReluCython, fast), (LeakyReLU, LeakyReluCython, fast),
                (Sigmoid, SigmoidCython, slow), (Tanh, TanhCython, slow), (ELU, EluCython, slow),
                (GELU, GeluCython, slow), (ScaledTanh, ScaledTanhCython, slow),
                (Softmax, SoftmaxCython, slow), (LogSoftmax, LogSoftmaxCython, slow)):
            register(layer_cls.layer_type, f"cython-{isa}", isa_build(cython, "activation", isa),
                     priority=opts["priority"] + ISA_PRIORITY_STEP[isa], dtypes=dtypes,
                     capabilities=layer_cls.FEATURES, cpu_features=cpu,
                     description=f"as cython, compiled for {', '.join(cpu)}")


# ---------------------------------------------------------------------------------------------
# ONNX export (cnnkit.onnx.export): one operator each, or standard operators for the forms
# ONNX lacks (ScaledTanh; GELU before opset 20)
# ---------------------------------------------------------------------------------------------
def _onnx_op(op_type, **attributes_from_layer):
    """An exporter writing one ``op_type`` node, its attributes read from the layer:
    ``alpha="negative_slope"`` sets ONNX's ``alpha`` to ``layer.negative_slope``."""
    def export(ctx, layer, inputs, input_shapes):
        return ctx.node(op_type, inputs[:1], **{onnx_name: getattr(layer, name)
                                                for onnx_name, name in
                                                attributes_from_layer.items()})
    export.__name__ = f"export_{op_type.lower()}_onnx"
    return export


def export_scaledtanh_onnx(ctx, layer, inputs, input_shapes):
    """amplitude * tanh(slope * x)"""
    y = ctx.node("Tanh", [ctx.node("Mul", [inputs[0], ctx.constant(layer.slope, "slope")])])
    return ctx.node("Mul", [y, ctx.constant(layer.amplitude, "amplitude")])


def export_gelu_onnx(ctx, layer, inputs, input_shapes):
    x = inputs[0]
    if ctx.opset >= 20:
        return ctx.node("Gelu", [x], approximate=layer.approximate)
    if layer.approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = ctx.node("Mul", [ctx.node("Mul", [x, x]), x])
        inner = ctx.node("Add", [x, ctx.node("Mul", [cube, ctx.constant(_GELU_CUBIC, "cubic")])])
        phi = ctx.node("Tanh", [ctx.node("Mul", [inner, ctx.constant(_SQRT_2_OVER_PI,
                                                                      "sqrt_2_over_pi")])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        phi = ctx.node("Erf", [ctx.node("Mul", [x, ctx.constant(math.sqrt(0.5), "sqrt_half")])])
    one_plus = ctx.node("Add", [phi, ctx.constant(1.0, "one")])
    return ctx.node("Mul", [ctx.node("Mul", [x, one_plus]), ctx.constant(0.5, "half")])


def export_clip_onnx(ctx, layer, inputs, input_shapes):
    """Clip with its bounds as inputs (opset 11 on); a missing bound stays an empty input."""
    bounds = [ctx.constant(np.array(v), hint) if v is not None else ""
              for v, hint in ((layer.min_value, "min"), (layer.max_value, "max"))]
    while bounds and not bounds[-1]:
        bounds.pop()
    return ctx.node("Clip", [inputs[0]] + bounds)


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("relu", _onnx_op("Relu"))
    register("sigmoid", _onnx_op("Sigmoid"))
    register("tanh", _onnx_op("Tanh"))
    register("leakyrelu", _onnx_op("LeakyRelu", alpha="negative_slope"))
    register("elu", _onnx_op("Elu", alpha="alpha"))
    register("gelu", export_gelu_onnx)
    register("scaledtanh", export_scaledtanh_onnx)
    register("softmax", _onnx_op("Softmax", axis="axis"))
    register("logsoftmax", _onnx_op("LogSoftmax", axis="axis"))
    register("clip", export_clip_onnx)
    register("relu6", export_clip_onnx)
