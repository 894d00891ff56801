"""Layers: the user-facing objects.  Each one validates its inputs, asks the plugin registry
for the variant that computes it, and keeps what its backward pass needs.

A layer's forward and backward live in its variants (``cnnkit.builtin.*_variants`` for the
built-ins); a layer here holds parameters, hyper-parameters and shape inference.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from . import _random
from .plugins import get_registry

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_counters: dict[str, itertools.count] = {}
_INT32_MAX = 2**31 - 1


def _pair(value, what, owner, *, minimum=1):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{owner}: {what} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{owner}: {what} must be >= {minimum}, got {value!r}")
    if max(pair) > _INT32_MAX:
        raise ValueError(f"{owner}: {what} must be < 2**31 (the kernels' int range), got "
                         f"{value!r}")
    return pair


def _conv_features(layer, **geometry):
    """The features a convolution-like layer uses: stride, the given padding-like flags (in
    order), dilation, groups, bias."""
    used = {"stride": layer.stride != (1, 1), **geometry,
            "dilation": layer.dilation != (1, 1), "groups": layer.groups != 1,
            "bias": layer.params["bias"] is not None}
    return tuple(name for name, on in used.items() if on)


def _check_conv_input(layer, input_shape, owner):
    """Rank, channel count and non-empty planes of a convolution-like layer's input."""
    layer.check_input_shape(input_shape)
    if input_shape[1] != layer.in_channels:
        raise ValueError(f"{owner}: expected {layer.in_channels} input channels, got shape "
                         f"{tuple(input_shape)}")
    _check_planes(input_shape, owner)
    return tuple(input_shape)


def _check_planes(input_shape, owner):
    """Refuse (N, C, H, W) shapes whose image planes are empty (H or W is 0)."""
    if input_shape[2] < 1 or input_shape[3] < 1:
        raise ValueError(f"{owner}: input shape {tuple(input_shape)} has empty image planes "
                         "(H or W is 0)")


def _positive_int(value, what, owner):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {value!r}")
    return int(value)


