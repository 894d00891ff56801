"""Weight initializers.

Each is registered as a plugin (``cnnkit.builtin.initializers``) and picked per layer by name or
as ``(name, options)``::

    Conv2D(3, 16, 5, weight_init="orthogonal")
    Conv2D(3, 16, 5, weight_init=("he_normal", {"mode": "fan_out"}))
    Dense(10, 5, bias_init=("constant", {"value": 0.1}))

Signature: ``fn(shape, *, fan_in, fan_out, rng, dtype, **options) -> numpy.ndarray``; ``fan_in``
and ``fan_out`` follow PyTorch (conv weight (out, in/groups, kh, kw): ``in/groups*kh*kw`` and
``out*kh*kw``).  Values are drawn in float64 with the NumPy generator ``rng`` and cast to
``dtype``.

==================================  =========================================================
name                                distribution (``torch.nn.init`` equivalent)
==================================  =========================================================
``zeros``                           0
``constant(value)``                 ``value`` (``constant_``)
``uniform(a=0, b=1)``               U(a, b) (``uniform_``)
``normal(mean=0, std=1)``           N(mean, std²) (``normal_``)
``xavier_uniform(gain=1)``          U(±gain·sqrt(6/(fan_in+fan_out))); alias ``glorot_uniform``
``xavier_normal(gain=1)``           N(0, gain²·2/(fan_in+fan_out)); alias ``glorot_normal``
``he_uniform(mode, nonlinearity,    U(±gain·sqrt(3/fan)); alias ``kaiming_uniform``
a)``
``he_normal(mode, nonlinearity,     N(0, gain²/fan); alias ``kaiming_normal``
a)``
``lecun_uniform``                   U(±sqrt(3/fan_in)) (variance 1/fan_in)
``lecun_normal``                    N(0, 1/fan_in) (not truncated)
``orthogonal(gain=1)``              (semi-)orthogonal matrix over (shape[0], rest) (``orthogonal_``)
``gabor(...)``                      deterministic bank of Gabor filters, see ``gabor``
``kmeans_patches(...)``             k-means centroids of normalised image patches (needs
                                    data: see below and ``kmeans_patches``)
==================================  =========================================================

Data-driven initializers declare ``needs_data = True`` (a function attribute).  Built without
data (when the layer is constructed) they draw from their ``fallback``; then
:func:`initialize_from_data` (or ``fit(..., init_data=True)``, or ``init_data = true`` in a
config's ``[training]`` section) runs the model on training images and calls them again with
``data=`` the images as the layer receives them (N, C, H, W), writing the result into the
parameter in place.

For ``he_*``: ``mode`` is ``"fan_in"`` (default) or ``"fan_out"``, ``gain =
calculate_gain(nonlinearity, a)`` with ``nonlinearity="relu"`` by default and ``a`` the
negative slope of ``"leaky_relu"`` (default 0, as torch's ``kaiming_*``).
"""
from __future__ import annotations

import math

import numpy as np

from . import _random
from .plugins import get_registry

__all__ = ["calculate_gain", "gain", "zeros", "constant", "uniform", "normal", "xavier_uniform",
           "xavier_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
           "orthogonal", "gabor", "kmeans_patches", "initialize", "initialize_from_data",
           "needs_data", "available"]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "conv", "sigmoid")
_GAINS = {**{name: 1.0 for name in _LINEAR}, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0),
          "selu": 0.75}


def _is_number(value):
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def calculate_gain(nonlinearity: str = "relu", param: float | None = None) -> float:
    """Recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``: 1 for linear
    layers and sigmoid, 5/3 for tanh, sqrt(2) for relu, sqrt(2/(1+slope²)) for leaky_relu
    (``param`` = negative slope, default 0.01), 3/4 for selu."""
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif _is_number(param) and math.isfinite(param):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative slope of leaky_relu must be a finite "
                             f"number, got {param!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; known: "
                         f"{', '.join(sorted(list(_GAINS) + ['leaky_relu']))}")
    return _GAINS[nonlinearity]


gain = calculate_gain  # the older name


