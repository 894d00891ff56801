"""The "cython" variants: thin wrappers that check shapes, allocate outputs and call ``cnnkit._ext``.

Everything that reaches a nogil loop is checked here first (rank, shapes, dtype, contiguity),
so a wrong call raises ``ValueError`` instead of reading out of bounds.

Threads: the convolution kernels run an OpenMP team over the images of the batch (forward:
over bands of output rows when the batch is smaller than the team) and call single-threaded
BLAS GEMM inside it.  BLAS is limited to one thread with threadpoolctl during these calls, so
the two thread pools never nest (2 OpenMP x 2 BLAS threads on 2 cores would oversubscribe),
and BLAS never wakes its own worker threads for our products: idle OpenBLAS workers keep
spinning for a long while after a multi-threaded call and would compete with the OpenMP team.

Priorities: 100 (above the NumPy reference) where the Cython loop is faster: convolutions,
pooling, batch norm, subsampling, dropout, ReLU-like kernels.  The ELU, GELU, scaled-tanh,
softmax and log-softmax kernels call scalar libm functions, which NumPy's SIMD exp/tanh/erf
beat on float32 (measured forward+backward on (64, 32, 28, 28): GELU-tanh 7 ms NumPy vs 35 ms,
softmax 4 vs 6 ms); they register with priority -10 so automatic selection keeps NumPy.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from cnnkit._ext import activation as _act
from cnnkit._ext import conv as _conv
from cnnkit._ext import conv as _convt
from cnnkit._ext import dropout as _dropout
from cnnkit._ext import norm as _norm
from cnnkit._ext import pool as _pool
from cnnkit.builtin.numpy_variants import conv2d_output_size, pool2d_output_size
from cnnkit.plugins import hookimpl

__all__ = [
    "COL_WORKSPACE_BYTES",
    "Conv2dCython",
    "MaxPool2dCython",
    "AvgPool2dCython",
    "ReluCython",
    "SigmoidCython",
    "TanhCython",
    "LeakyReluCython",
    "EluCython",
    "GeluCython",
    "ScaledTanhCython",
    "SoftmaxCython",
    "LogSoftmaxCython",
    "DropoutCython",
    "BatchNormCython",
    "GlobalAvgPool2dCython",
    "SubsamplingCython",
    "ConvTranspose2dCython",
]

#: Upper bound of the im2col workspace of one convolution call, all threads together.  Each
#: thread holds the columns of one band of output rows of one image; bands are as tall as fit
#: (a whole image for ordinary sizes), but never less than one output row.
COL_WORKSPACE_BYTES = 32 * 2**20

#: Convolutions with fewer multiply-adds than this run on one thread.
SERIAL_MACS = 1 << 18

_INT32_MAX = 2**31 - 1
_controller = None
_controller_lock = threading.Lock()


def _blas_controller():
    global _controller
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
    return _controller


def _single_threaded_blas():
    """Context limiting BLAS to one thread while the OpenMP threads of a kernel call it.

    Without OpenMP (one thread) BLAS keeps its own threads: they are the only parallelism left.
    """
    if _conv.max_threads() <= 1:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")


_workspaces = threading.local()


def _workspace(shape, dtype):
    """Scratch buffer for the column matrices, reused across calls from the same Python thread.

    Keeping it avoids page-faulting up to ``COL_WORKSPACE_BYTES`` of fresh memory on every call
    (expensive in virtual machines); each calling thread gets its own, so concurrent calls from
    several Python threads never share one.
    """
    size = int(np.prod(shape))
    key = np.dtype(dtype).str
    cache = _workspaces.__dict__
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def _contiguous(a):
    """``a`` as a C-contiguous array of the same shape (``np.ascontiguousarray`` would turn a
    0-d array into a 1-d one, and the kernels would return the wrong shape)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _config_int(value, what, owner):
    """An int hyper-parameter from a config; floats, strings and bools are refused rather than
    truncated or parsed by ``int()``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {what} must be an int, got {value!r}")
    return int(value)


def _config_ints(config, key, n, owner):
    """The n ints of ``config[key]`` (a tuple or list)."""
    values = config[key]
    if not isinstance(values, (tuple, list)) or len(values) != n:
        raise TypeError(f"{owner}: config[{key!r}] must be {n} ints, got {values!r}")
    return tuple(_config_int(v, f"config[{key!r}]", owner) for v in values)


def _as_input(a, dtype, name):
    a = np.asarray(a)
    if a.dtype != dtype:
        raise ValueError(f"{name} has dtype {a.dtype}, expected {dtype}")
    return _contiguous(a)


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------
def _conv_plan(x_shape, w_shape, oh, ow, itemsize, direct, split_images):
    """(threads, rows per band, workspace shape) for one call.

    Forward (``split_images``) may cut images into bands of output rows so that a batch
    smaller than the thread count still keeps every thread busy; backward parallelises over
    whole images only (bands of one image overlap in the input gradient).
    """
    n, c = x_shape[:2]
    o, _, kh, kw = w_shape
    threads = max(1, _conv.max_threads())
    k = c * kh * kw
    if n * o * oh * ow * (k // max(c // w_shape[1], 1)) < SERIAL_MACS:
        threads = 1  # waking a thread team costs more than it saves on tiny convolutions
    rows = oh if direct else max(1, min(oh, (COL_WORKSPACE_BYTES // threads) // max(k * ow * itemsize, 1)))
    if split_images:
        if n < threads:
            per_image = -(-threads // max(n, 1))
            rows = max(1, min(rows, -(-oh // per_image)))
        threads = max(1, min(threads, n * -(-oh // rows)))
    else:
        threads = max(1, min(threads, n))
    return threads, rows, (threads, 1 if direct else k * rows * ow)


class Conv2dCython:
    """2-D cross-correlation: im2col/col2im in Cython, one BLAS GEMM per group and image."""

    @staticmethod
    def _check(x, w, b, config):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"conv2d expects x (N, C, H, W) and weight (O, C/g, kh, kw), got {x.shape}, {w.shape}")
        groups = _config_int(config["groups"], "groups", "conv2d")
        o, cg, kh, kw = w.shape
        if groups < 1 or o % groups or cg * groups != x.shape[1]:
            raise ValueError(f"conv2d: weight {w.shape} does not fit input {x.shape} with groups={groups}")
        if b is not None and b.shape != (o,):
            raise ValueError(f"conv2d: bias shape {b.shape}, expected ({o},)")
        if min(o, cg, kh, kw) < 1 or min(x.shape[2:]) < 1:
            raise ValueError(f"conv2d: empty weight {w.shape} or empty image planes in {x.shape}")
        sh, sw = _config_ints(config, "stride", 2, "conv2d")
        top, bottom, left, right = _config_ints(config, "padding", 4, "conv2d")
        dh, dw = _config_ints(config, "dilation", 2, "conv2d")
        if (min(sh, sw, dh, dw) < 1 or min(top, bottom, left, right) < 0
                or max(sh, sw, dh, dw, top, bottom, left, right) > _INT32_MAX):
            raise ValueError(f"conv2d: invalid config {config} (stride and dilation must lie in "
                             "[1, 2**31), padding in [0, 2**31))")
        oh = conv2d_output_size(x.shape[2], top, bottom, kh, sh, dh)
        ow = conv2d_output_size(x.shape[3], left, right, kw, sw, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"conv2d: input {x.shape} is smaller than the (dilated) kernel {w.shape}")
        if oh * ow > _INT32_MAX or cg * kh * kw > _INT32_MAX or x.shape[2] * x.shape[3] > _INT32_MAX:
            raise ValueError("conv2d: matrix dimensions exceed the 32-bit BLAS interface")
        direct = (kh, kw, sh, sw, top, bottom, left, right) == (1, 1, 1, 1, 0, 0, 0, 0)
        return (sh, sw, top, left, dh, dw, groups), oh, ow, direct

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        w = _as_input(params["weight"], x.dtype, "weight")
        b = params.get("bias")
        b = None if b is None else _as_input(b, x.dtype, "bias")
        geom, oh, ow, direct = Conv2dCython._check(x, w, b, config)
        y = np.empty((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
        threads, rows, ws_shape = _conv_plan(x.shape, w.shape, oh, ow, x.itemsize, direct, True)
        ws = _workspace(ws_shape, x.dtype)
        with _single_threaded_blas():
            _conv.conv2d_forward(x, w, b, y, ws, *geom, rows, threads)
        ctx = (x, w, b is not None, geom, oh, ow, direct) if need_backward else None
        return y, ctx

    @staticmethod
    def backward(dy, ctx, need_input_grad=True):
        x, w, has_bias, geom, oh, ow, direct = ctx
        dy = _as_input(dy, x.dtype, "dy")
        n, o = x.shape[0], w.shape[0]
        if dy.shape != (n, o, oh, ow):
            raise ValueError(f"conv2d backward: dy has shape {dy.shape}, expected {(n, o, oh, ow)}")
        threads, rows, ws_shape = _conv_plan(x.shape, w.shape, oh, ow, x.itemsize, direct, False)
        ws = _workspace(ws_shape, x.dtype)
        dx = np.empty_like(x) if need_input_grad else None
        dw_part = np.zeros((threads, o, w[0].size), dtype=x.dtype)
        db_part = np.zeros((threads, o), dtype=x.dtype) if has_bias else None
        with _single_threaded_blas():
            _conv.conv2d_backward(x, w, dy, dx, dw_part, db_part, ws, *geom, rows, threads,
                                  bool(need_input_grad))
        grads = {"weight": (dw_part[0] if threads == 1 else dw_part.sum(axis=0)).reshape(w.shape)}
        if has_bias:
            grads["bias"] = db_part[0] if threads == 1 else db_part.sum(axis=0)
        return dx, grads


# ---------------------------------------------------------------------------------------------
# convtranspose2d
# ---------------------------------------------------------------------------------------------
class ConvTranspose2dCython:
    """Transposed convolution.  Forward: per image and group one GEMM ``W_g^T @ x_g`` and a
    scatter into the output (``cnnkit._ext.convt``).  Backward reuses the convolution kernels:
    the input gradient *is* ``conv2d(dy, W)`` with the same stride/padding/dilation/groups, and
    the weight gradient is the convolution weight gradient with the roles of x and dy swapped."""

    @staticmethod
    def _check(x, w, b, config):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"convtranspose2d expects x (N, C, H, W) and weight (C, O/g, kh, kw), "
                             f"got {x.shape}, {w.shape}")
        groups = _config_int(config["groups"], "groups", "convtranspose2d")
        cin, cog, kh, kw = w.shape
        if groups < 1 or cin != x.shape[1] or cin % groups:
            raise ValueError(f"convtranspose2d: weight {w.shape} does not fit input {x.shape} "
                             f"with groups={groups}")
        if b is not None and b.shape != (cog * groups,):
            raise ValueError(f"convtranspose2d: bias shape {b.shape}, expected ({cog * groups},)")
        if min(cin, cog, kh, kw) < 1 or min(x.shape[2:]) < 1:
            raise ValueError(f"convtranspose2d: empty weight {w.shape} or empty image planes in "
                             f"{x.shape}")
        sh, sw = _config_ints(config, "stride", 2, "convtranspose2d")
        ph, pw = _config_ints(config, "padding", 2, "convtranspose2d")
        oph, opw = _config_ints(config, "output_padding", 2, "convtranspose2d")
        dh, dw = _config_ints(config, "dilation", 2, "convtranspose2d")
        if (min(sh, sw, dh, dw) < 1 or min(ph, pw, oph, opw) < 0
                or max(sh, sw, dh, dw, ph, pw, oph, opw) > _INT32_MAX):
            raise ValueError(f"convtranspose2d: invalid config {config} (stride and dilation must "
                             "lie in [1, 2**31), padding in [0, 2**31))")
        h, wd = x.shape[2:]
        oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
        ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"convtranspose2d: padding {config['padding']} leaves no output for "
                             f"input {x.shape}")
        if oh * ow > _INT32_MAX or h * wd > _INT32_MAX or cog * kh * kw > _INT32_MAX:
            raise ValueError("convtranspose2d: matrix dimensions exceed the 32-bit BLAS interface")
        direct = (kh, kw, sh, sw, ph, pw, oh, ow) == (1, 1, 1, 1, 0, 0, h, wd)
        return (sh, sw, ph, pw, dh, dw, groups), oh, ow, direct

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        w = _as_input(params["weight"], x.dtype, "weight")
        b = params.get("bias")
        b = None if b is None else _as_input(b, x.dtype, "bias")
        geom, oh, ow, direct = ConvTranspose2dCython._check(x, w, b, config)
        n, cin, h, wd = x.shape
        cout = w.shape[1] * geom[-1]
        k = cout * w.shape[2] * w.shape[3]
        threads = max(1, min(_conv.max_threads(), n))
        if n * cin * h * wd * k < SERIAL_MACS:
            threads = 1
        rows = max(1, min(h, (COL_WORKSPACE_BYTES // threads) // max(k * wd * x.itemsize, 1)))
        ws = _workspace((threads, k * rows * wd), x.dtype)
        y = np.empty((n, cout, oh, ow), dtype=x.dtype)
        with _single_threaded_blas():
            _convt.conv_transpose2d_forward(x, w, b, y, ws, *geom, rows, threads)
        return y, ((x, w, b is not None, geom, oh, ow, direct) if need_backward else None)

    @staticmethod
    def backward(dy, ctx, need_input_grad=True):
        x, w, has_bias, geom, oh, ow, direct = ctx
        dy = _as_input(dy, x.dtype, "dy")
        n, cin, h, wd = x.shape
        if dy.shape != (n, w.shape[1] * geom[-1], oh, ow):
            raise ValueError(f"convtranspose2d backward: dy has shape {dy.shape}, expected "
                             f"{(n, w.shape[1] * geom[-1], oh, ow)}")
        sh, sw, ph, pw, dh, dw, groups = geom
        conv_geom = (sh, sw, ph, pw, dh, dw, groups)  # the convolution dy -> x
        dx = None
        with _single_threaded_blas():
            if need_input_grad:
                threads, rows, ws_shape = _conv_plan(dy.shape, w.shape, h, wd, x.itemsize,
                                                     direct, True)
                dx = np.empty_like(x)
                _conv.conv2d_forward(dy, w, None, dx, _workspace(ws_shape, x.dtype), *conv_geom,
                                     rows, threads)
            threads, rows, ws_shape = _conv_plan(dy.shape, w.shape, h, wd, x.itemsize, direct,
                                                 False)
            dw_part = np.zeros((threads, cin, w[0].size), dtype=x.dtype)
            _conv.conv2d_backward(dy, w, x, None, dw_part, None, _workspace(ws_shape, x.dtype),
                                  *conv_geom, rows, threads, False)
        grads = {"weight": (dw_part[0] if threads == 1 else dw_part.sum(axis=0)).reshape(w.shape)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        return dx, grads


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
def _pool_geometry(x, config):
    if x.ndim != 4:
        raise ValueError(f"pooling expects (N, C, H, W), got {x.shape}")
    kh, kw = _config_ints(config, "kernel_size", 2, "pooling")
    sh, sw = _config_ints(config, "stride", 2, "pooling")
    ph, pw = _config_ints(config, "padding", 2, "pooling")
    if (min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw
            or max(kh, kw, sh, sw) > _INT32_MAX):
        raise ValueError(f"pooling: invalid config {config} (kernel and stride must lie in "
                         "[1, 2**31), padding at most half the kernel)")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"pooling: input {x.shape} has empty image planes")
    oh = pool2d_output_size(x.shape[2], kh, sh, ph, bool(config["ceil_mode"]))
    ow = pool2d_output_size(x.shape[3], kw, sw, pw, bool(config["ceil_mode"]))
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling: input {x.shape} is smaller than the kernel {(kh, kw)}")
    return (kh, kw, sh, sw, ph, pw), oh, ow


class MaxPool2dCython:
    """Max pooling; the argmax (int32 per output) is kept only when a backward pass will follow."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        geom, oh, ow = _pool_geometry(x, config)
        if x.shape[2] * x.shape[3] > _INT32_MAX:
            raise ValueError("maxpool2d: plane too large for int32 argmax indices")
        y = np.empty((*x.shape[:2], oh, ow), dtype=x.dtype)
        argmax = np.empty(y.shape, dtype=np.intc) if need_backward else None
        _pool.maxpool2d_forward(x, y, argmax, *geom)
        return y, ((x.shape, x.dtype, argmax) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x_shape, dtype, argmax = ctx
        dy = _as_input(dy, dtype, "dy")
        if dy.shape != argmax.shape:
            raise ValueError(f"maxpool2d backward: dy has shape {dy.shape}, expected {argmax.shape}")
        dx = np.empty(x_shape, dtype=dtype)
        _pool.maxpool2d_backward(dy, argmax, dx)
        return dx, {}


class AvgPool2dCython:
    """Average pooling with PyTorch's divisor rules (count_include_pad, ceil_mode)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        geom, oh, ow = _pool_geometry(x, config)
        include = bool(config.get("count_include_pad", True))
        y = np.empty((*x.shape[:2], oh, ow), dtype=x.dtype)
        _pool.avgpool2d_forward(x, y, *geom, include)
        return y, ((x.shape, x.dtype, y.shape, geom, include) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x_shape, dtype, y_shape, geom, include = ctx
        dy = _as_input(dy, dtype, "dy")
        if dy.shape != y_shape:
            raise ValueError(f"avgpool2d backward: dy has shape {dy.shape}, expected {y_shape}")
        dx = np.empty(x_shape, dtype=dtype)
        _pool.avgpool2d_backward(dy, dx, *geom, include)
        return dx, {}


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------
def _elementwise(kernel_fwd, kernel_bwd):
    """Build a variant class from a pair of flat kernels; backward keeps only the output y."""

    class _Variant:
        @staticmethod
        def forward(x, params, config, need_backward):
            x = _contiguous(x)
            y = np.empty_like(x)
            kernel_fwd(x.reshape(-1), y.reshape(-1))
            return y, (y if need_backward else None)

        @staticmethod
        def backward(dy, ctx):
            y = ctx
            dy = _as_input(dy, y.dtype, "dy")
            if dy.shape != y.shape:
                raise ValueError(f"activation backward: dy has shape {dy.shape}, expected {y.shape}")
            dx = np.empty_like(y)
            kernel_bwd(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
            return dx, {}

    return _Variant


class ReluCython(_elementwise(_act.relu_forward, _act.relu_backward)):
    """max(x, 0), NaN propagating; backward masks dy with y > 0."""


class SigmoidCython(_elementwise(_act.sigmoid_forward, _act.sigmoid_backward)):
    """Overflow-free logistic; backward dy * y * (1 - y)."""


class TanhCython(_elementwise(_act.tanh_forward, _act.tanh_backward)):
    """tanh; backward dy * (1 - y^2)."""


# ---------------------------------------------------------------------------------------------
# activations with hyper-parameters (backward reads x), softmax, dropout
# ---------------------------------------------------------------------------------------------
def _flat_pair(dy, x, what):
    dy = _as_input(dy, x.dtype, "dy")
    if dy.shape != x.shape:
        raise ValueError(f"{what} backward: dy has shape {dy.shape}, expected {x.shape}")
    return dy


def _elementwise_with_args(kernel_fwd, kernel_bwd, args_of, keep, what):
    """A variant class for an elementwise kernel with scalar arguments taken from the config.

    ``args_of(config)`` gives the kernel's extra arguments; ``keep`` is "x" or "y": the array
    the backward kernel reads besides dy."""

    class _Variant:
        @staticmethod
        def forward(x, params, config, need_backward):
            x = _contiguous(x)
            y = np.empty_like(x)
            args = args_of(config)
            kernel_fwd(x.reshape(-1), y.reshape(-1), *args)
            return y, (((x if keep == "x" else y), args) if need_backward else None)

        @staticmethod
        def backward(dy, ctx):
            kept, args = ctx
            dy = _flat_pair(dy, kept, what)
            dx = np.empty_like(kept)
            kernel_bwd(dy.reshape(-1), kept.reshape(-1), dx.reshape(-1), *args)
            return dx, {}

    return _Variant


class LeakyReluCython(_elementwise_with_args(
        _act.leaky_relu_forward, _act.leaky_relu_backward,
        lambda c: (float(c["negative_slope"]),), "x", "leakyrelu")):
    """x if x > 0 else slope * x; backward from x (the gradient at 0 is the slope)."""


class EluCython(_elementwise_with_args(
        _act.elu_forward, _act.elu_backward, lambda c: (float(c["alpha"]),), "x", "elu")):
    """x if x > 0 else alpha * expm1(x); backward from x."""


class GeluCython(_elementwise_with_args(
        _act.gelu_forward, _act.gelu_backward,
        lambda c: (c.get("approximate", "none") == "tanh",), "x", "gelu")):
    """Exact (erf) or tanh-approximated GELU, evaluated in double; backward from x."""


class ScaledTanhCython(_elementwise_with_args(
        _act.scaled_tanh_forward, _act.scaled_tanh_backward,
        lambda c: (float(c["amplitude"]), float(c["slope"])), "y", "scaledtanh")):
    """amplitude * tanh(slope * x); backward from y."""


def _outer_c_inner(shape, config):
    axis = _config_int(config.get("axis", 1), "axis", "softmax")
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise ValueError(f"softmax: axis {config.get('axis')} out of range for shape {shape}")
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    return (outer, shape[axis], inner)


def _softmax_variant(log_form):
    class _Variant:
        @staticmethod
        def forward(x, params, config, need_backward):
            x = _contiguous(x)
            view = _outer_c_inner(x.shape, config)
            y = np.empty_like(x)
            _act.softmax_forward(x.reshape(view), y.reshape(view), log_form)
            return y, ((y, view) if need_backward else None)

        @staticmethod
        def backward(dy, ctx):
            y, view = ctx
            dy = _flat_pair(dy, y, "softmax")
            dx = np.empty_like(y)
            _act.softmax_backward(dy.reshape(view), y.reshape(view), dx.reshape(view), log_form)
            return dx, {}

    return _Variant


class SoftmaxCython(_softmax_variant(False)):
    """Softmax over one axis of an (outer, C, inner) view, sums in double."""


class LogSoftmaxCython(_softmax_variant(True)):
    """Log-softmax over one axis of an (outer, C, inner) view, sums in double."""


class DropoutCython:
    """Inverted dropout; the splitmix64 counter-based mask of ``config["seed"]`` (the same
    numbers as the NumPy reference), drawn inside the loop, kept as uint8 for backward."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
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
        dy = _contiguous(dy)
        if dy.shape != keep.shape:
            raise ValueError(f"dropout backward: dy has shape {dy.shape}, expected {keep.shape}")
        dx = np.empty_like(dy)
        _dropout.dropout_backward(dy.reshape(-1), keep.reshape(-1), dx.reshape(-1), p)
        return dx, {}


# ---------------------------------------------------------------------------------------------
# batch normalisation, global average pooling, subsampling
# ---------------------------------------------------------------------------------------------
class BatchNormCython:
    """Batch-statistics normalisation over (N, C, M), parallel over channels; keeps x, the
    mean and 1/std (not x-hat) for backward; ``statistics(ctx)`` gives the batch mean and
    biased variance to the layer's running averages."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        if x.ndim < 2:
            raise ValueError(f"batchnorm expects (N, C, ...), got {x.shape}")
        w, b = params.get("weight"), params.get("bias")
        c = x.shape[1]
        if (w is None) != (b is None):
            raise ValueError("batchnorm: weight and bias must both be given or both be None")
        if w is not None:
            w, b = _as_input(w, x.dtype, "weight"), _as_input(b, x.dtype, "bias")
            if w.shape != (c,) or b.shape != (c,):
                raise ValueError(f"batchnorm: weight/bias shapes {w.shape}, {b.shape}, expected ({c},)")
        eps = float(config["eps"])
        if not 0.0 < eps < float("inf"):  # eps = 0 divides by zero for a constant channel
            raise ValueError(f"batchnorm: eps must be a finite number > 0, got {config['eps']!r}")
        view = (x.shape[0], c, int(np.prod(x.shape[2:])))
        y = np.empty_like(x)
        mean, var, inv = np.empty(c), np.empty(c), np.empty(c)
        _norm.batchnorm_forward(x.reshape(view), w, b, y.reshape(view), eps, mean, var, inv)
        return y, ((x, w, mean, var, inv, view) if need_backward else None)

    @staticmethod
    def statistics(ctx):
        return ctx[2], ctx[3]

    @staticmethod
    def backward(dy, ctx):
        x, w, mean, var, inv, view = ctx
        dy = _flat_pair(dy, x, "batchnorm")
        dx = np.empty_like(x)
        c = view[1]
        dw = np.empty(c, dtype=x.dtype) if w is not None else None
        db = np.empty(c, dtype=x.dtype) if w is not None else None
        _norm.batchnorm_backward(dy.reshape(view), x.reshape(view), w, mean, inv,
                                 dx.reshape(view), dw, db)
        return dx, ({} if w is None else {"weight": dw, "bias": db})


class GlobalAvgPool2dCython:
    """Plane means, summed in double; parallel over (image, channel)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        if x.ndim != 4:
            raise ValueError(f"globalavgpool2d expects (N, C, H, W), got {x.shape}")
        if min(x.shape[2:]) < 1:
            raise ValueError(f"globalavgpool2d: input {x.shape} has empty image planes")
        y = np.empty(x.shape[:2], dtype=x.dtype)
        _pool.global_avgpool2d_forward(x, y)
        return y, ((x.shape, x.dtype) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        shape, dtype = ctx
        dy = _as_input(dy, dtype, "dy")
        if dy.shape != shape[:2]:
            raise ValueError(f"globalavgpool2d backward: dy has shape {dy.shape}, expected {shape[:2]}")
        dx = np.empty(shape, dtype=dtype)
        _pool.global_avgpool2d_backward(dy, dx)
        return dx, {}


class SubsamplingCython:
    """LeNet-5 subsampling in one pass per plane; keeps the window sums for the coefficient
    gradient."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = _contiguous(x)
        if x.ndim != 4:
            raise ValueError(f"subsampling expects (N, C, H, W), got {x.shape}")
        kh, kw = _config_ints(config, "kernel_size", 2, "subsampling")
        w = _as_input(params["weight"], x.dtype, "weight")
        b = params.get("bias")
        b = None if b is None else _as_input(b, x.dtype, "bias")
        n, c, h, wd = x.shape
        if w.shape != (c,) or (b is not None and b.shape != (c,)) or kh < 1 or kw < 1:
            raise ValueError(f"subsampling: parameters {w.shape} do not fit input {x.shape}")
        oh, ow = h // kh, wd // kw
        if oh < 1 or ow < 1:
            raise ValueError(f"subsampling: input {x.shape} is smaller than the window {(kh, kw)}")
        average = config["mode"] == "average"
        y = np.empty((n, c, oh, ow), dtype=x.dtype)
        sums = np.empty_like(y) if need_backward else None
        _pool.subsampling_forward(x, w, b, y, sums, kh, kw, average)
        return y, ((sums, w, b is not None, x.shape, kh, kw, average) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        sums, w, has_bias, shape, kh, kw, average = ctx
        dy = _as_input(dy, w.dtype, "dy")
        if dy.shape != sums.shape:
            raise ValueError(f"subsampling backward: dy has shape {dy.shape}, expected {sums.shape}")
        dx = np.empty(shape, dtype=w.dtype)
        _pool.subsampling_backward(dy, w, dx, kh, kw, average)
        grads = {"weight": np.einsum("ncij,ncij->c", dy, sums)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        return dx, grads


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    register("conv2d", "cython", Conv2dCython, priority=100, dtypes=dtypes,
             capabilities=("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias"),
             description="Cython im2col/col2im, BLAS GEMM per image and group, OpenMP over images")
    register("convtranspose2d", "cython", ConvTranspose2dCython, priority=100, dtypes=dtypes,
             capabilities=("stride", "padding", "output_padding", "dilation", "groups", "bias"),
             description="Cython GEMM + scatter forward; backward through the conv2d kernels")
    register("maxpool2d", "cython", MaxPool2dCython, priority=100, dtypes=dtypes,
             capabilities=("stride", "padding", "ceil_mode"),
             description="Cython direct loops, OpenMP over (image, channel), int32 argmax")
    register("avgpool2d", "cython", AvgPool2dCython, priority=100, dtypes=dtypes,
             capabilities=("stride", "padding", "ceil_mode", "count_include_pad"),
             description="Cython direct loops, OpenMP over (image, channel)")
    register("relu", "cython", ReluCython, priority=100, dtypes=dtypes, description="Cython elementwise")
    register("leakyrelu", "cython", LeakyReluCython, priority=100, dtypes=dtypes,
             description="Cython elementwise")
    # Transcendental elementwise kernels: scalar libm in these loops loses to NumPy's SIMD
    # exp/tanh/erf (3-30x on float32, see the module docstring), so they rank below the NumPy
    # reference in automatic selection; impl="cython" still picks them.
    slow = dict(priority=-10, dtypes=dtypes)
    register("sigmoid", "cython", SigmoidCython, **slow,
             description="Cython elementwise, overflow-free")
    register("tanh", "cython", TanhCython, **slow, description="Cython elementwise")
    register("elu", "cython", EluCython, **slow, description="Cython elementwise (expm1)")
    register("gelu", "cython", GeluCython, **slow, capabilities=("approximate",),
             description="Cython elementwise, libm erf (float32: erff)")
    register("scaledtanh", "cython", ScaledTanhCython, **slow, description="Cython elementwise")
    register("softmax", "cython", SoftmaxCython, **slow,
             description="Cython, (outer, C, inner) view, sums in double")
    register("logsoftmax", "cython", LogSoftmaxCython, **slow,
             description="Cython, (outer, C, inner) view, sums in double")
    register("dropout", "cython", DropoutCython, priority=100, dtypes=dtypes,
             description="Cython, splitmix64 counter-based mask drawn in the loop")
    for bn in ("batchnorm1d", "batchnorm2d"):
        register(bn, "cython", BatchNormCython, priority=100, dtypes=dtypes,
                 description="Cython, OpenMP over channels, two-pass statistics in double")
    register("globalavgpool2d", "cython", GlobalAvgPool2dCython, priority=100, dtypes=dtypes,
             description="Cython, OpenMP over (image, channel)")
    register("subsampling", "cython", SubsamplingCython, priority=100, dtypes=dtypes,
             capabilities=("bias",), description="Cython, OpenMP over (image, channel)")