class Layer:
    """Base class of every layer.

    Subclasses set ``layer_type`` (the registry key of their variants), fill ``self.config``
    (resolved hyper-parameters passed to the variant) and ``self.params``, and implement
    :meth:`output_shape`.  ``FEATURES`` lists the non-default features a request may use;
    :meth:`features` says which ones this layer's configuration uses.
    """

    layer_type: str = ""
    FEATURES: tuple = ()
    #: input rank (including the batch axis) the layer accepts; None = any rank >= 1
    input_rank: int | None = None
    #: merge layers (Add, Concat) take a list of inputs and return a list of input gradients
    is_merge = False

    def __init__(self, *, impl: str | None = None, name: str | None = None):
        if impl is not None and not isinstance(impl, str):
            raise TypeError(f"{type(self).__name__}: impl must be a variant name (str), got {impl!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a str, got {name!r}")
        self.impl = impl
        # a graph Model keys the state dict by the names users gave, by position otherwise
        self._user_named = name is not None
        if name is None:
            prefix = type(self).__name__.lower()
            name = f"{prefix}_{next(_counters.setdefault(prefix, itertools.count(1)))}"
        self.name = name
        self.config: dict[str, Any] = {}
        self.params: dict[str, np.ndarray | None] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self._ctx = None
        self._variant = None
        self._variant_key = None
        self._node = None  # set when the layer is placed in a graph

    # ----------------------------------------------------------------- description
    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this layer (for summaries and configs)."""
        return {}

    def features(self) -> tuple:
        """Non-default features this layer's configuration uses (checked against capabilities)."""
        return ()

    def output_shape(self, input_shape: tuple) -> tuple:
        """Output shape for an input shape whose first entry (batch) may be None."""
        return tuple(input_shape)

    def check_input_shape(self, shape: tuple) -> None:
        if self.input_rank is not None and len(shape) != self.input_rank:
            raise ValueError(f"{self.name} ({type(self).__name__}): expected a {self.input_rank}-D "
                             f"input {self._layout()}, got shape {tuple(shape)}")

    def _layout(self):
        return {4: "(N, C, H, W)", 2: "(N, features)"}.get(self.input_rank, "")

    @property
    def dtype(self):
        for p in self.params.values():
            if p is not None:
                return p.dtype
        return None

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values() if p is not None))

    # ----------------------------------------------------------------- variants
    def variant(self, dtype=np.float32):
        """The variant that would compute this layer for inputs of ``dtype`` right now."""
        reg = get_registry()
        dtype = np.dtype(dtype)
        choice = reg.explicit_choice(self.layer_type, self.impl)
        key = (dtype, choice)
        if self._variant_key != key:
            self._variant = reg.select(self.layer_type, dtype=dtype, features=self.features(),
                                       config=self.config, impl=self.impl,
                                       owner=f"{self.name} ({type(self).__name__})")
            self._variant_key = key
        return self._variant

    # ----------------------------------------------------------------- modes and dtypes
    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Cast the parameters to float32 or float64 (in place) and return self."""
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.name}: dtype must be float32 or float64, got {dtype}")
        for k, p in self.params.items():
            if p is not None:
                self.params[k] = np.ascontiguousarray(p, dtype=dtype)
        self.grads = {}
        self._ctx = None
        return self

    # ----------------------------------------------------------------- compute
    def _validate(self, x):
        owner = f"{self.name} ({type(self).__name__})"
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{owner}: expected a numpy.ndarray input, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{owner}: expected a float32 or float64 input, got dtype {x.dtype}")
        pdtype = self.dtype
        if pdtype is not None and x.dtype != pdtype:
            raise TypeError(f"{owner}: input dtype {x.dtype} does not match the parameters' dtype "
                            f"{pdtype}; cast the input or call .astype({x.dtype.name}) on the "
                            "layer/model")
        self.check_input_shape(x.shape)
        if x.ndim >= 1 and x.shape[0] == 0:
            raise ValueError(f"{owner}: empty batch (shape {x.shape})")
        self.output_shape((None,) + tuple(x.shape[1:]))  # raises on bad sizes
        return np.ascontiguousarray(x)

    def forward(self, x, training: bool | None = None):
        """Compute the output; with training (default: the layer's mode) keep what backward needs."""
        x = self._validate(x)
        training = self.training if training is None else bool(training)
        variant = self.variant(x.dtype)
        y, ctx = variant.impl.forward(x, self.params, self.config, training)
        self._check_output(variant, x, y)
        self._ctx = (variant, ctx, x.shape, x.dtype) if training else None
        return y

    def __call__(self, inputs, training: bool | None = None):
        """On arrays, :meth:`forward`; on graph nodes (``cnnkit.Input``), add this layer to a
        graph and return its output node (Keras's functional style)."""
        if isinstance(inputs, np.ndarray):
            return self.forward(inputs, training)
        from .graph import apply_layer

        return apply_layer(self, inputs)

    def _check_output(self, variant, x, y):
        expected = (x.shape[0],) + tuple(self.output_shape((None,) + tuple(x.shape[1:]))[1:])
        if not isinstance(y, np.ndarray) or y.shape != expected or y.dtype != x.dtype:
            got = (f"shape {y.shape}, dtype {y.dtype}" if isinstance(y, np.ndarray)
                   else type(y).__name__)
            raise RuntimeError(f"{self.name} ({type(self).__name__}): variant {variant.name!r} "
                               f"from plugin {variant.plugin!r} returned {got}; expected shape "
                               f"{expected}, dtype {x.dtype}")

    def backward(self, dy, need_input_grad: bool = True):
        """Gradient of the loss w.r.t. the input; fills ``self.grads`` (overwriting).

        With ``need_input_grad=False`` a variant that can skip the input gradient does so and
        ``None`` is returned."""
        owner = f"{self.name} ({type(self).__name__})"
        if self._ctx is None:
            raise RuntimeError(f"{owner}: backward() needs a forward(x, training=True) first "
                               "(inference forward keeps nothing)")
        variant, ctx, in_shape, x_dtype = self._ctx
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{owner}: backward expects a numpy.ndarray, got {type(dy).__name__}")
        expected = (in_shape[0],) + tuple(self.output_shape((None,) + tuple(in_shape[1:]))[1:])
        if dy.shape != expected:
            raise ValueError(f"{owner}: gradient shape {dy.shape} does not match the output "
                             f"shape {expected}")
        if dy.dtype != x_dtype:
            dy = dy.astype(x_dtype)
        dy = np.ascontiguousarray(dy)
        if not need_input_grad and variant.skips_input_grad:
            dx, grads = variant.impl.backward(dy, ctx, need_input_grad=False)
            if dx is None:
                self._ctx = None
                self.grads = dict(grads)
                return None
        else:
            dx, grads = variant.impl.backward(dy, ctx)
        if not isinstance(dx, np.ndarray) or dx.shape != in_shape:
            raise RuntimeError(f"{owner}: variant {variant.name!r} from plugin {variant.plugin!r} "
                               f"returned an input gradient of shape "
                               f"{getattr(dx, 'shape', None)}; expected {in_shape}")
        self._ctx = None
        self.grads = dict(grads)
        return dx


def _init_array(init, shape, fan_in, fan_out, rng, dtype, owner):
    reg = get_registry()
    if callable(init):
        fn, options = init, {}
    elif isinstance(init, str):
        fn, options = reg.initializer(init), {}
    elif isinstance(init, (tuple, list)) and len(init) == 2 and isinstance(init[1], dict):
        fn, options = reg.initializer(init[0]), dict(init[1])
    else:
        raise TypeError(f"{owner}: initializer must be a registered name, (name, options) or a "
                        f"callable, got {init!r}")
    arr = np.asarray(fn(tuple(shape), fan_in=fan_in, fan_out=fan_out, rng=rng, dtype=dtype,
                        **options))
    if arr.shape != tuple(shape):
        raise ValueError(f"{owner}: initializer {init!r} returned shape {arr.shape}, expected "
                         f"{tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{owner}: initializer {init!r} produced non-finite values")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_dtype(dtype, owner):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{owner}: dtype must be float32 or float64, got {dtype}")
    return dtype


class Conv2D(Layer):
    """2-D cross-correlation over NCHW input, PyTorch's weight layout (out, in/groups, kh, kw).

    ``padding`` is an int, an (h, w) pair, ``"valid"`` (0) or ``"same"`` (output size
    ceil(input / stride); odd padding puts the extra row/column at the bottom/right, as PyTorch
    and TensorFlow do).
    """

    layer_type = "conv2d"
    FEATURES = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, weight_init="he_uniform", bias_init="zeros",
                 dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Conv2D)"
        self.in_channels = _positive_int(in_channels, "in_channels", owner)
        self.out_channels = _positive_int(out_channels, "out_channels", owner)
        self.kernel_size = _pair(kernel_size, "kernel_size", owner)
        self.stride = _pair(stride, "stride", owner)
        self.dilation = _pair(dilation, "dilation", owner)
        self.groups = _positive_int(groups, "groups", owner)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{owner}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"{owner}: padding must be 'valid', 'same', an int or a pair, "
                                 f"got {padding!r}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", owner, minimum=0)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")
        dtype = _check_dtype(dtype, owner)
        self.weight_init, self.bias_init = weight_init, bias_init
        rng = _random.generator(rng)
        kh, kw = self.kernel_size
        cin_g = self.in_channels // self.groups
        shape = (self.out_channels, cin_g, kh, kw)
        fan_in, fan_out = cin_g * kh * kw, self.out_channels // self.groups * kh * kw
        self.params["weight"] = _init_array(weight_init, shape, fan_in, fan_out, rng, dtype, owner)
        self.params["bias"] = (_init_array(bias_init, (self.out_channels,), fan_in, fan_out, rng,
                                           dtype, owner) if bias else None)
        self.config = {"stride": self.stride, "padding": (0, 0, 0, 0), "dilation": self.dilation,
                       "groups": self.groups}
        if not isinstance(self.padding, str):
            ph, pw = self.padding
            self.config["padding"] = (ph, ph, pw, pw)
        self._same_cache = None

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "bias": self.params["bias"] is not None}

    def _resolve_padding(self, h, w):
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for size, k, s, d in zip((h, w), self.kernel_size, self.stride, self.dilation):
                out = -(-size // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        return self.config["padding"]

    def features(self):
        pt, pb, pl, pr = self.config["padding"]
        return _conv_features(self, padding=any(self.config["padding"]),
                              asymmetric_padding=pt != pb or pl != pr)

    def output_shape(self, input_shape):
        owner = f"{self.name} (Conv2D)"
        n, c, h, w = _check_conv_input(self, input_shape, owner)
        pt, pb, pl, pr = self._resolve_padding(h, w)
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if h + pt + pb < eh or w + pl + pr < ew:
            raise ValueError(f"{owner}: (dilated) kernel {eh}x{ew} is larger than the padded input "
                             f"{h + pt + pb}x{w + pl + pr} (input shape {tuple(input_shape)})")
        oh = (h + pt + pb - eh) // self.stride[0] + 1
        ow = (w + pl + pr - ew) // self.stride[1] + 1
        return (n, self.out_channels, oh, ow)

    def forward(self, x, training=None):
        if isinstance(self.padding, str) and isinstance(x, np.ndarray) and x.ndim == 4:
            pads = self._resolve_padding(x.shape[2], x.shape[3])
            if pads != self.config["padding"]:
                self.config = dict(self.config, padding=pads)
                self._variant_key = None
        return super().forward(x, training)


class _Pool2D(Layer):
    FEATURES = ("stride", "padding", "ceil_mode")
    input_rank = 4

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, *, impl=None,
                 name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} ({type(self).__name__})"
        self.kernel_size = _pair(kernel_size, "kernel_size", owner)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", owner)
        self.padding = _pair(padding, "padding", owner, minimum=0)
        if self.padding[0] * 2 > self.kernel_size[0] or self.padding[1] * 2 > self.kernel_size[1]:
            raise ValueError(f"{owner}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        self.config = {"kernel_size": self.kernel_size, "stride": self.stride,
                       "padding": self.padding, "ceil_mode": self.ceil_mode}

    def get_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode}

    def features(self):
        f = []
        if self.stride != self.kernel_size:
            f.append("stride")
        if self.padding != (0, 0):
            f.append("padding")
        if self.ceil_mode:
            f.append("ceil_mode")
        return tuple(f)

    def output_shape(self, input_shape):
        owner = f"{self.name} ({type(self).__name__})"
        self.check_input_shape(input_shape)
        _check_planes(input_shape, owner)
        n, c, h, w = input_shape
        out = []
        for size, k, s, p in zip((h, w), self.kernel_size, self.stride, self.padding):
            span = size + 2 * p - k
            if span < 0:
                raise ValueError(f"{owner}: pooling window {self.kernel_size} is larger than the "
                                 f"padded input {h + 2 * self.padding[0]}x"
                                 f"{w + 2 * self.padding[1]} (input shape {tuple(input_shape)})")
            o = (-(-span // s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (o - 1) * s >= size + p:
                o -= 1
            out.append(o)
        return (n, c, out[0], out[1])


class MaxPool2D(_Pool2D):
    """Max pooling; backward routes the gradient through the recorded argmax."""

    layer_type = "maxpool2d"


class AvgPool2D(_Pool2D):
    """Average pooling (``count_include_pad`` as in PyTorch)."""

    layer_type = "avgpool2d"
    FEATURES = _Pool2D.FEATURES + ("count_include_pad",)

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, *, impl=None, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, impl=impl, name=name)
        self.count_include_pad = bool(count_include_pad)
        self.config["count_include_pad"] = self.count_include_pad

    def get_config(self):
        return dict(super().get_config(), count_include_pad=self.count_include_pad)

    def features(self):
        f = super().features()
        return f + (("count_include_pad",) if not self.count_include_pad else ())


class _Elementwise(Layer):
    input_rank = None

    def check_input_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"{self.name} ({type(self).__name__}): expected at least a 1-D input "
                             f"with a batch axis, got shape {tuple(shape)}")