def _check(name, shape, fan_in, fan_out, dtype, *, min_ndim=0):
    """Validate the common arguments; returns (shape tuple, dtype)."""
    if isinstance(shape, list):
        shape = tuple(shape)
    if not isinstance(shape, tuple) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
            for s in shape):
        raise ValueError(f"initializer {name}: shape must be a tuple of non-negative ints, got "
                         f"{shape!r}")
    if len(shape) < min_ndim:
        raise ValueError(f"initializer {name}: needs an array of at least {min_ndim} dimensions, "
                         f"got shape {shape}")
    for label, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        if not _is_number(fan) or not fan > 0:
            raise ValueError(f"initializer {name}: {label} must be positive, got {fan!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"initializer {name}: invalid dtype {dtype!r}") from None
    if dt.kind != "f":
        raise ValueError(f"initializer {name}: dtype must be a float type, got {dt}")
    return tuple(int(s) for s in shape), dt


def _option(name, option, value, *, low=None, low_open=False):
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"initializer {name}: {option} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"initializer {name}: {option} must be {'>' if low_open else '>='} "
                         f"{low}, got {value!r}")
    return float(value)


def zeros(shape, *, fan_in=1, fan_out=1, rng=None, dtype=np.float32):
    shape, dtype = _check("zeros", shape, fan_in, fan_out, dtype)
    return np.zeros(shape, dtype=dtype)


def constant(shape, *, fan_in=1, fan_out=1, rng=None, dtype=np.float32, value=0.0):
    """Every entry equal to ``value``."""
    shape, dtype = _check("constant", shape, fan_in, fan_out, dtype)
    return np.full(shape, _option("constant", "value", value), dtype=dtype)


def uniform(shape, *, fan_in=1, fan_out=1, rng=None, dtype=np.float32, a=0.0, b=1.0):
    """U(a, b)."""
    shape, dtype = _check("uniform", shape, fan_in, fan_out, dtype)
    a, b = _option("uniform", "a", a), _option("uniform", "b", b)
    if a > b:
        raise ValueError(f"initializer uniform: needs a <= b, got a={a}, b={b}")
    return _random.generator(rng).uniform(a, b, size=shape).astype(dtype)


def normal(shape, *, fan_in=1, fan_out=1, rng=None, dtype=np.float32, mean=0.0, std=1.0):
    """N(mean, std²)."""
    shape, dtype = _check("normal", shape, fan_in, fan_out, dtype)
    mean, std = _option("normal", "mean", mean), _option("normal", "std", std, low=0.0)
    return (mean + std * _random.generator(rng).standard_normal(size=shape)).astype(dtype)


def xavier_uniform(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, gain=1.0):
    """Glorot/Xavier uniform: U(±gain·sqrt(6/(fan_in+fan_out)))."""
    shape, dtype = _check("xavier_uniform", shape, fan_in, fan_out, dtype)
    g = _option("xavier_uniform", "gain", gain, low=0.0)
    bound = g * math.sqrt(6.0 / (fan_in + fan_out))
    return _random.generator(rng).uniform(-bound, bound, size=shape).astype(dtype)


def xavier_normal(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, gain=1.0):
    """Glorot/Xavier normal: N(0, gain²·2/(fan_in+fan_out))."""
    shape, dtype = _check("xavier_normal", shape, fan_in, fan_out, dtype)
    g = _option("xavier_normal", "gain", gain, low=0.0)
    std = g * math.sqrt(2.0 / (fan_in + fan_out))
    return (_random.generator(rng).standard_normal(size=shape) * std).astype(dtype)


def _he_gain_fan(name, fan_in, fan_out, mode, nonlinearity, a):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"initializer {name}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    try:
        g = calculate_gain(nonlinearity, a)
    except ValueError as exc:
        raise ValueError(f"initializer {name}: {exc}") from None
    return g, (fan_in if mode == "fan_in" else fan_out)


