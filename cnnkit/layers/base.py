"""The base class every layer derives from, and the helpers several layer families share.

A layer validates its inputs, resolves its configuration against the input shape (once per
shape), asks the plugin registry for the variant that computes it, and keeps what its
backward pass needs.  The maths lives in the variants (``cnnkit.builtin`` for the built-ins).
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .. import _random
from .. import autotuning as _autotune
from ..plugins import get_registry

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_counters: dict[str, itertools.count] = {}

#: resolutions kept per layer; a layer fed many input sizes starts over instead of growing
_MAX_RESOLUTIONS = 16


class Resolution:
    """What a layer resolved for one per-sample input shape.

    ``config``: the configuration its variants receive (``layer.config`` with whatever depends
    on the input size filled in, such as Conv2D's ``padding="same"``); ``output_shape``: the
    per-sample output shape (no batch entry; ``None`` when resolved without a shape);
    ``features``: the non-default features that configuration uses (checked against the
    variants' capabilities).
    """

    __slots__ = ("config", "output_shape", "features")

    def __init__(self, config: dict, output_shape: tuple | None, features: tuple):
        self.config, self.output_shape, self.features = config, output_shape, features

    def __repr__(self):
        return (f"Resolution(config={self.config!r}, output_shape={self.output_shape!r}, "
                f"features={self.features!r})")


class Layer:
    """Base class of every layer.

    Subclasses set ``layer_type`` (the registry key of their variants), fill ``self.config``
    (the hyper-parameters passed to the variants) and ``self.params``, and implement
    :meth:`output_shape`.  ``FEATURES`` lists the non-default features a request may use;
    :meth:`features` says which ones this layer's configuration uses.  A layer whose variant
    configuration depends on the input size overrides :meth:`_resolve`.
    """

    layer_type: str = ""
    FEATURES: tuple = ()
    #: input rank (including the batch axis) the layer accepts; None = any rank >= 1
    input_rank: int | None = None
    #: merge layers (Add, Concat) take a list of inputs and return a list of input gradients
    is_merge = False
    #: the plugin registry variants are selected from; None: the process registry
    #: (``cnnkit.get_registry()``).  The conformance kit points a layer at the registry it checks.
    registry = None

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
        self.config = {}
        self.params: dict[str, np.ndarray | None] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self._ctx = None
        self._node = None  # set when the layer is placed in a graph

    # ----------------------------------------------------------------- description
    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this layer (for summaries and configs)."""
        return {}

    def features(self) -> tuple:
        """Non-default features this layer's configuration uses (checked against capabilities).
        Where they depend on the input size, ``resolution(input_shape).features`` has them."""
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

    # ----------------------------------------------------------------- resolution
    @property
    def config(self) -> dict[str, Any]:
        """The hyper-parameters passed to the variants, as constructed (see :meth:`resolve`
        for the configuration at a given input shape).  Assigning a new dict forgets every
        resolution made from the old one."""
        return self._config

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        self._config = value
        self._forget_resolutions()

    def _forget_resolutions(self):
        self._resolutions: dict[tuple | None, Resolution] = {}
        # {(input shape, dtype): (resolution, parameter signature)} of inputs that passed
        # _prepare's checks, so a repeated call skips them (see _prepare)
        self._checked: dict[tuple, tuple] = {}
        self._last_resolution = None
        self._variant = None
        self._variant_key = None
        self._last_shape = None

    def resolution(self, input_shape: tuple) -> Resolution:
        """This layer resolved for inputs of ``input_shape`` (whose batch entry may be None):
        variant configuration, per-sample output shape and features, computed once per
        per-sample shape.  Raises, as :meth:`output_shape` does, for an input the layer cannot
        take."""
        key = tuple(input_shape[1:])
        res = self._resolutions.get(key)
        if res is None:
            shape = (None,) + key
            out = self.output_shape(shape)
            config, features = self._resolve(shape)
            res = Resolution(config, tuple(out[1:]), tuple(features))
            if len(self._resolutions) >= _MAX_RESOLUTIONS:
                self._resolutions.clear()
            self._resolutions[key] = res
        return res

    def resolve(self, input_shape: tuple) -> dict:
        """The configuration the variants receive for inputs of ``input_shape`` (whose batch
        entry may be None): ``self.config`` with whatever depends on the input size resolved
        (Conv2D's ``padding="same"``).  Raises, as :meth:`output_shape` does, for an input the
        layer cannot take."""
        return self.resolution(input_shape).config

    def _resolve(self, input_shape: tuple) -> tuple[dict, tuple]:
        """(variant configuration, features) for a valid ``input_shape``; layers whose
        configuration depends on the input size override this."""
        return self.config, tuple(self.features())

    def _unshaped_resolution(self) -> Resolution:
        res = self._resolutions.get(None)
        if res is None:
            res = self._resolutions[None] = Resolution(self.config, None, tuple(self.features()))
        return res

    # ----------------------------------------------------------------- variants
    def variant(self, dtype=np.float32, input_shape: tuple | None = None):
        """The variant that would compute this layer for inputs of ``dtype`` right now, for
        ``input_shape`` if given, otherwise for the input shape it last computed (or, before
        any, for its configuration as constructed)."""
        if input_shape is not None:
            res = self.resolution(input_shape)
        else:
            res = self._last_resolution or self._unshaped_resolution()
            input_shape = self._last_shape if res is self._last_resolution else None
        return self._select(np.dtype(dtype), res, input_shape)

    def _select(self, dtype, res: Resolution, shape: tuple | None = None):
        # The explicit choice (impl=, cnnkit.use, CNNKIT_IMPL) and the autotuning state are
        # read on every call, so a change of any of them takes effect at once; the selection
        # itself is cached.  ``shape`` (batch first) lets the autotuning cache answer.
        reg = get_registry() if self.registry is None else self.registry
        key = (dtype, reg.explicit_choice(self.layer_type, self.impl), res,
               None if shape is None else shape[0], _autotune.token())
        if self._variant_key != key:
            if shape is not None:
                self._last_shape = tuple(shape)
                if _autotune.tune_on_first_call(self, reg, dtype, res, self._last_shape):
                    key = key[:-1] + (_autotune.token(),)
            self._variant = reg.select(self.layer_type, dtype=dtype, features=res.features,
                                       config=res.config, impl=self.impl,
                                       owner=f"{self.name} ({type(self).__name__})", shape=shape)
            self._variant_key = key
        return self._variant

    # ----------------------------------------------------------------- modes and dtypes
    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    #: ``False`` freezes the layer's parameters for fine-tuning: every optimizer leaves them
    #: as they are (weight decay included) and L2 penalties skip them; gradients still flow
    #: through the layer to the layers before it.
    _trainable = True

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{self.name}: trainable must be True or False, got {value!r}")
        self._trainable = bool(value)

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
        self._forget_resolutions()
        return self

    # ----------------------------------------------------------------- compute
    def _param_signature(self):
        return tuple(None if p is None else (p.shape, p.dtype) for p in self.params.values())

    def _prepare(self, x):
        """Validate an input array; return it C-contiguous with the layer's resolution for
        its shape.

        The checks run once per (input shape, dtype, parameter shapes and dtypes): a repeated
        call finds them passed.  A different input, or a parameter replaced by an array of
        another shape or dtype, is a new key and checked again (what the variants check of
        the parameters themselves, and the output's shape, are checked on every call)."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name} ({type(self).__name__}): expected a numpy.ndarray "
                            f"input, got {type(x).__name__}")
        key = (x.shape, x.dtype)
        signature = self._param_signature()
        hit = self._checked.get(key)
        if hit is not None and hit[1] == signature:
            res = hit[0]
        else:
            res = self._check_input(x)
            if len(self._checked) >= _MAX_RESOLUTIONS:
                self._checked.clear()
            self._checked[key] = (res, signature)
        self._last_resolution = res
        return np.ascontiguousarray(x), res

    def _check_input(self, x):
        """Every check of an input array; returns the resolution for its shape."""
        self._check_params()
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.name} ({type(self).__name__}): expected a float32 or float64 "
                            f"input, got dtype {x.dtype}")
        pdtype = self.dtype
        if pdtype is not None and x.dtype != pdtype:
            raise TypeError(f"{self.name} ({type(self).__name__}): input dtype {x.dtype} does not "
                            f"match the parameters' dtype {pdtype}; cast the input or call "
                            f".astype({x.dtype.name}) on the layer/model")
        shape = x.shape
        self.check_input_shape(shape)
        if shape and shape[0] == 0:
            raise ValueError(f"{self.name} ({type(self).__name__}): empty batch (shape {shape})")
        return self.resolution(shape)

    #: {key: shape or None} the configuration gives the parameters (None: must be None, as a
    #: bias of bias=False); filled by the layers that hold parameters
    _param_shapes: dict = {}

    def _check_params(self):
        """Parameters replaced after construction must still fit the configuration."""
        owner = f"{self.name} ({type(self).__name__})"
        for key, expected in self._param_shapes.items():
            p = self.params.get(key)
            if p is None:
                if expected is not None:
                    raise ValueError(f"{owner}: parameter {key!r} is missing (None); its "
                                     f"configuration needs shape {expected}")
                continue
            if expected is None:
                raise ValueError(f"{owner}: parameter {key!r} was assigned, but the layer was "
                                 f"built without it ({key}=False); rebuild the layer instead")
            if not isinstance(p, np.ndarray) or p.dtype not in FLOAT_DTYPES:
                got = f"{p.dtype}" if isinstance(p, np.ndarray) else type(p).__name__
                raise TypeError(f"{owner}: parameter {key!r} must be a float32 or float64 "
                                f"numpy array, got {got}")
            if p.shape != expected:
                raise ValueError(f"{owner}: parameter {key!r} has shape {p.shape}, but the "
                                 f"layer's configuration gives {expected}")

    def _validate(self, x):
        """Validate an input array and return it C-contiguous."""
        return self._prepare(x)[0]

    def forward(self, x, training: bool | None = None):
        """Compute the output; with training (default: the layer's mode) keep what backward needs."""
        x, res = self._prepare(x)
        training = self.training if training is None else bool(training)
        return self._compute(x, res, res.config, training)

    def _compute(self, x, res: Resolution, config: dict, training: bool):
        """Run the selected variant on a prepared input; check and keep what it returns."""
        variant = self._select(x.dtype, res, x.shape)
        y, ctx = variant.impl.forward(x, self.params, config, training)
        expected = x.shape[:1] + res.output_shape
        if not isinstance(y, np.ndarray) or y.shape != expected or y.dtype != x.dtype:
            got = (f"shape {y.shape}, dtype {y.dtype}" if isinstance(y, np.ndarray)
                   else type(y).__name__)
            raise RuntimeError(f"{self.name} ({type(self).__name__}): variant {variant.name!r} "
                               f"from plugin {variant.plugin!r} returned {got}; expected shape "
                               f"{expected}, dtype {x.dtype}")
        self._ctx = (variant, ctx, x.shape, x.dtype, res) if training else None
        return y

    def __call__(self, inputs, training: bool | None = None):
        """On arrays, :meth:`forward`; on graph nodes (``cnnkit.Input``), add this layer to a
        graph and return its output node (Keras's functional style)."""
        if isinstance(inputs, np.ndarray):
            return self.forward(inputs, training)
        from ..graph import apply_layer  # the graph imports the layers, not the reverse

        return apply_layer(self, inputs)

    def backward(self, dy, need_input_grad: bool = True):
        """Gradient of the loss w.r.t. the input; fills ``self.grads`` (overwriting).

        With ``need_input_grad=False`` a variant that can skip the input gradient does so and
        ``None`` is returned."""
        owner = f"{self.name} ({type(self).__name__})"
        if self._ctx is None:
            raise RuntimeError(f"{owner}: backward() needs a forward(x, training=True) first "
                               "(inference forward keeps nothing)")
        variant, ctx, in_shape, x_dtype, res = self._ctx
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{owner}: backward expects a numpy.ndarray, got {type(dy).__name__}")
        expected = in_shape[:1] + res.output_shape
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


class _Elementwise(Layer):
    """A layer whose output has its input's shape (any rank with a batch axis)."""

    input_rank = None

    def check_input_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"{self.name} ({type(self).__name__}): expected at least a 1-D input "
                             f"with a batch axis, got shape {tuple(shape)}")


# ---------------------------------------------------------------------------------------------
# helpers shared by several families
# ---------------------------------------------------------------------------------------------
def _init_array(init, shape, fan_in, fan_out, rng, dtype, owner):
    """A parameter array drawn by ``init``: a registered name, (name, options) or a callable."""
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


def _init_weight_and_bias(layer, weight_shape, bias_shape, fan_in, fan_out, *, bias,
                          weight_init, bias_init, dtype, rng, owner):
    """Check ``bias`` and ``dtype``, then fill ``layer.params`` with a weight and an optional
    bias drawn from one generator, weight first (a seeded ``rng`` draws the same values in the
    same order for every layer that uses this)."""
    _check_bias_flag(bias, owner)
    dtype = _check_dtype(dtype, owner)
    layer.weight_init, layer.bias_init = weight_init, bias_init
    # kept for initializers that draw again once data is there (cnnkit.init.initialize_from_data)
    layer.init_fans = (fan_in, fan_out)
    rng = _random.generator(rng)
    layer.params["weight"] = _init_array(weight_init, weight_shape, fan_in, fan_out, rng, dtype,
                                         owner)
    layer.params["bias"] = (_init_array(bias_init, bias_shape, fan_in, fan_out, rng, dtype, owner)
                            if bias else None)
    layer._param_shapes = {"weight": tuple(weight_shape),
                           "bias": tuple(bias_shape) if bias else None}


def _check_dtype(dtype, owner):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{owner}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_bias_flag(bias, owner):
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"{owner}: bias must be True or False, got {bias!r}")


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


def _axis(axis, ndim, owner):
    """Resolve a (possibly negative) axis for an input of rank ``ndim``; never the batch axis."""
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a < ndim:
        raise ValueError(f"{owner}: axis {axis} is out of range for a {ndim}-D input")
    if a == 0:
        raise ValueError(f"{owner}: axis {axis} is the batch axis of a {ndim}-D input; choose a "
                         "feature axis (1 for channels)")
    return a