class ReLU(_Elementwise):
    layer_type = "relu"


class Sigmoid(_Elementwise):
    layer_type = "sigmoid"


class Tanh(_Elementwise):
    layer_type = "tanh"


class Flatten(Layer):
    """Flatten every axis after the batch axis; no variants (a reshape)."""

    layer_type = "flatten"

    def check_input_shape(self, shape):
        if len(shape) < 2:
            raise ValueError(f"{self.name} (Flatten): expected an input with a batch axis and at "
                             f"least one more, got shape {tuple(shape)}")

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        return (input_shape[0], int(math.prod(input_shape[1:])))

    def variant(self, dtype=np.float32):
        return None

    def forward(self, x, training=None):
        x = self._validate(x)
        training = self.training if training is None else bool(training)
        self._ctx = (None, None, x.shape, x.dtype) if training else None
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_input_grad=True):
        if self._ctx is None:
            raise RuntimeError(f"{self.name} (Flatten): backward() needs a forward(x, "
                               "training=True) first")
        in_shape, x_dtype = self._ctx[2], self._ctx[3]
        if not isinstance(dy, np.ndarray) or dy.shape != (in_shape[0], math.prod(in_shape[1:])):
            raise ValueError(f"{self.name} (Flatten): gradient shape "
                             f"{getattr(dy, 'shape', None)} does not match the output shape "
                             f"{(in_shape[0], math.prod(in_shape[1:]))}")
        self._ctx = None
        self.grads = {}
        return dy.astype(x_dtype, copy=False).reshape(in_shape)