def he_uniform(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, mode="fan_in",
               nonlinearity="relu", a=0.0):
    """He/Kaiming uniform: U(±gain·sqrt(3/fan)), fan chosen by ``mode``."""
    shape, dtype = _check("he_uniform", shape, fan_in, fan_out, dtype)
    g, fan = _he_gain_fan("he_uniform", fan_in, fan_out, mode, nonlinearity, a)
    bound = g * math.sqrt(3.0 / fan)
    return _random.generator(rng).uniform(-bound, bound, size=shape).astype(dtype)


def he_normal(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, mode="fan_in",
              nonlinearity="relu", a=0.0):
    """He/Kaiming normal: N(0, gain²/fan), fan chosen by ``mode``."""
    shape, dtype = _check("he_normal", shape, fan_in, fan_out, dtype)
    g, fan = _he_gain_fan("he_normal", fan_in, fan_out, mode, nonlinearity, a)
    std = g / math.sqrt(fan)
    return (_random.generator(rng).standard_normal(size=shape) * std).astype(dtype)


def lecun_uniform(shape, *, fan_in, fan_out, rng=None, dtype=np.float32):
    """LeCun uniform: U(±sqrt(3/fan_in)), variance 1/fan_in."""
    shape, dtype = _check("lecun_uniform", shape, fan_in, fan_out, dtype)
    bound = math.sqrt(3.0 / fan_in)
    return _random.generator(rng).uniform(-bound, bound, size=shape).astype(dtype)


def lecun_normal(shape, *, fan_in, fan_out, rng=None, dtype=np.float32):
    """LeCun normal: N(0, 1/fan_in) (a plain normal, not Keras' truncated one)."""
    shape, dtype = _check("lecun_normal", shape, fan_in, fan_out, dtype)
    return (_random.generator(rng).standard_normal(size=shape)
            / math.sqrt(fan_in)).astype(dtype)


def orthogonal(shape, *, fan_in=1, fan_out=1, rng=None, dtype=np.float32, gain=1.0):
    """(Semi-)orthogonal matrix, as ``torch.nn.init.orthogonal_``: the trailing dimensions are
    flattened into a (shape[0], rest) matrix, filled with the Q of the QR factorisation of a
    standard-normal matrix (sign-corrected by the signs of R's diagonal so Q is Haar-distributed)
    and scaled by ``gain``.  Rows are orthonormal when shape[0] <= rest (W Wᵀ = gain² I), columns
    otherwise."""
    shape, dtype = _check("orthogonal", shape, fan_in, fan_out, dtype, min_ndim=2)
    g = _option("orthogonal", "gain", gain, low=0.0)
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    if rows == 0 or cols == 0:
        return np.zeros(shape, dtype=dtype)
    a = _random.generator(rng).standard_normal(size=(rows, cols))
    if rows < cols:
        a = a.T
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (g * q).reshape(shape).astype(dtype)


def _default_wavelengths(size):
    lo, hi = max(2.5, size / 2.0), max(4.0, float(size))
    return tuple(float(w) for w in np.geomspace(lo, hi, 3))