class Dense(Layer):
    """Fully connected layer: y = x @ W.T + b with W of shape (out_features, in_features)."""

    layer_type = "dense"
    FEATURES = ("bias",)
    input_rank = 2

    def __init__(self, in_features, out_features, bias=True, *, weight_init="he_uniform",
                 bias_init="zeros", dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Dense)"
        self.in_features = _positive_int(in_features, "in_features", owner)
        self.out_features = _positive_int(out_features, "out_features", owner)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")
        dtype = _check_dtype(dtype, owner)
        self.weight_init, self.bias_init = weight_init, bias_init
        rng = _random.generator(rng)
        shape = (self.out_features, self.in_features)
        self.params["weight"] = _init_array(weight_init, shape, self.in_features,
                                            self.out_features, rng, dtype, owner)
        self.params["bias"] = (_init_array(bias_init, (self.out_features,), self.in_features,
                                           self.out_features, rng, dtype, owner) if bias else None)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.params["bias"] is not None}

    def features(self):
        return ("bias",) if self.params["bias"] is not None else ()

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        if input_shape[1] != self.in_features:
            raise ValueError(f"{self.name} (Dense): expected {self.in_features} input features, "
                             f"got shape {tuple(input_shape)}")
        return (input_shape[0], self.out_features)


class Add(Layer):
    """Element-wise sum of two or more inputs of the same shape (residual connections)."""

    layer_type = "add"
    is_merge = True

    def output_shape(self, input_shapes):
        if not isinstance(input_shapes, list) or len(input_shapes) < 2:
            raise ValueError(f"{self.name} (Add): expects a list of at least two inputs")
        first = input_shapes[0]
        for s in input_shapes[1:]:
            if tuple(s) != tuple(first):
                raise ValueError(f"{self.name} (Add): all inputs must have the same shape, got "
                                 + " and ".join(_fmt_shape(x) for x in input_shapes))
        return tuple(first)

    def variant(self, dtype=np.float32):
        return None

    def forward(self, xs, training=None):
        owner = f"{self.name} (Add)"
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(f"{owner}: expects a list of at least two arrays")
        for x in xs:
            if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{owner}: inputs must be float32/float64 numpy arrays")
            if x.dtype != xs[0].dtype:
                raise TypeError(f"{owner}: inputs have different dtypes {xs[0].dtype} and "
                                f"{x.dtype}")
        self.output_shape([x.shape for x in xs])
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        training = self.training if training is None else bool(training)
        self._ctx = (len(xs), out.shape, out.dtype) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._ctx is None:
            raise RuntimeError(f"{self.name} (Add): backward() needs a forward(x, training=True) "
                               "first")
        n, shape, dtype = self._ctx
        if not isinstance(dy, np.ndarray) or dy.shape != shape:
            raise ValueError(f"{self.name} (Add): gradient shape {getattr(dy, 'shape', None)} does "
                             f"not match the output shape {shape}")
        self._ctx = None
        self.grads = {}
        return [dy.astype(dtype, copy=False)] * n