def gabor(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, n_orientations=None,
          wavelengths=None, sigma_ratio=0.56, aspect_ratio=0.5, gain=math.sqrt(2.0)):
    """A bank of Gabor filters for conv kernels of shape (out, in, kh, kw); deterministic (``rng``
    is not used).

    Output channel ``c`` gets orientation index ``o = c mod n_orientations`` (angle
    ``theta = pi * o / n_orientations``, so the orientations spread evenly over [0, pi)), cycle
    ``k = c div n_orientations``, wavelength ``wavelengths[k mod len(wavelengths)]`` (in pixels)
    and phase ``psi = 0`` (even, line detector) or ``pi/2`` (odd, edge detector) alternating from
    channel to channel (``psi = ((c + k) mod 2) * pi/2``, so successive cycles swap the phases
    and every orientation gets both).  On a grid centred on the kernel (x along columns, y along
    rows)::

        x' = x cos(theta) + y sin(theta),   y' = -x sin(theta) + y cos(theta)
        g(x, y) = exp(-(x'² + aspect_ratio² y'²) / (2 sigma²)) * cos(2 pi x' / wavelength + psi)

    with ``sigma = sigma_ratio * wavelength`` (0.56: a bandwidth of about one octave).  Each
    filter's mean is removed (no response to flat regions), the same filter is copied to every
    input channel, and each output channel is scaled so that the mean of its squared weights is
    ``gain² / fan_in``.  With the default ``gain = sqrt(2)`` the whole array therefore has mean
    0 and variance exactly ``2 / fan_in``, He-normal's variance: every output unit has the same
    squared norm (2) as He-normal gives on average, so activations keep their scale through
    ReLU layers.

    Options: ``n_orientations`` (default ``min(out, 8)``), ``wavelengths`` (default three
    values from ``max(2.5, s/2)`` to ``max(4, s)`` pixels, geometrically spaced, ``s = min(kh,
    kw)``; each must be > 2, the Nyquist limit), ``sigma_ratio``, ``aspect_ratio`` (> 0) and
    ``gain`` (> 0).  Kernels must be at least 3x3.
    """
    name = "gabor"
    shape, dtype = _check(name, shape, fan_in, fan_out, dtype)
    if len(shape) != 4:
        raise ValueError(f"initializer gabor: needs a conv weight shape (out, in, kh, kw), got "
                         f"{shape}")
    out, cin, kh, kw = shape
    if kh < 3 or kw < 3:
        raise ValueError(f"initializer gabor: kernels must be at least 3x3, got {kh}x{kw}")
    if n_orientations is None:
        n_orientations = max(1, min(out, 8))
    if (not isinstance(n_orientations, (int, np.integer)) or isinstance(n_orientations, bool)
            or n_orientations < 1):
        raise ValueError(f"initializer gabor: n_orientations must be a positive int, got "
                         f"{n_orientations!r}")
    if wavelengths is None:
        wavelengths = _default_wavelengths(min(kh, kw))
    if _is_number(wavelengths):
        wavelengths = (wavelengths,)
    try:
        wavelengths = tuple(wavelengths)
    except TypeError:
        raise ValueError(f"initializer gabor: wavelengths must be a number or a sequence of "
                         f"numbers, got {wavelengths!r}") from None
    if not wavelengths:
        raise ValueError("initializer gabor: wavelengths must not be empty")
    wavelengths = tuple(_option(name, "each wavelength", w, low=2.0, low_open=True)
                        for w in wavelengths)
    sigma_ratio = _option(name, "sigma_ratio", sigma_ratio, low=0.0, low_open=True)
    aspect_ratio = _option(name, "aspect_ratio", aspect_ratio, low=0.0, low_open=True)
    g = _option(name, "gain", gain, low=0.0, low_open=True)
    if out == 0 or cin == 0:
        return np.zeros(shape, dtype=dtype)

    y, x = np.meshgrid(np.arange(kh) - (kh - 1) / 2.0, np.arange(kw) - (kw - 1) / 2.0,
                       indexing="ij")
    target_ms = g * g / fan_in  # mean square of each output channel's weights
    bank = np.empty((out, kh, kw))
    for c in range(out):
        o, k = c % n_orientations, c // n_orientations
        theta = math.pi * o / n_orientations
        lam = wavelengths[k % len(wavelengths)]
        psi = ((c + k) % 2) * math.pi / 2
        sigma = sigma_ratio * lam
        xr = x * math.cos(theta) + y * math.sin(theta)
        yr = -x * math.sin(theta) + y * math.cos(theta)
        f = np.exp(-(xr ** 2 + aspect_ratio ** 2 * yr ** 2) / (2 * sigma ** 2)) \
            * np.cos(2 * math.pi * xr / lam + psi)
        f -= f.mean()
        ms = np.mean(f * f)
        if not ms > 1e-12:
            raise ValueError(f"initializer gabor: the filter of channel {c} (theta={theta:.3f}, "
                             f"wavelength={lam}, phase={psi:.3f}) vanishes on a {kh}x{kw} grid; "
                             f"use longer wavelengths")
        bank[c] = f * math.sqrt(target_ms / ms)
    return np.ascontiguousarray(np.broadcast_to(bank[:, None], shape)).astype(dtype)


def _normalised_patches(name, data, shape, n_patches, rng, eps):
    """``n_patches`` random (C, kh, kw) patches of ``data`` (N, C, H, W), each flattened,
    centred and scaled to unit variance (contrast normalisation), as float64 rows."""
    _, cin, kh, kw = shape
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[1] != cin or data.dtype.kind not in "fiu":
        raise ValueError(f"initializer {name}: data must be real images (N, {cin}, H, W) "
                         f"matching the kernel's {cin} input channels, got "
                         f"{data.dtype} {data.shape}")
    n, _, h, w = data.shape
    if n == 0 or h < kh or w < kw:
        raise ValueError(f"initializer {name}: data {data.shape} has no {kh}x{kw} patch")
    img = rng.integers(0, n, n_patches)
    r = rng.integers(0, h - kh + 1, n_patches)
    c = rng.integers(0, w - kw + 1, n_patches)
    rows = r[:, None] + np.arange(kh)[None, :]
    cols = c[:, None] + np.arange(kw)[None, :]
    patches = data[img[:, None, None, None], np.arange(cin)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    x = patches.reshape(n_patches, -1).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"initializer {name}: data contains NaN or Inf")
    x -= x.mean(axis=1, keepdims=True)
    x /= np.sqrt(x.var(axis=1, keepdims=True) + eps)
    return x


def _kmeans(x, k, iterations, rng):
    """Lloyd's k-means on the rows of x from a k-means++ start; an emptied cluster restarts
    at the row farthest from its centroid."""
    sq = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    d2 = np.maximum(sq - 2 * x @ centres[0] + centres[0] @ centres[0], 0)
    for j in range(1, k):
        total = d2.sum()
        i = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres[j] = x[i]
        d2 = np.minimum(d2, np.maximum(sq - 2 * x @ centres[j] + centres[j] @ centres[j], 0))
    for _ in range(iterations):
        dist = sq[:, None] - 2 * x @ centres.T + np.einsum("ij,ij->i", centres, centres)[None]
        assign = np.argmin(dist, axis=1)
        best = dist[np.arange(len(x)), assign]
        moved = False
        for j in range(k):
            members = assign == j
            if members.any():
                new = x[members].mean(axis=0)
            else:
                far = int(np.argmax(best))
                new, best[far] = x[far], -np.inf
            moved |= not np.array_equal(new, centres[j])
            centres[j] = new
        if not moved:
            break
    return centres


def kmeans_patches(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, data=None,
                   n_patches=10000, iterations=30, seed=None, eps=10.0 / 255 ** 2,
                   gain=math.sqrt(2.0), fallback="he_uniform"):
    """Convolution kernels (out, in, kh, kw) set to the k-means centroids (k = out) of random
    image patches from ``data`` (N, in, H, W), the patches first centred and scaled to unit
    variance each (Coates and Ng's single-layer recipe, without whitening).  Each kernel is
    then centred and scaled so that the mean of its squared weights is ``gain² / fan_in``
    (He's variance by default, as the Gabor bank has), so only the shapes come from the data.

    Seeded and reproducible: the patches and the k-means++ start are drawn from ``seed`` when
    given, else from ``rng``.  ``data=None`` (the layer being constructed, before any data):
    the ``fallback`` initializer draws the kernels instead.  ``eps`` keeps flat patches from
    being blown up by the normalisation.
    """
    name = "kmeans_patches"
    shape, dtype = _check(name, shape, fan_in, fan_out, dtype)
    if len(shape) != 4:
        raise ValueError(f"initializer {name}: needs a conv weight shape (out, in, kh, kw), "
                         f"got {shape}")
    if data is None:
        if fallback == name:
            raise ValueError(f"initializer {name}: fallback must be another initializer")
        return initialize(fallback, shape, fan_in=fan_in, fan_out=fan_out, rng=rng, dtype=dtype)
    for opt, value in (("n_patches", n_patches), ("iterations", iterations)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"initializer {name}: {opt} must be a positive int, got {value!r}")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)
                             or seed < 0):
        raise ValueError(f"initializer {name}: seed must be an int >= 0, got {seed!r}")
    eps = _option(name, "eps", eps, low=0.0)
    g = _option(name, "gain", gain, low=0.0, low_open=True)
    out = shape[0]
    if n_patches < out:
        raise ValueError(f"initializer {name}: n_patches ({n_patches}) must be at least the "
                         f"number of kernels ({out})")
    gen = np.random.default_rng(seed) if seed is not None else _random.generator(rng)
    x = _normalised_patches(name, data, shape, int(n_patches), gen, eps)
    centres = _kmeans(x, out, int(iterations), gen)
    centres -= centres.mean(axis=1, keepdims=True)
    ms = np.mean(centres * centres, axis=1, keepdims=True)
    # a constant centroid (flat patches) has no shape to give: a random unit direction instead
    flat = ms[:, 0] <= 1e-12
    if flat.any():
        centres[flat] = gen.standard_normal((int(flat.sum()), centres.shape[1]))
        centres[flat] -= centres[flat].mean(axis=1, keepdims=True)
        ms[flat] = np.mean(centres[flat] ** 2, axis=1, keepdims=True)
    centres *= np.sqrt(g * g / fan_in / ms)
    return np.ascontiguousarray(centres.reshape(shape), dtype=dtype)