def _fmt_shape(shape):
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"


# ---------------------------------------------------------------------------------------------
# helpers of the layers below
# ---------------------------------------------------------------------------------------------
def _real(value, what, owner, *, low=None, low_open=False, high=None, high_open=False):
    """A finite float within the given bounds, or a ValueError naming the layer."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {what} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        rule = " and ".join(r for r in (lo, hi) if r) or "finite"
        raise ValueError(f"{owner}: {what} must be {rule}, got {value!r}")
    return v


def _axis(axis, ndim, owner):
    """Resolve a (possibly negative) axis for an input of rank ``ndim``; never the batch axis."""
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a < ndim:
        raise ValueError(f"{owner}: axis {axis} is out of range for a {ndim}-D input")
    if a == 0:
        raise ValueError(f"{owner}: axis {axis} is the batch axis of a {ndim}-D input; choose a "
                         "feature axis (1 for channels)")
    return a


# ---------------------------------------------------------------------------------------------
# activations with hyper-parameters
# ---------------------------------------------------------------------------------------------
class LeakyReLU(_Elementwise):
    """x for x > 0, ``negative_slope * x`` otherwise (the gradient at 0 is the slope, as in
    PyTorch)."""

    layer_type = "leakyrelu"

    def __init__(self, negative_slope=0.01, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.negative_slope = _real(negative_slope, "negative_slope", f"{self.name} (LeakyReLU)")
        self.config = {"negative_slope": self.negative_slope}

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class ELU(_Elementwise):
    """x for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""

    layer_type = "elu"

    def __init__(self, alpha=1.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.alpha = _real(alpha, "alpha", f"{self.name} (ELU)")
        self.config = {"alpha": self.alpha}

    def get_config(self):
        return {"alpha": self.alpha}


class GELU(_Elementwise):
    """x * Phi(x) with the exact normal CDF (``approximate="none"``), or PyTorch's tanh form
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with ``approximate="tanh"``."""

    layer_type = "gelu"
    FEATURES = ("approximate",)

    def __init__(self, approximate="none", *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"{self.name} (GELU): approximate must be 'none' or 'tanh', got "
                             f"{approximate!r}")
        self.approximate = approximate
        self.config = {"approximate": approximate}

    def get_config(self):
        return {"approximate": self.approximate}

    def features(self):
        return ("approximate",) if self.approximate == "tanh" else ()


class ScaledTanh(_Elementwise):
    """``amplitude * tanh(slope * x)``; the defaults 1.7159 and 2/3 are LeCun et al. (1998)'s
    LeNet-5 squashing function (f(1) = 1, f(-1) = -1, largest second derivative at +-1)."""

    layer_type = "scaledtanh"

    def __init__(self, amplitude=1.7159, slope=2.0 / 3.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ScaledTanh)"
        self.amplitude = _real(amplitude, "amplitude", owner)
        self.slope = _real(slope, "slope", owner)
        self.config = {"amplitude": self.amplitude, "slope": self.slope}

    def get_config(self):
        return {"amplitude": self.amplitude, "slope": self.slope}


class _SoftmaxBase(_Elementwise):
    def __init__(self, axis=1, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"{self.name} ({type(self).__name__}): axis must be an int, got "
                            f"{axis!r}")
        self.axis = int(axis)
        self.config = {"axis": self.axis}

    def get_config(self):
        return {"axis": self.axis}

    def check_input_shape(self, shape):
        super().check_input_shape(shape)
        _axis(self.axis, len(shape), f"{self.name} ({type(self).__name__})")


class Softmax(_SoftmaxBase):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1: classes or channels), max-shifted."""

    layer_type = "softmax"


class LogSoftmax(_SoftmaxBase):
    """x - logsumexp(x) along ``axis`` (default 1), max-shifted."""

    layer_type = "logsoftmax"


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------
class Dropout(_Elementwise):
    """Inverted dropout: in training each element is zeroed with probability ``p`` and the
    survivors are scaled by 1 / (1 - p); in inference the input is returned unchanged.

    The mask is a pure function of ``config["seed"]`` and the element index (a counter-based
    hash, identical in every built-in variant), and each training forward draws a fresh seed
    from the layer's Generator (``rng=``: None for the global one that ``cnnkit.seed`` sets, an
    int seed or a ``numpy.random.Generator``), so a seeded layer repeats its masks exactly.
    """

    layer_type = "dropout"

    def __init__(self, p=0.5, *, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.p = _real(p, "p", f"{self.name} (Dropout)", low=0.0, high=1.0, high_open=True)
        self._rng = _random.generator(rng)
        self.config = {"p": self.p, "seed": self._draw_seed()}

    def _draw_seed(self):
        return int(self._rng.integers(0, 2**63 - 1))

    def get_config(self):
        return {"p": self.p}

    def forward(self, x, training=None):
        training = self.training if training is None else bool(training)
        if not training:
            x = self._validate(x)
            self._ctx = None
            return x
        self.config = dict(self.config, seed=self._draw_seed())
        return super().forward(x, True)


# ---------------------------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------------------------
class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1.

    Training: normalise with the batch mean and biased variance, and update the running
    statistics in ``self.buffers`` as PyTorch does, ``running = (1 - momentum) * running +
    momentum * batch`` with the *unbiased* batch variance (``momentum=None``: cumulative average
    over ``num_batches_tracked``).  Inference: normalise with the running statistics (or the
    batch's when ``track_running_stats=False``).

    The training normalisation is computed by the layer's variants (``forward(x, params,
    config, need_backward)`` with batch statistics, ``config = {"eps": eps}``).  A variant may
    also provide ``statistics(ctx) -> (mean, biased_var)`` so the layer reuses its batch
    statistics for the running averages; without it the layer computes them with NumPy.  The
    inference path with running statistics is a per-channel affine map done here with NumPy.
    ``weight`` (gamma) starts at 1, ``bias`` (beta) at 0; both are ``None`` with
    ``affine=False``.
    """

    _rank_text = ""
    #: excluded from ``cnnkit.losses.L2Penalty`` by default
    is_normalization = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} ({type(self).__name__})"
        self.num_features = _positive_int(num_features, "num_features", owner)
        self.eps = _real(eps, "eps", owner, low=0.0, low_open=True)
        self.momentum = None if momentum is None else _real(momentum, "momentum", owner,
                                                            low=0.0, high=1.0)
        for flag, what in ((affine, "affine"), (track_running_stats, "track_running_stats")):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{owner}: {what} must be True or False, got {flag!r}")
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dtype = _check_dtype(dtype, owner)
        c = self.num_features
        self.params["weight"] = np.ones(c, dtype=dtype) if self.affine else None
        self.params["bias"] = np.zeros(c, dtype=dtype) if self.affine else None
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


# ---------------------------------------------------------------------------------------------
# pooling-like layers
# ---------------------------------------------------------------------------------------------
class GlobalAvgPool2D(Layer):
    """Mean over each channel's plane: (N, C, H, W) -> (N, C) (``adaptive_avg_pool2d(x, 1)``
    flattened)."""

    layer_type = "globalavgpool2d"
    input_rank = 4

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        _check_planes(input_shape, f"{self.name} (GlobalAvgPool2D)")
        return (input_shape[0], input_shape[1])


class Subsampling(Layer):
    """LeNet-5's trainable subsampling (LeCun et al., 1998): per channel, the sum (``mode="sum"``)
    or mean (``mode="average"``) of non-overlapping ``kernel_size`` windows (stride = kernel,
    rows/columns that do not fill a window are dropped), times a trainable coefficient
    ``weight`` (C,), plus a trainable ``bias`` (C,).

    Default initialisation: coefficient 1, bias 0, so the layer starts as plain sum or average
    pooling and training moves it from there.  The 1998 paper instead drew every trainable
    weight uniformly in +-2.4 / fan_in (fan_in = kh * kw here); pass
    ``weight_init=("uniform", {"a": -0.6, "b": 0.6})`` for that with 2x2 windows.
    """

    layer_type = "subsampling"
    FEATURES = ("bias",)
    input_rank = 4

    def __init__(self, channels, kernel_size=2, mode="sum", bias=True, *,
                 weight_init=("constant", {"value": 1.0}), bias_init="zeros", dtype=np.float32,
                 rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Subsampling)"
        self.channels = _positive_int(channels, "channels", owner)
        self.kernel_size = _pair(kernel_size, "kernel_size", owner)
        if mode not in ("sum", "average"):
            raise ValueError(f"{owner}: mode must be 'sum' or 'average', got {mode!r}")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")
        self.mode = mode
        dtype = _check_dtype(dtype, owner)
        self.weight_init, self.bias_init = weight_init, bias_init
        rng = _random.generator(rng)
        fan = self.kernel_size[0] * self.kernel_size[1]
        c = self.channels
        self.params["weight"] = _init_array(weight_init, (c,), fan, fan, rng, dtype, owner)
        self.params["bias"] = (_init_array(bias_init, (c,), fan, fan, rng, dtype, owner)
                               if bias else None)
        self.config = {"kernel_size": self.kernel_size, "mode": mode}

    def get_config(self):
        return {"channels": self.channels, "kernel_size": self.kernel_size, "mode": self.mode,
                "bias": self.params["bias"] is not None}

    def features(self):
        return ("bias",) if self.params["bias"] is not None else ()

    def output_shape(self, input_shape):
        owner = f"{self.name} (Subsampling)"
        self.check_input_shape(input_shape)
        n, c, h, w = input_shape
        if c != self.channels:
            raise ValueError(f"{owner}: expected {self.channels} channels, got shape "
                             f"{tuple(input_shape)}")
        kh, kw = self.kernel_size
        if h < kh or w < kw:
            raise ValueError(f"{owner}: window {self.kernel_size} is larger than the input "
                             f"(shape {tuple(input_shape)})")
        return (n, c, h // kh, w // kw)


class ZeroPad2D(Layer):
    """Pad the last two axes with zeros.  ``padding``: an int (all sides), an (h, w) pair (top
    and bottom h, left and right w) or PyTorch's (left, right, top, bottom)."""

    layer_type = "zeropad2d"
    input_rank = 4

    def __init__(self, padding, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ZeroPad2D)"
        ok_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa
        if ok_int(padding):
            lrtb = (int(padding),) * 4
        elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(map(ok_int, padding)):
            lrtb = (int(padding[1]), int(padding[1]), int(padding[0]), int(padding[0]))
        elif isinstance(padding, (tuple, list)) and len(padding) == 4 and all(map(ok_int, padding)):
            lrtb = tuple(int(v) for v in padding)
        else:
            raise TypeError(f"{owner}: padding must be an int, an (h, w) pair or (left, right, "
                            f"top, bottom), got {padding!r}")
        if min(lrtb) < 0:
            raise ValueError(f"{owner}: padding must be >= 0, got {padding!r}")
        self.padding = lrtb
        left, right, top, bottom = lrtb
        self.config = {"padding": (top, bottom, left, right)}

    def get_config(self):
        return {"padding": self.padding}

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        n, c, h, w = input_shape
        left, right, top, bottom = self.padding
        return (n, c, h + top + bottom, w + left + right)


# ---------------------------------------------------------------------------------------------
# transposed convolution
# ---------------------------------------------------------------------------------------------
class ConvTranspose2D(Layer):
    """Transposed 2-D convolution (the gradient of Conv2D w.r.t. its input), PyTorch's
    ``conv_transpose2d``: weight (in, out/groups, kh, kw), output size
    ``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.

    The default initialisation follows PyTorch's fan convention for transposed convolutions
    (fan_in = out/groups * kh * kw, from the weight's second axis).
    """

    layer_type = "convtranspose2d"
    FEATURES = ("stride", "padding", "output_padding", "dilation", "groups", "bias")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, weight_init="he_uniform",
                 bias_init="zeros", dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ConvTranspose2D)"
        self.in_channels = _positive_int(in_channels, "in_channels", owner)
        self.out_channels = _positive_int(out_channels, "out_channels", owner)
        self.kernel_size = _pair(kernel_size, "kernel_size", owner)
        self.stride = _pair(stride, "stride", owner)
        self.padding = _pair(padding, "padding", owner, minimum=0)
        self.output_padding = _pair(output_padding, "output_padding", owner, minimum=0)
        self.dilation = _pair(dilation, "dilation", owner)
        self.groups = _positive_int(groups, "groups", owner)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{owner}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"{owner}: output_padding {self.output_padding} must be smaller "
                                 f"than stride {self.stride} or dilation {self.dilation}")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")
        dtype = _check_dtype(dtype, owner)
        self.weight_init, self.bias_init = weight_init, bias_init
        rng = _random.generator(rng)
        kh, kw = self.kernel_size
        cout_g = self.out_channels // self.groups
        shape = (self.in_channels, cout_g, kh, kw)
        fan_in, fan_out = cout_g * kh * kw, self.in_channels // self.groups * kh * kw
        self.params["weight"] = _init_array(weight_init, shape, fan_in, fan_out, rng, dtype, owner)
        self.params["bias"] = (_init_array(bias_init, (self.out_channels,), fan_in, fan_out, rng,
                                           dtype, owner) if bias else None)
        self.config = {"stride": self.stride, "padding": self.padding,
                       "output_padding": self.output_padding, "dilation": self.dilation,
                       "groups": self.groups}

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "output_padding": self.output_padding, "groups": self.groups,
                "bias": self.params["bias"] is not None, "dilation": self.dilation}

    def features(self):
        return _conv_features(self, padding=self.padding != (0, 0),
                              output_padding=self.output_padding != (0, 0))

    def output_shape(self, input_shape):
        owner = f"{self.name} (ConvTranspose2D)"
        n, c, h, w = _check_conv_input(self, input_shape, owner)
        out = []
        for size, k, s, p, op, d in zip((h, w), self.kernel_size, self.stride, self.padding,
                                        self.output_padding, self.dilation):
            out.append((size - 1) * s - 2 * p + d * (k - 1) + op + 1)
        if min(out) < 1:
            raise ValueError(f"{owner}: padding {self.padding} leaves no output for input shape "
                             f"{tuple(input_shape)} (output would be {out[0]}x{out[1]})")
        return (n, self.out_channels, out[0], out[1])