kmeans_patches.needs_data = True


def needs_data(init) -> bool:
    """Whether ``init`` (a registered name, (name, options) or a callable) is a data-driven
    initializer (declares ``needs_data = True``)."""
    if isinstance(init, (tuple, list)) and len(init) == 2 and isinstance(init[1], dict):
        init = init[0]
    if isinstance(init, str):
        try:
            init = get_registry().initializer(init)
        except (KeyError, ValueError):
            return False
    return bool(getattr(init, "needs_data", False))


def initialize_from_data(model, x, *, rng=None) -> list[str]:
    """Run ``model`` (inference mode) on the images ``x`` and re-initialise, in model order,
    every parameter whose initializer needs data (``needs_data``), passing it ``data=`` the
    images as that layer receives them.  Parameters are overwritten in place, so an optimizer
    built before keeps working; a convolution's connection table is applied again.  ``rng``:
    the generator for initializers without their own ``seed`` (default: seed 0, so a run
    repeats).  Returns the names of the layers initialised."""
    from ._walk import run_layers

    rng = _random.generator(0 if rng is None else rng)
    registry = get_registry()
    done = []

    def init_layer(layer, data):
        fans = getattr(layer, "init_fans", None)
        for key, attr in (("weight", "weight_init"), ("bias", "bias_init")):
            init, param = getattr(layer, attr, None), layer.params.get(key)
            if param is None or fans is None or not needs_data(init):
                continue
            if isinstance(init, (tuple, list)):
                fn, options = registry.initializer(init[0]), dict(init[1])
            else:
                fn, options = (init if callable(init) else registry.initializer(init)), {}
            new = np.asarray(fn(param.shape, fan_in=fans[0], fan_out=fans[1], rng=rng,
                                dtype=param.dtype, data=data, **options))
            if new.shape != param.shape or not np.all(np.isfinite(new)):
                raise ValueError(f"initialize_from_data: {layer.name}: initializer {init!r} "
                                 f"returned shape {new.shape} (expected {param.shape}) or "
                                 "non-finite values")
            param[...] = new
            table = getattr(layer, "connections", None)
            if key == "weight" and table is not None:
                param *= table[:, :, None, None]
            done.append(layer.name)

    run_layers(model, x, init_layer, who="initialize_from_data")
    return list(dict.fromkeys(done))


def initialize(name: str, shape, *, fan_in, fan_out, rng=None, dtype=np.float32, **options):
    """Call a registered initializer by name."""
    fn = get_registry().initializer(name)
    return fn(tuple(shape), fan_in=fan_in, fan_out=fan_out, rng=_random.generator(rng),
              dtype=dtype, **options)


def available() -> list[str]:
    return sorted(get_registry().initializers)