# ---------------------------------------------------------------------------------------------
# concatenation
# ---------------------------------------------------------------------------------------------
class Concat(Layer):
    """Concatenate two or more inputs along ``axis`` (default 1, channels); every other axis
    must agree.  A merge layer like :class:`Add`; no variants (a copy)."""

    layer_type = "concat"
    is_merge = True

    def __init__(self, axis=1, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"{self.name} (Concat): axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.config = {"axis": self.axis}

    def get_config(self):
        return {"axis": self.axis}

    def output_shape(self, input_shapes):
        owner = f"{self.name} (Concat)"
        if not isinstance(input_shapes, list) or len(input_shapes) < 2:
            raise ValueError(f"{owner}: expects a list of at least two inputs")
        shapes = [tuple(s) for s in input_shapes]
        ndim = len(shapes[0])
        if any(len(s) != ndim for s in shapes):
            raise ValueError(f"{owner}: all inputs must have the same rank, got "
                             + " and ".join(_fmt_shape(s) for s in shapes))
        a = _axis(self.axis, ndim, owner)
        for s in shapes[1:]:
            if any(s[i] != shapes[0][i] for i in range(1, ndim) if i != a):
                raise ValueError(f"{owner}: inputs must match on every axis but {a}, got "
                                 + " and ".join(_fmt_shape(x) for x in shapes))
        total = sum(s[a] for s in shapes)
        return shapes[0][:a] + (total,) + shapes[0][a + 1:]

    def variant(self, dtype=np.float32):
        return None

    def forward(self, xs, training=None):
        owner = f"{self.name} (Concat)"
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(f"{owner}: expects a list of at least two arrays")
        for x in xs:
            if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{owner}: inputs must be float32/float64 numpy arrays")
            if x.dtype != xs[0].dtype:
                raise TypeError(f"{owner}: inputs have different dtypes {xs[0].dtype} and "
                                f"{x.dtype}")
        self.output_shape([x.shape for x in xs])
        if len({x.shape[0] for x in xs}) != 1:
            raise ValueError(f"{owner}: inputs have different batch sizes: "
                             + " and ".join(str(x.shape) for x in xs))
        a = _axis(self.axis, xs[0].ndim, owner)
        out = np.concatenate(xs, axis=a)
        training = self.training if training is None else bool(training)
        self._ctx = (a, [x.shape[a] for x in xs], out.shape, out.dtype) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        owner = f"{self.name} (Concat)"
        if self._ctx is None:
            raise RuntimeError(f"{owner}: backward() needs a forward(x, training=True) first")
        a, sizes, shape, dtype = self._ctx
        if not isinstance(dy, np.ndarray) or dy.shape != shape:
            raise ValueError(f"{owner}: gradient shape {getattr(dy, 'shape', None)} does not "
                             f"match the output shape {shape}")
        self._ctx = None
        self.grads = {}
        return [np.ascontiguousarray(g, dtype=dtype)
                for g in np.split(dy, np.cumsum(sizes)[:-1], axis=a)]


BUILTIN_LAYERS = (Conv2D, MaxPool2D, AvgPool2D, ReLU, Sigmoid, Tanh, Flatten, Dense, Add,
                  LeakyReLU, ELU, GELU, ScaledTanh, Softmax, LogSoftmax, Dropout, BatchNorm2D,
                  BatchNorm1D, GlobalAvgPool2D, Subsampling, ZeroPad2D, ConvTranspose2D, Concat)
