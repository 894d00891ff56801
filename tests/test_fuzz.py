"""Property-based fuzzing of every public layer, loss and kernel entry point (hypothesis).

Layers and losses: every generated case must either give the reference answer (the NumPy
variant on a clean copy of the input, or a direct NumPy computation for layers and losses
without variants), with the shape the layer's shape inference announced, the input unmodified
and a backward pass giving a gradient of the input's shape and dtype, or raise a
``ValueError``/``TypeError`` that names the layer (or loss): never a crash, never a wrong shape
or value.
Conv2D and the pooling layers are also compared with the independent oracles of
``tests/_reference.py`` (which resolve "same" padding themselves), since the NumPy variant is
its own twin whenever the layer resolves to it.

Kernel entry points: every built-in variant class (``forward(x, params, config,
need_backward)``, ``backward(dy, ctx)``) is called directly with hostile inputs that no layer
would pass (wrong ranks, weights that do not fit, bad configs, wrong dtypes, gradients of the
wrong shape).  The Cython variants must refuse what they cannot compute with a
``ValueError``/``TypeError`` carrying a message before any nogil loop runs, and otherwise return
results of the right shape that agree with the NumPy reference; the NumPy variants may raise any
Python exception on nonsense, but must be right on sensible input.  A crash kills the test
process: that is the failure hunted here (CI also runs this file on a bounds-checked build).

The example budget is ``CNNKIT_FUZZ_EXAMPLES`` (default 60 per test) and the search is
derandomised, so CI runs the same cases every time.  ``--hypothesis-show-statistics`` shows,
per test, how many cases were computed and how many refused (``event``).
"""
import contextlib
import copy
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cnnkit as ck
from cnnkit import layers as L
from cnnkit._shapes import pool_output_size as pool2d_output_size
from cnnkit.builtin import conv as builtin_conv
from cnnkit.builtin.dropout import dropout_keep_mask

import _reference as ref

EXAMPLES = int(os.environ.get("CNNKIT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def mostly(good, bad, one_in=20):
    """Draw from ``good``, and from ``bad`` about one time in ``one_in``: every hostile choice
    is exercised, yet most examples get past validation and reach the computation."""
    # (not 0: hypothesis draws the lower bound of a range far more often than the rest)
    return st.integers(0, one_in - 1).flatmap(lambda i: bad if i == 1 else good)


def ints(low, high, bad=(-1, 0)):
    """Mostly ints in [low, high]; sometimes one of ``bad``."""
    return mostly(st.integers(low, high), st.sampled_from(bad))


small = st.integers(min_value=-1, max_value=4)
dims = ints(1, 9, bad=(0,))  # batch and image sizes: sometimes empty
sides = mostly(st.integers(3, 9), st.sampled_from([1, 2, 0]), one_in=12)  # image sides
#: a stride this large overflows a C int; it must be refused or computed, never overflow
HUGE = 2**31
FLOATS = ("float32", "float64")
#: hostile values for real hyper-parameters (slopes, alpha, eps, momentum, p, ...)
reals = st.sampled_from([-1.0, -0.01, 0.0, 0.01, 0.2, 0.5, 1.0, 1.7159, 10.0, 1e30, np.nan,
                         np.inf, -np.inf, True, "0.1", None, np.float32(0.5), 3,
                         np.float64(0.9)])


def real(*good):
    """Mostly one of the ``good`` values of a real hyper-parameter; sometimes a hostile one."""
    return mostly(st.sampled_from(good), reals)



@st.composite
def arrays(draw, shape, dtype=None):
    """An input of ``shape`` in a random dtype and memory layout, maybe with NaN/Inf."""
    if dtype is None:
        dtype = draw(mostly(st.sampled_from(FLOATS), st.sampled_from(["float16", "int32"]),
                            one_in=10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = np.asarray(rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e-3, 1e4])))
    if draw(st.integers(0, 4)) == 4 and base.size:
        flat = base.reshape(-1)
        flat[rng.integers(0, flat.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    arr = base.astype(dtype)
    layout = draw(st.sampled_from(["c", "fortran", "strided", "readonly", "misaligned"]))
    if layout == "fortran":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        big = np.repeat(arr, 2, axis=-1)
        arr = big[..., ::2]
    elif layout == "readonly":
        arr.setflags(write=False)
    elif layout == "misaligned" and arr.size:
        raw = np.zeros(arr.nbytes + 1, dtype=np.uint8)
        mis = raw[1:].view(arr.dtype).reshape(arr.shape)
        mis[...] = arr
        arr = mis
    return arr


def shapes(min_rank=0, max_rank=5, max_side=5, usual_rank=None):
    """Shapes of rank ``usual_rank`` (default: any in [max(min_rank, 1), max_rank]), sometimes
    any rank in [min_rank, max_rank]; sides mostly >= 1, sometimes 0."""
    side = ints(1, max_side, bad=(0,))
    lo = max(min_rank, 1)
    usual = (st.just(usual_rank) if usual_rank is not None else st.integers(lo, max_rank))
    rank = mostly(usual, st.integers(min_rank, max_rank))
    return rank.flatmap(lambda r: st.tuples(*[side] * r))


# ---------------------------------------------------------------------------------------------
# checks shared by the layer tests
# ---------------------------------------------------------------------------------------------
def _names_layer(exc, layer_name, cls_name):
    text = str(exc)
    return layer_name in text or cls_name in text


def _refused(exc, owner, name=None, when=""):
    assert str(exc), f"{owner}: empty error message ({type(exc).__name__})"
    assert (name is not None and name in str(exc)) or owner in str(exc), \
        f"error does not name the {owner}: {type(exc).__name__}: {exc}"
    event(f"{owner}: refused{when} ({type(exc).__name__})")


def build(cls, *args, **kwargs):
    """``cls(*args, **kwargs)``, or None after checking that the refusal names the class."""
    try:
        return cls(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        _refused(exc, cls.__name__, when=" at construction")
        return None


def builtin_impls(layer_type):
    """Names of the built-in variants of a layer type that can run here (plugins such as
    cnnkit-torch excluded, and instruction-set builds this CPU lacks the features for: those
    are refused by selection, which tests/test_isa_variants.py checks)."""
    variants = ck.get_registry().variants.get(layer_type, {})
    return sorted(n for n, v in variants.items()
                  if v.plugin.startswith("cnnkit.builtin") and v.unavailable() is None)


@contextlib.contextmanager
def column_paths(data):
    """Sometimes shrink the conv column workspace (columns rebuilt in backward, in bands of one
    output row), sometimes run tiny convolutions on the thread team (a small batch is then cut
    into bands of output rows, and the kept columns follow those bands), sometimes take the
    transposed convolution's packed kernels whatever the shape (they serve 128+ positions per
    image and 8+ output channels; the fuzz shapes are smaller)."""
    bound = data.draw(st.sampled_from([None, None, 64]), label="column workspace bytes")
    serial = data.draw(st.sampled_from([None, 0]), label="serial MACs")
    packed = data.draw(st.booleans(), label="packed transposed conv on any shape")
    with pytest.MonkeyPatch.context() as mp:
        if bound is not None:
            mp.setattr(builtin_conv, "COL_WORKSPACE_BYTES", bound)
        if serial is not None:
            mp.setattr(builtin_conv, "SERIAL_MACS", serial)
        if packed:
            mp.setattr(builtin_conv, "PHASES_MIN_OUT_CHANNELS", 1)
            mp.setattr(builtin_conv, "PACKED_MIN_POSITIONS", 0)
        yield


def draw_impl(data, layer_type):
    """None (automatic choice) or one built-in variant chosen explicitly."""
    return data.draw(st.sampled_from([None] + builtin_impls(layer_type)), label="impl")


def assert_close(y, ref, tol=None):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    if tol is None:
        tol = 1e-4 if y.dtype == np.float32 else 1e-10
    finite = np.where(np.isfinite(ref), ref, 0).astype(np.float64)
    scale = np.max(np.abs(finite), initial=1.0)
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * scale, equal_nan=True)


def _numpy_twin(layer):
    """A copy of the layer (same parameters, buffers and random state) on the NumPy variant."""
    twin = copy.deepcopy(layer)
    twin.impl, twin._variant_key = "numpy", None
    return twin


def check_layer(layer, x, reference=None, dy_dtype=None, seed=0):
    """The contract for a single-input layer; returns (inference y, training y, dx) or None.

    ``reference(x)`` replaces the NumPy-variant reference for layers without variants.
    """
    owner = type(layer).__name__
    before = np.array(x, copy=True)
    twin = None if reference is not None else _numpy_twin(layer)
    try:
        y = layer.forward(x, training=False)
    except (ValueError, TypeError) as exc:
        _refused(exc, owner, layer.name)
        return None
    event(f"{owner}: computed")
    np.testing.assert_array_equal(x, before)  # never mutated
    expected_shape = layer.output_shape((None,) + x.shape[1:])
    assert y.shape == (x.shape[0],) + tuple(expected_shape[1:])
    assert y.dtype == x.dtype
    clean = np.ascontiguousarray(x)
    ref = reference(clean) if reference is not None else twin.forward(clean, training=False)
    assert_close(y, ref)

    try:
        yt = layer.forward(x, training=True)
    except (ValueError, TypeError) as exc:  # e.g. batch norm with one value per channel
        _refused(exc, owner, layer.name, when=" in training")
        return None
    np.testing.assert_array_equal(x, before)
    assert yt.shape == y.shape and yt.dtype == x.dtype
    ref_t = reference(clean) if reference is not None else twin.forward(clean, training=True)
    assert_close(yt, ref_t)
    # a gradient of the wrong shape is refused, naming the layer (and keeps the context)
    bad = np.zeros(yt.shape[:-1] + (yt.shape[-1] + 1,), dtype=yt.dtype)
    with pytest.raises(ValueError) as info:
        layer.backward(bad)
    assert _names_layer(info.value, layer.name, owner), info.value
    dy = np.random.default_rng(seed).standard_normal(yt.shape).astype(dy_dtype or yt.dtype)
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype, (dx.shape, dx.dtype, x.shape, x.dtype)
    if twin is not None and np.all(np.isfinite(x)) and np.all(np.isfinite(ref_t)):
        dx_ref = twin.backward(dy)
        assert_close(dx, dx_ref, tol=1e-3 if x.dtype == np.float32 else 1e-8)
    return y, yt, dx


def maybe_cast(data, layer, x):
    """Usually cast the layer to a float input's dtype; sometimes leave the dtypes mismatched."""
    if x.dtype.name in FLOATS and data.draw(st.integers(0, 11), label="cast") != 11:
        layer.astype(x.dtype)


dy_dtypes = st.sampled_from([None, None, None, "float32", "float64"])


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data(), n=dims, c=ints(1, 3, bad=(0, 5)), h=sides, w=sides, cout=ints(1, 3),
       k=ints(1, 4, bad=(12, -1, 0)), s=ints(1, 3, bad=(20, HUGE, -1, 0)),
       p=mostly(st.sampled_from([0, 0, 1, 2, "same", "valid", (1, 0)]),
                st.sampled_from([-1, 50, "full", 1.5])),
       d=ints(1, 2, bad=(9, -1, 0)), g=ints(1, 2, bad=(0, 3)), bias=st.booleans(),
       dyt=dy_dtypes)
def test_fuzz_conv2d(data, n, c, h, w, cout, k, s, p, d, g, bias, dyt):
    # channels are multiples of the groups unless a hostile group count was drawn
    cin, cout = (c * g, cout * g) if g in (1, 2) else (c, cout)
    layer = build(L.Conv2D, cin, cout, k, stride=s, padding=p, dilation=d, groups=g,
                  bias=bias, rng=0, impl=draw_impl(data, "conv2d"))
    if layer is None:
        return
    cx = data.draw(mostly(st.just(cin), st.sampled_from([0, cin + 1])), label="x channels")
    x = data.draw(arrays((n, cx, h, w)))
    maybe_cast(data, layer, x)
    with column_paths(data):
        out = check_layer(layer, x, dy_dtype=dyt)
    if out is not None and np.all(np.isfinite(x)):
        # the NumPy twin above is itself a variant: also compare with an independent oracle
        # that resolves the padding on its own
        h, w = x.shape[2:]
        event("Conv2D: checked against the loop oracle")
        if p == "same":
            pads = ref.same_padding(h, *_axis(layer, 0)) + ref.same_padding(w, *_axis(layer, 1))
        else:
            ph, pw = (0, 0) if p == "valid" else layer.padding
            pads = (ph, ph, pw, pw)
        expected = ref.conv2d_forward_taps(x, layer.params["weight"], layer.params["bias"],
                                           layer.stride, pads, layer.dilation, layer.groups)
        assert_close(out[0], expected.astype(x.dtype), tol=_oracle_tol(x))


def _axis(layer, i):
    return layer.kernel_size[i], layer.stride[i], layer.dilation[i]


def _oracle_tol(x):
    return 1e-4 if x.dtype == np.float32 else 1e-10


@FUZZ
@given(data=st.data(), cls=st.sampled_from([L.MaxPool2D, L.AvgPool2D]), n=dims,
       c=ints(1, 4, bad=(0,)), h=sides, w=sides, k=ints(1, 4, bad=(-1, 0, 12)),
       s=mostly(st.sampled_from([None, 1, 2, 3]), st.sampled_from([20, HUGE, -1, 0])),
       p=ints(0, 1, bad=(-1, 3)), ceil=st.booleans(), include=st.booleans())
def test_fuzz_pooling(data, cls, n, c, h, w, k, s, p, ceil, include):
    kwargs = {"count_include_pad": include} if cls is L.AvgPool2D else {}
    layer = build(cls, k, stride=s, padding=p, ceil_mode=ceil, impl=draw_impl(data,
                  cls.layer_type), **kwargs)
    if layer is None:
        return
    x = data.draw(arrays((n, c, h, w)))
    out = check_layer(layer, x)
    if out is not None and np.all(np.isfinite(x)):
        # an oracle independent of the NumPy variant the twin comparison uses
        event(f"{cls.__name__}: checked against the loop oracle")
        kind = "max" if cls is L.MaxPool2D else "avg"
        expected = ref.pool2d_forward_taps(np.asarray(x, np.float64), kind, layer.kernel_size,
                                           layer.stride, layer.padding, layer.ceil_mode,
                                           kwargs.get("count_include_pad", True))
        assert_close(out[0], expected.astype(x.dtype), tol=_oracle_tol(x))


#: the hostile tests above reach the oracle in a minority of cases; these draw only sensible
#: configurations so every example compares values (cheap: the oracles loop over taps only)
VALUES = settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))


@VALUES
@given(data=st.data(), n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 9),
       w=st.integers(1, 9), cout=st.integers(1, 3), k=st.tuples(*[st.integers(1, 4)] * 2),
       s=st.tuples(*[st.integers(1, 3)] * 2), d=st.tuples(*[st.integers(1, 2)] * 2),
       g=st.integers(1, 2), p=st.sampled_from(["same", "same", "valid", 0, 1, (2, 1)]),
       bias=st.booleans(), dtype=st.sampled_from(FLOATS))
def test_fuzz_conv2d_values_against_oracle(data, n, c, h, w, cout, k, s, d, g, p, bias, dtype):
    x = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed")).standard_normal(
        (n, c * g, h, w)).astype(dtype)
    if p == "same":
        pads = ref.same_padding(h, k[0], s[0], d[0]) + ref.same_padding(w, k[1], s[1], d[1])
    else:
        ph, pw = (0, 0) if p == "valid" else L.Conv2D(1, 1, 1, padding=p).padding
        pads = (ph, ph, pw, pw)
    for impl in builtin_impls("conv2d"):  # every variant, so none can hide behind another
        layer = L.Conv2D(c * g, cout * g, k, stride=s, padding=p, dilation=d, groups=g,
                         bias=bias, rng=0, dtype=dtype, impl=impl)
        try:
            y = layer.forward(x)
        except ck.SelectionError as exc:  # a variant for some geometries only (winograd: 3x3)
            _refused(exc, "Conv2D", layer.name)
            continue
        except ValueError as exc:  # kernel larger than the padded input
            _refused(exc, "Conv2D", layer.name)
            return
        expected = ref.conv2d_forward_taps(x, layer.params["weight"], layer.params["bias"], s,
                                           pads, d, g)
        assert_close(y, expected.astype(dtype), tol=_oracle_tol(x))


@VALUES
@given(data=st.data(), n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 10),
       w=st.integers(1, 10), cout=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 3)] * 4), bias=st.booleans(), dtype=st.sampled_from(FLOATS))
def test_fuzz_winograd_values_against_oracle(data, n, c, h, w, cout, pads, bias, dtype):
    """The geometries the Winograd variant serves (3x3, stride 1, any, also asymmetric, padding;
    partial tiles), which the draws above rarely reach: forward and gradients against the loop
    oracles, within its float32 bound."""
    from cnnkit.builtin.conv import WINOGRAD_FLOAT32_BOUND, Conv2dWinograd

    if h + pads[0] + pads[1] < 3 or w + pads[2] + pads[3] < 3:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((cout, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if bias else None
    config = {"stride": (1, 1), "padding": pads, "dilation": (1, 1), "groups": 1}
    y, ctx = Conv2dWinograd.forward(x, {"weight": wt, "bias": b}, config, True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = Conv2dWinograd.backward(dy, ctx)
    tol = WINOGRAD_FLOAT32_BOUND if dtype == "float32" else 1e-10
    assert_close(y, ref.conv2d_forward_taps(x, wt, b, (1, 1), pads, (1, 1), 1), tol=tol)
    want_dx, want_dw, want_db = ref.conv2d_backward(x, wt, dy, (1, 1), pads, (1, 1), 1)
    assert_close(dx, want_dx, tol=tol)
    assert_close(grads["weight"], want_dw, tol=tol)
    if bias:
        assert_close(grads["bias"], want_db, tol=tol)


@VALUES
@given(data=st.data(), cls=st.sampled_from([L.MaxPool2D, L.AvgPool2D]), n=st.integers(1, 3),
       c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.tuples(*[st.integers(1, 4)] * 2), s=st.tuples(*[st.integers(1, 3)] * 2),
       p=st.tuples(*[st.integers(0, 2)] * 2), ceil=st.booleans(), include=st.booleans(),
       ties=st.booleans(), dtype=st.sampled_from(FLOATS))
def test_fuzz_pooling_values_against_oracle(data, cls, n, c, h, w, k, s, p, ceil, include, ties,
                                            dtype):
    p = tuple(min(pi, ki // 2) for pi, ki in zip(p, k))
    kwargs = {"count_include_pad": include} if cls is L.AvgPool2D else {}
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = (rng.integers(-2, 3, (n, c, h, w)) if ties else rng.standard_normal((n, c, h, w)))
    x = x.astype(dtype)
    kind = "max" if cls is L.MaxPool2D else "avg"
    expected = None
    for impl in builtin_impls(cls.layer_type):  # every variant, so none can hide behind another
        layer = cls(k, stride=s, padding=p, ceil_mode=ceil, impl=impl, **kwargs)
        try:
            y = layer.forward(x, training=True)
        except ValueError as exc:  # window larger than the padded input
            _refused(exc, cls.__name__, layer.name)
            return
        if expected is None:
            expected = ref.pool2d_forward_taps(np.asarray(x, np.float64), kind, k, s, p, ceil,
                                               include)
            dy = rng.standard_normal(y.shape).astype(dtype)
        assert_close(y, expected.astype(dtype), tol=_oracle_tol(x))
        if kind == "max":  # the tie rule too, on integer inputs full of ties
            assert_close(layer.backward(dy), ref.maxpool2d_backward(x, dy, k, s, p, ceil)
                         .astype(dtype), tol=_oracle_tol(x))


@VALUES
@given(data=st.data(), cls=st.sampled_from([L.MaxPool2D, L.AvgPool2D]), n=st.integers(1, 2),
       c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 45), k=st.sampled_from([2, 3]),
       p=st.integers(0, 1), ceil=st.booleans(), include=st.booleans(),
       values=st.sampled_from(["normal", "ties", "nan", "-inf"]), dtype=st.sampled_from(FLOATS))
def test_fuzz_pooling_fast_paths_against_oracle(data, cls, n, c, h, w, k, p, ceil, include,
                                                values, dtype):
    """2x2 and 3x3 windows at stride 2 take dedicated loops in the compiled kernel (vectorised
    over the windows inside the input, the edges walked one window at a time): odd sizes up to
    rows of 22 windows, padding, ceil mode, ties, NaN and -inf, against the loop oracles."""
    kwargs = {"count_include_pad": include} if cls is L.AvgPool2D else {}
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = (rng.integers(-2, 3, (n, c, h, w)) if values == "ties"
         else rng.standard_normal((n, c, h, w))).astype(dtype)
    if values in ("nan", "-inf"):
        x[rng.random(x.shape) < (0.05 if values == "nan" else 0.4)] = (
            np.nan if values == "nan" else -np.inf)
    kind = "max" if cls is L.MaxPool2D else "avg"
    expected = None
    for impl in builtin_impls(cls.layer_type):  # every variant, so none can hide behind another
        layer = cls(k, stride=2, padding=p, ceil_mode=ceil, impl=impl, **kwargs)
        try:
            y = layer.forward(x, training=True)
        except ValueError as exc:  # window larger than the padded input
            _refused(exc, cls.__name__, layer.name)
            return
        if expected is None:
            with np.errstate(invalid="ignore"):  # -inf + inf in the average's oracle
                expected = ref.pool2d_forward_taps(np.asarray(x, np.float64), kind, (k, k),
                                                   (2, 2), (p, p), ceil, include)
            dy = rng.standard_normal(y.shape).astype(dtype)
        assert_close(y, expected.astype(dtype), tol=_oracle_tol(x))
        if kind == "max":
            assert_close(layer.backward(dy), ref.maxpool2d_backward(x, dy, (k, k), (2, 2),
                                                                    (p, p), ceil)
                         .astype(dtype), tol=_oracle_tol(x))
        np.testing.assert_array_equal(layer.forward(x, training=False), y)  # no argmax kept


ACTIVATIONS = {
    L.ReLU: {}, L.Sigmoid: {}, L.Tanh: {},
    L.LeakyReLU: {"negative_slope": real(0.01, 0.2, -0.5, 0.0, 3.0)},
    L.ELU: {"alpha": real(1.0, 0.5, -1.0, 0.0)},
    L.GELU: {"approximate": mostly(st.sampled_from(["none", "tanh"]),
                                   st.sampled_from(["erf", None, 1]))},
    L.ScaledTanh: {"amplitude": real(1.7159, 1.0, -2.0, 0.0), "slope": real(2 / 3, 1.0, -1.0)},
}


@FUZZ
@given(data=st.data(), cls=st.sampled_from(sorted(ACTIVATIONS, key=lambda c: c.__name__)),
       shape=shapes(), dyt=dy_dtypes)
def test_fuzz_activations(data, cls, shape, dyt):
    kwargs = {k: data.draw(v, label=k) for k, v in ACTIVATIONS[cls].items()
              if data.draw(st.integers(0, 3), label=f"set {k}") != 3}
    layer = build(cls, impl=draw_impl(data, cls.layer_type), **kwargs)
    if layer is not None:
        check_layer(layer, data.draw(arrays(shape)), dy_dtype=dyt)


@FUZZ
@given(data=st.data(), cls=st.sampled_from([L.Softmax, L.LogSoftmax]),
       shape=shapes(0, 5, usual_rank=2).flatmap(lambda s: st.just(s) if len(s) != 2 else
                                                st.sampled_from([s, s + (3,)])),
       axis=mostly(st.sampled_from([1, -1, 2]),
                   st.one_of(st.integers(-6, 6), st.sampled_from([1.0, "1", None, True]))))
def test_fuzz_softmax(data, cls, shape, axis):
    layer = build(cls, axis, impl=draw_impl(data, cls.layer_type))
    if layer is not None:
        check_layer(layer, data.draw(arrays(shape)))


@FUZZ
@given(data=st.data(), shape=shapes(), p=real(0.0, 0.5, 0.2, 0.999))
def test_fuzz_dropout(data, shape, p):
    layer = build(L.Dropout, p, rng=data.draw(st.integers(0, 3)),
                  impl=draw_impl(data, "dropout"))
    if layer is None:
        return
    x = data.draw(arrays(shape))
    before = copy.deepcopy(layer)
    out = check_layer(layer, x)
    if out is None:
        return
    y, yt, _ = out
    np.testing.assert_array_equal(y, x)  # inference: the identity
    # training: the documented counter-based mask of the seed the layer drew, computed directly
    seed = before._draw_seed()
    xc = np.ascontiguousarray(x)
    keep = dropout_keep_mask(seed, x.shape, layer.p)
    expected = np.where(keep, xc * xc.dtype.type(1.0 / (1.0 - layer.p)), xc.dtype.type(0))
    assert_close(yt, expected)


@FUZZ
@given(data=st.data(), cls=st.sampled_from([L.BatchNorm1D, L.BatchNorm2D]),
       nf=ints(1, 4), eps=real(1e-5, 1e-3, 0.1), momentum=real(0.1, None, 0.5, 1.0, 0.0),
       affine=mostly(st.booleans(), st.just(1)), track=mostly(st.booleans(), st.just(None)),
       dyt=dy_dtypes)
def test_fuzz_batchnorm(data, cls, nf, eps, momentum, affine, track, dyt):
    rank = st.sampled_from([2, 3]) if cls is L.BatchNorm1D else st.just(4)
    shape = data.draw(rank.flatmap(lambda r: shapes(1, 5, 4, usual_rank=r)), label="shape")
    layer = build(cls, nf, eps=eps, momentum=momentum, affine=affine, track_running_stats=track,
                  impl=draw_impl(data, cls.layer_type))
    if layer is None:
        return
    if data.draw(st.integers(0, 7), label="channels fit") != 7 and len(shape) >= 2:
        shape = (shape[0], layer.num_features) + shape[2:]
    x = data.draw(arrays(shape))
    maybe_cast(data, layer, x)
    if layer.affine and data.draw(st.booleans(), label="random affine"):
        rng = np.random.default_rng(1)
        for key in ("weight", "bias"):
            p = layer.params[key]
            layer.params[key] = rng.standard_normal(p.shape).astype(p.dtype)
    running = copy.deepcopy(getattr(layer, "buffers", {}))
    out = check_layer(layer, x, dy_dtype=dyt)
    if out is None or not layer.track_running_stats:
        return
    # inference used the running statistics the layer started with: check directly
    y = out[0]
    shape1 = (1, -1) + (1,) * (x.ndim - 2)
    xc = np.asarray(x, np.float64)
    ref = (xc - running["running_mean"].reshape(shape1)) / np.sqrt(
        running["running_var"].astype(np.float64).reshape(shape1) + layer.eps)
    if layer.affine:
        ref = ref * layer.params["weight"].reshape(shape1) + layer.params["bias"].reshape(shape1)
    assert_close(y, ref.astype(x.dtype), tol=1e-4 if x.dtype == np.float32 else 1e-9)
    # ... and training updated them to finite values when the input was finite
    if np.all(np.isfinite(x)):
        assert all(np.all(np.isfinite(v)) for v in layer.buffers.values())


@FUZZ
@given(data=st.data(), n=dims, fin=ints(1, 6), fout=ints(1, 6), xin=st.integers(0, 6),
       bias=st.booleans(), dyt=dy_dtypes)
def test_fuzz_dense(data, n, fin, fout, xin, bias, dyt):
    layer = build(L.Dense, fin, fout, bias=bias, rng=0, impl=draw_impl(data, "dense"))
    if layer is None:
        return
    if data.draw(st.integers(0, 7), label="width fits") != 7:
        xin = layer.in_features
    x = data.draw(arrays(data.draw(mostly(st.just((n, xin)),
                                          st.sampled_from([(n,), (n, xin, 2)])))))
    maybe_cast(data, layer, x)
    check_layer(layer, x, dy_dtype=dyt)


@FUZZ
@given(data=st.data(), shape=shapes(2, 5, 5, usual_rank=4))
def test_fuzz_global_avg_pool(data, shape):
    layer = L.GlobalAvgPool2D(impl=draw_impl(data, "globalavgpool2d"))
    out = check_layer(layer, data.draw(arrays(shape)))
    if out is not None:
        x = data.draw(arrays(shape, dtype="float64"))
        assert_close(layer.forward(x), x.mean(axis=(2, 3)))  # the definition, directly


@FUZZ
@given(data=st.data(), ch=ints(1, 4), n=dims, c=st.integers(0, 4), h=sides, w=sides,
       k=mostly(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))),
                st.sampled_from([-1, 0, 12, (2, 0), (2, 2, 2)])),
       mode=mostly(st.sampled_from(["sum", "average"]), st.sampled_from(["max", None])),
       bias=mostly(st.booleans(), st.just(0)), dyt=dy_dtypes)
def test_fuzz_subsampling(data, ch, n, c, h, w, k, mode, bias, dyt):
    layer = build(L.Subsampling, ch, k, mode=mode, bias=bias, rng=0,
                  weight_init=("uniform", {"a": -1.0, "b": 1.0}),
                  impl=draw_impl(data, "subsampling"))
    if layer is None:
        return
    if data.draw(st.integers(0, 7), label="channels fit") != 7:
        c = layer.channels
    x = data.draw(arrays((n, c, h, w)))
    maybe_cast(data, layer, x)
    out = check_layer(layer, x, dy_dtype=dyt)
    if out is not None:
        kh, kw = layer.kernel_size
        xc = np.asarray(x, np.float64)[:, :, :h // kh * kh, :w // kw * kw]
        s = xc.reshape(n, c, h // kh, kh, w // kw, kw).sum(axis=(3, 5))
        if mode == "average":
            s = s / (kh * kw)
        ref = s * layer.params["weight"].reshape(1, -1, 1, 1)
        if layer.params["bias"] is not None:
            ref = ref + layer.params["bias"].reshape(1, -1, 1, 1)
        assert_close(out[0], ref.astype(x.dtype), tol=1e-3 if x.dtype == np.float32 else 1e-9)


@FUZZ
@given(data=st.data(), shape=shapes(3, 5, 4, usual_rank=4),
       padding=mostly(st.one_of(st.integers(0, 3), st.tuples(*[st.integers(0, 3)] * 2),
                                st.tuples(*[st.integers(0, 3)] * 4)),
                      st.one_of(st.sampled_from([-1, 50, True, 1.5, "1", None]),
                                st.tuples(small, small), st.tuples(small, small, small, small),
                                st.tuples(small, small, small))))
def test_fuzz_zero_pad(data, shape, padding):
    layer = build(L.ZeroPad2D, padding, impl=draw_impl(data, "zeropad2d"))
    if layer is None:
        return
    left, right, top, bottom = layer.padding
    out = check_layer(layer, data.draw(arrays(shape)),
                      reference=lambda x: np.pad(x, ((0, 0), (0, 0), (top, bottom),
                                                     (left, right))))
    if out is not None:
        assert out[2].shape == shape


@FUZZ
@given(data=st.data(), n=ints(1, 4, bad=(0,)), c=ints(1, 3, bad=(0, 5)),
       h=ints(1, 5, bad=(0,)), w=ints(1, 5, bad=(0,)), cout=ints(1, 3), k=ints(1, 3),
       s=ints(1, 3), p=ints(0, 1, bad=(-1, 3)), op=ints(0, 1, bad=(-1, 4)), d=ints(1, 2),
       g=ints(1, 2, bad=(0, 3)), bias=st.booleans(), dyt=dy_dtypes)
def test_fuzz_conv_transpose2d(data, n, c, h, w, cout, k, s, p, op, d, g, bias, dyt):
    cin, cout = (c * g, cout * g) if g in (1, 2) else (c, cout)
    layer = build(L.ConvTranspose2D, cin, cout, k, stride=s, padding=p, output_padding=op,
                  groups=g, bias=bias, dilation=d, rng=0, impl=draw_impl(data, "convtranspose2d"))
    if layer is None:
        return
    cx = data.draw(mostly(st.just(cin), st.sampled_from([0, cin + 1])), label="x channels")
    x = data.draw(arrays((n, cx, h, w)))
    maybe_cast(data, layer, x)
    with column_paths(data):
        check_layer(layer, x, dy_dtype=dyt)


@FUZZ
@given(data=st.data(), shape=shapes(), dyt=dy_dtypes)
def test_fuzz_flatten(data, shape, dyt):
    out = check_layer(L.Flatten(), data.draw(arrays(shape)),
                      reference=lambda x: x.reshape(x.shape[0], -1), dy_dtype=dyt)
    if out is not None:
        assert out[1].ndim == 2


@FUZZ
@given(data=st.data(), cls=st.sampled_from([L.Add, L.Concat]), count=ints(2, 3, bad=(0, 1, 4)),
       shape=shapes(0, 4, 4, usual_rank=3),
       axis=mostly(st.sampled_from([1, -1, 2]),
                   st.one_of(st.integers(-5, 5), st.sampled_from([1.0, None]))),
       dtype=mostly(st.sampled_from(FLOATS), st.sampled_from(["float16", "int32"])),
       dyt=dy_dtypes)
def test_fuzz_merge(data, cls, count, shape, axis, dtype, dyt):
    """Add and Concat on lists of 0-4 arrays whose shapes and dtypes mostly agree."""
    layer = build(L.Concat, axis) if cls is L.Concat else L.Add()
    if layer is None:
        return
    owner = cls.__name__
    xs = []
    for i in range(count):
        s = list(shape)
        if s and data.draw(st.integers(0, 7), label=f"reshape {i}") == 7:
            j = data.draw(st.integers(0, len(s) - 1), label="axis to change")
            s[j] = data.draw(st.integers(0, 4), label="new size")
        dt = dtype if data.draw(st.integers(0, 9), label=f"other dtype {i}") != 9 else "float64"
        xs.append(data.draw(arrays(tuple(s), dtype=dt)))
    if data.draw(st.integers(0, 9), label="not a list") == 9:
        xs = data.draw(st.sampled_from([tuple(xs), xs[0] if xs else None, [1.0, 2.0]]))
    befores = [np.array(x, copy=True) for x in xs] if isinstance(xs, (list, tuple)) else []
    # shape inference on the shapes alone
    if isinstance(xs, (list, tuple)) and all(isinstance(x, np.ndarray) for x in xs):
        try:
            announced = layer.output_shape([x.shape for x in xs])
        except (ValueError, TypeError) as exc:
            _refused(exc, owner, layer.name, when=" in output_shape")
            announced = None
    try:
        y = layer.forward(xs, training=True)
    except (ValueError, TypeError) as exc:
        _refused(exc, owner, layer.name)
        return
    event(f"{owner}: computed")
    for x, b in zip(xs, befores):
        np.testing.assert_array_equal(x, b)
    assert y.shape == announced and y.dtype == xs[0].dtype
    if cls is L.Add:
        ref = xs[0] + xs[1]
        for x in xs[2:]:
            ref = ref + x
    else:
        ref = np.concatenate(xs, axis=axis % len(shape))
    np.testing.assert_array_equal(y, ref)
    bad = np.zeros(y.shape + (1,), dtype=y.dtype)
    with pytest.raises(ValueError) as info:
        layer.backward(bad)
    assert _names_layer(info.value, layer.name, owner), info.value
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(dyt or y.dtype)
    dxs = layer.backward(dy)
    assert isinstance(dxs, list) and len(dxs) == len(xs)
    for x, dx in zip(xs, dxs):
        assert dx.shape == x.shape and dx.dtype == x.dtype, (dx.shape, dx.dtype, x.dtype)
    if cls is L.Concat:
        np.testing.assert_array_equal(np.concatenate(dxs, axis=axis % len(shape)),
                                      dy.astype(y.dtype))


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def check_loss(loss, pred, target, ref_value, ref_grad):
    """Either the reference value and gradient, or a refusal naming the loss."""
    owner = type(loss).__name__
    before = np.array(pred, copy=True) if isinstance(pred, np.ndarray) else None
    try:
        value = loss.forward(pred, target)
    except (ValueError, TypeError) as exc:
        _refused(exc, owner)
        return None
    event(f"{owner}: computed")
    if before is not None:
        np.testing.assert_array_equal(pred, before)
    assert isinstance(value, float) and math.isfinite(value), value
    expected = ref_value()
    scale = max(1.0, float(np.max(np.abs(pred), initial=0.0)))
    tol = 1e-4 if pred.dtype == np.float32 else 1e-10
    assert abs(value - expected) <= tol * max(scale, abs(expected)), (value, expected)
    g = loss.backward()
    assert g.shape == pred.shape and g.dtype == pred.dtype, (g.shape, g.dtype)
    assert np.all(np.isfinite(g))
    assert_close(g, ref_grad().astype(pred.dtype), tol=tol * 10)
    return value


@st.composite
def class_labels(draw, n, k):
    """Labels for n rows: usually n ints, sometimes the wrong count, dtype or container."""
    kind = draw(mostly(st.sampled_from(["int64", "int32", "uint8", "list"]),
                       st.sampled_from(["float64", "bool", "count", "2d"]), one_in=8))
    values = draw(st.lists(st.integers(0, max(k - 1, 0)), min_size=n, max_size=n))
    if n and draw(st.integers(0, 9)) == 9:  # one label out of range
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, k]))
    if kind == "list":
        return values
    if kind == "count":
        return np.asarray(values + [0], dtype=np.int64)
    if kind == "2d":
        return np.asarray(values, dtype=np.int64).reshape(-1, 1)
    if kind in ("uint8",):
        return np.asarray(np.clip(values, 0, None), dtype=kind)
    return np.asarray(values).astype(kind)


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@FUZZ
@given(data=st.data(), shape=mostly(st.tuples(ints(1, 5, bad=(0,)), ints(1, 5, bad=(0,))),
                                    shapes(0, 3, 4)),
       smoothing=real(0.0, 0.0, 0.1, 1.0))
def test_fuzz_softmax_cross_entropy(data, shape, smoothing):
    loss = build(ck.losses.SoftmaxCrossEntropy, smoothing)
    if loss is None:
        return
    logits = data.draw(arrays(shape))
    labels = data.draw(class_labels(shape[0] if shape else 0,
                                    shape[1] if len(shape) > 1 else 0))

    def ref_value():
        lp = _log_softmax64(logits)
        idx = np.arange(len(lp))
        eps = loss.label_smoothing
        return float(((1 - eps) * -lp[idx, labels] - eps * lp.mean(axis=1)).mean())

    def ref_grad():
        lp = _log_softmax64(logits)
        n, k = lp.shape
        eps = loss.label_smoothing
        target = np.full((n, k), eps / k)
        target[np.arange(n), labels] += 1 - eps
        return (np.exp(lp) - target) / n

    check_loss(loss, logits, labels, ref_value, ref_grad)


@FUZZ
@given(data=st.data(), shape=mostly(st.tuples(ints(1, 5, bad=(0,)), ints(1, 5, bad=(0,))),
                                    shapes(0, 3, 4)))
def test_fuzz_nll_loss(data, shape):
    loss = ck.losses.NLLLoss()
    log_probs = data.draw(arrays(shape))
    if data.draw(st.booleans(), label="real log-probabilities") and log_probs.ndim == 2 \
            and log_probs.dtype.name in FLOATS and log_probs.shape[1]:
        log_probs = _log_softmax64(log_probs).astype(log_probs.dtype)
    labels = data.draw(class_labels(shape[0] if shape else 0,
                                    shape[1] if len(shape) > 1 else 0))

    def ref_grad():
        g = np.zeros(log_probs.shape)
        g[np.arange(len(g)), labels] = -1.0 / len(g)
        return g

    check_loss(loss, log_probs, labels,
               lambda: float(-np.asarray(log_probs, np.float64)[np.arange(len(labels)),
                                                                labels].mean()),
               ref_grad)


@st.composite
def targets_for(draw, shape, low=0.0, high=1.0):
    """Targets of ``shape`` (usually) in [low, high], sometimes out of range, non-finite,
    the wrong shape, strings or complex numbers."""
    kind = draw(mostly(st.sampled_from(["float64", "float32", "int", "bool", "list"]),
                       st.sampled_from(["range", "nan", "inf", "shape", "str", "complex",
                                        "scalar"]), one_in=6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    t = rng.uniform(low, high, size=shape)
    if kind == "float32":
        return t.astype(np.float32)
    if kind == "int":
        return (t > 0.5).astype(np.int64)
    if kind == "bool":
        return t > 0.5
    if kind == "list":
        return t.tolist()
    if kind == "range" and t.size:
        t.reshape(-1)[0] = draw(st.sampled_from([-0.5, 1.5, -1e30] if high <= 1 else [-10, 10]))
    if kind in ("nan", "inf") and t.size:
        t.reshape(-1)[0] = np.nan if kind == "nan" else np.inf
    if kind == "shape":
        return t[..., None]
    if kind == "str":
        return t.astype(str)
    if kind == "complex":
        return t + 1j
    if kind == "scalar":
        return 0.5
    return t


def _finite_target(t, shape):
    try:
        a = np.asarray(t)
        return a.shape == shape and a.dtype.kind in "biuf" and np.all(np.isfinite(a))
    except Exception:  # noqa: BLE001 - only deciding what to expect
        return False


@FUZZ
@given(data=st.data(), shape=shapes(0, 4, 4))
def test_fuzz_bce_with_logits(data, shape):
    loss = ck.losses.BCEWithLogits()
    logits = data.draw(arrays(shape))
    targets = data.draw(targets_for(shape))

    def ref_value():
        z, t = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
        return float((np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).mean())

    def ref_grad():
        z, t = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
        return (0.5 * (1 + np.tanh(z / 2)) - t) / z.size

    value = check_loss(loss, logits, targets, ref_value, ref_grad)
    if value is not None:
        t = np.asarray(targets)
        assert t.shape == logits.shape and np.all((t >= 0) & (t <= 1))


@FUZZ
@given(data=st.data(), shape=shapes(0, 4, 4))
def test_fuzz_mse(data, shape):
    loss = ck.losses.MSE()
    pred = data.draw(arrays(shape))
    target = data.draw(targets_for(shape, -3.0, 3.0))

    def diff():
        return np.asarray(pred, np.float64) - np.asarray(target).astype(pred.dtype)

    value = check_loss(loss, pred, target, lambda: float(np.mean(diff() ** 2)),
                       lambda: 2.0 * diff() / pred.size)
    if value is not None:  # a non-finite or non-numeric target is refused, not averaged
        assert _finite_target(target, pred.shape)


@FUZZ
@given(data=st.data(), wd=st.one_of(reals, st.sampled_from([0.0, 1e-4, 0.01, 1e3])),
       kind=st.sampled_from(["layer", "list", "sequential", "no params", "nan weight",
                             "not a model", "mixed list"]),
       include_biases=st.booleans(), include_norm=st.booleans(), dtype=st.sampled_from(FLOATS))
def test_fuzz_l2_penalty(data, wd, kind, include_biases, include_norm, dtype):
    penalty = build(ck.losses.L2Penalty, wd, include_biases=include_biases,
                    include_norm=include_norm)
    if penalty is None:
        return
    layers = [L.Conv2D(1, 2, 2, rng=0, dtype=dtype), L.BatchNorm2D(2, dtype=dtype), L.ReLU(),
              L.Flatten(), L.Dense(8, 3, rng=1, dtype=dtype)]
    layers[1].params["weight"][:] = [0.5, 2.0]
    if kind == "nan weight":
        layers[4].params["weight"][0, 0] = data.draw(st.sampled_from([np.nan, np.inf]))
    model = {"layer": layers[0], "list": layers, "sequential": ck.Sequential(layers),
             "no params": [L.ReLU(), L.Flatten()], "nan weight": layers,
             "not a model": data.draw(st.sampled_from([None, 3, "model", np.ones(3)])),
             "mixed list": [layers[0], "relu"]}[kind]
    # pre-existing gradients that backward must add to
    for layer in layers[:2]:
        layer.grads = {k: np.ones_like(p) for k, p in layer.params.items() if p is not None}
    grads_before = [dict(layer.grads) for layer in layers]
    try:
        value = penalty.forward(model)
    except (ValueError, TypeError) as exc:
        _refused(exc, "L2Penalty")
        return
    event(f"L2Penalty: computed ({kind})")
    chosen = []
    members = model.layers if hasattr(model, "layers") else (
        [model] if isinstance(model, L.Layer) else model)
    for layer in members:
        if getattr(layer, "is_normalization", False) and not include_norm:
            continue
        for key, p in layer.params.items():
            if p is not None and (key != "bias" or include_biases):
                chosen.append((layer, key, p))
    expected = 0.5 * penalty.weight_decay * sum(float(np.sum(p.astype(np.float64) ** 2))
                                                for _, _, p in chosen)
    if kind == "nan weight" and penalty.weight_decay:  # documented formula: NaN/Inf propagate
        assert not math.isfinite(value) or not math.isfinite(expected)
    else:
        assert value == pytest.approx(expected, rel=1e-5, nan_ok=True)
    penalty.backward(model)
    for i, layer in enumerate(layers):
        for key, p in layer.params.items():
            if p is None:
                continue
            old = grads_before[i].get(key)
            if any(lay is layer and k == key for lay, k, _ in chosen):
                want = penalty.weight_decay * p.astype(np.float64) + (0 if old is None else old)
                assert layer.grads[key].dtype == p.dtype and layer.grads[key].shape == p.shape
                assert_close(layer.grads[key], want.astype(p.dtype), tol=1e-5)
            elif old is not None:
                assert layer.grads[key] is old  # untouched


# ---------------------------------------------------------------------------------------------
# kernel entry points: the variant classes called directly with hostile inputs
# ---------------------------------------------------------------------------------------------
def _ints(value, n):
    """A tuple of n Python ints, or None when ``value`` is not n ints."""
    try:
        items = tuple(value)
    except TypeError:
        return None
    if len(items) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in items):
        return None
    return tuple(int(v) for v in items)


def _float_ok(*arrays_):
    """Every array is a float32/float64 ndarray of the first one's dtype."""
    first = arrays_[0]
    return all(isinstance(a, np.ndarray) and a.dtype.name in FLOATS and a.dtype == first.dtype
               for a in arrays_)


def _has_str(config):
    return any(isinstance(v, str) or (isinstance(v, tuple) and any(isinstance(i, str) for i in v))
               for v in config.values())


def _real_ok(value):
    return isinstance(value, (int, float, np.integer, np.floating))


def _expected_shape(layer_type, x, params, config):
    """The output shape a correct variant returns for this call, or None when the call is
    invalid (a Cython variant must refuse it)."""
    w, b = (p if p is None or isinstance(p, np.ndarray) else np.asarray(p)
            for p in (params.get("weight"), params.get("bias")))
    if not _float_ok(x, *[p for p in (w, b) if p is not None]):
        return None
    big = HUGE - 1
    if layer_type == "conv2d":
        stride, dil = _ints(config["stride"], 2), _ints(config["dilation"], 2)
        pad, groups = _ints(config["padding"], 4), config["groups"]
        if (x.ndim != 4 or w.ndim != 4 or None in (stride, dil, pad)
                or not isinstance(groups, int) or isinstance(groups, bool)):
            return None
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        if (groups < 1 or o % groups or cg * groups != c or min(cg, kh, kw, h, wd) < 1
                or (b is not None and b.shape != (o,)) or min(stride + dil) < 1
                or max(stride + dil) > big or min(pad) < 0):
            return None
        oh = (h + pad[0] + pad[1] - dil[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wd + pad[2] + pad[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
        return (n, o, oh, ow) if min(oh, ow) >= 1 else None
    if layer_type == "convtranspose2d":
        stride, dil = _ints(config["stride"], 2), _ints(config["dilation"], 2)
        pad, opad = _ints(config["padding"], 2), _ints(config["output_padding"], 2)
        groups = config["groups"]
        if (x.ndim != 4 or w.ndim != 4 or None in (stride, dil, pad, opad)
                or not isinstance(groups, int) or isinstance(groups, bool)):
            return None
        n, c, h, wd = x.shape
        cin, cog, kh, kw = w.shape
        if (groups < 1 or cin != c or cin % groups or min(c, cog, kh, kw, h, wd) < 1
                or (b is not None and b.shape != (cog * groups,)) or min(stride + dil) < 1
                or min(pad + opad) < 0):
            return None
        oh = (h - 1) * stride[0] - 2 * pad[0] + dil[0] * (kh - 1) + opad[0] + 1
        ow = (wd - 1) * stride[1] - 2 * pad[1] + dil[1] * (kw - 1) + opad[1] + 1
        return (n, cog * groups, oh, ow) if min(oh, ow) >= 1 else None
    if layer_type in ("maxpool2d", "avgpool2d"):
        k, s, p = (_ints(config[key], 2) for key in ("kernel_size", "stride", "padding"))
        if x.ndim != 4 or None in (k, s, p) or min(x.shape[2:]) < 1:
            return None
        if min(k + s) < 1 or max(k + s) > big or min(p) < 0 or 2 * p[0] > k[0] \
                or 2 * p[1] > k[1]:
            return None
        ceil = bool(config["ceil_mode"])
        oh = pool2d_output_size(x.shape[2], k[0], s[0], p[0], ceil)
        ow = pool2d_output_size(x.shape[3], k[1], s[1], p[1], ceil)
        return x.shape[:2] + (oh, ow) if min(oh, ow) >= 1 else None
    if layer_type in ("relu", "sigmoid", "tanh", "gelu"):
        return x.shape
    if layer_type in ("leakyrelu", "elu", "scaledtanh"):
        keys = {"leakyrelu": ("negative_slope",), "elu": ("alpha",),
                "scaledtanh": ("amplitude", "slope")}[layer_type]
        return x.shape if all(_real_ok(config[k]) for k in keys) else None
    if layer_type in ("softmax", "logsoftmax"):
        axis = config["axis"]
        if not isinstance(axis, int) or isinstance(axis, bool) or not -x.ndim <= axis < x.ndim:
            return None
        return x.shape
    if layer_type == "dropout":
        p = config["p"]
        if not _real_ok(p) or not 0 <= float(p) < 1 or not isinstance(config["seed"], int):
            return None
        return x.shape
    if layer_type in ("batchnorm1d", "batchnorm2d"):
        if x.ndim < 2 or (w is None) != (b is None) or not _real_ok(config["eps"]):
            return None
        if not 0 < config["eps"] < math.inf:  # the layer's rule; 0 divides by zero
            return x.shape if x.size == 0 else None
        if w is not None and (w.shape != (x.shape[1],) or b.shape != (x.shape[1],)):
            return None
        return x.shape
    if layer_type in ("globalavgpool2d", "globalmaxpool2d"):
        return x.shape[:2] if x.ndim == 4 and min(x.shape[2:]) >= 1 else None
    if layer_type in ("clip", "relu6"):
        lo, hi = config["min"], config["max"]
        if not all(v is None or _real_ok(v) for v in (lo, hi)):
            return None
        return x.shape if lo is None or hi is None or lo <= hi else None
    if layer_type == "pad2d":
        pad = _ints(config["padding"], 4)
        if (x.ndim != 4 or pad is None or not _real_ok(config["value"])
                or config["mode"] not in ("constant", "reflect", "replicate")):
            return None
        top, bottom, left, right = pad
        kept = (x.shape[2] - max(-top, 0) - max(-bottom, 0),
                x.shape[3] - max(-left, 0) - max(-right, 0))
        if min(kept) < 1 or (config["mode"] == "reflect"
                             and (max(top, bottom) >= kept[0] or max(left, right) >= kept[1])):
            return None
        return (x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right)
    if layer_type == "upsample2d":
        k = _ints(config["scale_factor"], 2)
        if x.ndim != 4 or k is None or min(k) < 1:
            return None
        return (x.shape[0], x.shape[1], x.shape[2] * k[0], x.shape[3] * k[1])
    if layer_type == "subsampling":
        k = _ints(config["kernel_size"], 2)
        if x.ndim != 4 or k is None or min(k) < 1 or w.shape != (x.shape[1],) \
                or (b is not None and b.shape != (x.shape[1],)):
            return None
        oh, ow = x.shape[2] // k[0], x.shape[3] // k[1]
        return x.shape[:2] + (oh, ow) if min(oh, ow) >= 1 else None
    if layer_type == "dense":
        if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1] \
                or (b is not None and b.shape != (w.shape[0],)):
            return None
        return (x.shape[0], w.shape[0])
    if layer_type == "rbfoutput":
        codes = params["codes"]
        if not _float_ok(x, codes) or x.ndim != 2 or codes.ndim != 2 \
                or codes.shape[1] != x.shape[1]:
            return None
        return (x.shape[0], codes.shape[0])
    if layer_type == "zeropad2d":
        pad = _ints(config["padding"], 4)
        if x.ndim != 4 or pad is None or min(pad) < 0:
            return None
        return (x.shape[0], x.shape[1], x.shape[2] + pad[0] + pad[1], x.shape[3] + pad[2] + pad[3])
    raise AssertionError(f"no shape rule for layer type {layer_type!r}")


def geometry(*good, bad=(-1, 0)):
    """Mostly one of ``good``; sometimes one of ``bad``."""
    return mostly(st.sampled_from(good), st.sampled_from(bad), one_in=25)


def _pair_of(draw, values=None, n=2):
    """A tuple of n geometry values; sometimes not a tuple of n ints at all."""
    if draw(st.integers(0, 24), label="pair kind") == 24:
        return draw(st.sampled_from([None, 2, (1,), (1, 2, 3), ("1", 1), (1.5, 1), (True, 1)]))
    values = values if values is not None else geometry(1, 1, 2, 3)
    return tuple(draw(values) for _ in range(n))


def _param(draw, shape, x_dtype, name):
    """A parameter of ``shape``, usually in x's dtype; sometimes another dtype or layout."""
    kind = draw(mostly(st.just("same"), st.sampled_from(["other", "fortran", "list"]),
                       one_in=10), label=name)
    dtype = x_dtype if x_dtype.name in FLOATS else np.dtype(np.float32)
    rng = np.random.default_rng(len(shape))
    p = rng.uniform(-1, 1, size=shape).astype(dtype)
    if kind == "other":
        p = p.astype(draw(st.sampled_from(["float32", "float64", "float16", "int32"])))
    elif kind == "fortran":
        p = np.asfortranarray(p)
    elif kind == "list":
        p = p.tolist()
    return p


def _near(draw, value, label):
    """``value`` most of the time, otherwise something close or absurd."""
    if draw(st.integers(0, 9), label=label) != 9:
        return value
    return draw(st.sampled_from([0, 1, 2, value + 1, max(value - 1, 0)]), label=label + "*")


@st.composite
def kernel_calls(draw, layer_type):
    """(x, params, config, huge) for a direct call of a ``layer_type`` variant: mostly
    sensible, with one or several parts hostile."""
    four_d = layer_type in ("conv2d", "convtranspose2d", "maxpool2d", "avgpool2d",
                            "globalavgpool2d", "globalmaxpool2d", "subsampling", "zeropad2d",
                            "pad2d", "upsample2d")
    side = geometry(1, 2, 3, 4, 5, bad=(0,))
    # convolutions: channels a multiple of the groups, unless the groups are hostile
    g = draw(geometry(1, 1, 2, bad=(3, 0, -1)), label="groups")
    if four_d and draw(st.integers(0, 9), label="rank 4") != 9:
        plane = geometry(3, 4, 5, 6, bad=(0, 1))
        c = draw(geometry(1, 2, bad=(0,)), label="channels per group") * max(g, 1)
        shape = (draw(side), c, draw(plane), draw(plane))
    elif layer_type in ("dense", "rbfoutput") and draw(st.integers(0, 9), label="rank 2") != 9:
        shape = (draw(side), draw(side))
    else:
        shape = draw(shapes(0, 5, 4))
    x = draw(arrays(shape))
    c = shape[1] if len(shape) > 1 else 1
    params, config, huge = {}, {}, False
    if layer_type == "conv2d":
        cg = _near(draw, c // g if g > 0 and c % g == 0 else c, "cg")
        o = _near(draw, g * draw(st.integers(1, 2)) if g > 0 else 2, "o")
        kh, kw = draw(geometry(1, 2, 3, bad=(0,))), draw(geometry(1, 2, 3, bad=(0,)))
        params["weight"] = _param(draw, (o, cg, kh, kw) if draw(st.integers(0, 9)) != 9 else
                                  (o, cg, kh), x.dtype, "weight")
        params["bias"] = draw(mostly(st.sampled_from(["ok", None]), st.just("wrong")))
        stride = _pair_of(draw, geometry(1, 1, 2, 3, bad=(-1, 0, HUGE)))
        huge = isinstance(stride, tuple) and HUGE in stride
        config = {"stride": stride, "padding": _pair_of(draw, geometry(0, 0, 1, 2, bad=(-1, 50)),
                                                        4),
                  "dilation": _pair_of(draw, geometry(1, 1, 2, bad=(-1, 0, HUGE))),
                  "groups": g}
        huge = huge or (isinstance(config["dilation"], tuple) and HUGE in config["dilation"])
        out_c = o
    elif layer_type == "convtranspose2d":
        cog = draw(geometry(1, 2, 3, bad=(0,)))
        kh, kw = draw(geometry(1, 2, 3, bad=(0,))), draw(geometry(1, 2, 3, bad=(0,)))
        params["weight"] = _param(draw, (_near(draw, c, "cin"), cog, kh, kw), x.dtype, "weight")
        params["bias"] = draw(mostly(st.sampled_from(["ok", None]), st.just("wrong")))
        config = {"stride": _pair_of(draw), "padding": _pair_of(draw, geometry(0, 0, 1)),
                  "output_padding": _pair_of(draw, geometry(0, 0, 1, bad=(-1, 3))),
                  "dilation": _pair_of(draw), "groups": g}
        out_c = cog * g if g > 0 else 1
    elif layer_type in ("maxpool2d", "avgpool2d"):
        config = {"kernel_size": _pair_of(draw, geometry(1, 2, 3, bad=(-1, 0, HUGE))),
                  "stride": _pair_of(draw, geometry(1, 2, 3, bad=(-1, 0, HUGE))),
                  "padding": _pair_of(draw, geometry(0, 0, 0, 1, bad=(-1, 2))),
                  "ceil_mode": draw(st.booleans()), "count_include_pad": draw(st.booleans())}
        huge = any(isinstance(v, tuple) and HUGE in v for v in config.values())
    elif layer_type in ("leakyrelu", "elu", "scaledtanh", "gelu", "relu", "sigmoid", "tanh"):
        config = {"negative_slope": draw(reals), "alpha": draw(reals),
                  "amplitude": draw(reals), "slope": draw(reals),
                  "approximate": draw(st.sampled_from(["none", "tanh", None]))}
    elif layer_type in ("softmax", "logsoftmax"):
        config = {"axis": draw(mostly(st.sampled_from([1, -1, 0]),
                                      st.one_of(st.integers(-6, 6), st.sampled_from(["1", None]))))}
    elif layer_type == "dropout":
        config = {"p": draw(real(0.5, 0.0, 0.2)),
                  "seed": draw(st.sampled_from([0, 1, 2**63, -5, 2**70]))}
    elif layer_type in ("batchnorm1d", "batchnorm2d"):
        affine = draw(mostly(st.sampled_from(["both", "none"]),
                             st.sampled_from(["weight only", "wrong"])))
        cc = c if affine != "wrong" else c + 1
        if affine in ("both", "wrong"):
            params = {"weight": _param(draw, (cc,), x.dtype, "weight"),
                      "bias": _param(draw, (cc,), x.dtype, "bias")}
        elif affine == "weight only":
            params = {"weight": _param(draw, (cc,), x.dtype, "weight"), "bias": None}
        else:
            params = {"weight": None, "bias": None}
        config = {"eps": draw(real(1e-5, 1e-3))}
    elif layer_type == "subsampling":
        params = {"weight": _param(draw, (_near(draw, c, "channels"),), x.dtype, "weight"),
                  "bias": draw(mostly(st.sampled_from(["ok", None]), st.just("wrong")))}
        config = {"kernel_size": _pair_of(draw, geometry(1, 2, bad=(-1, 0, HUGE))),
                  "mode": draw(st.sampled_from(["sum", "average"]))}
        out_c = c
    elif layer_type == "dense":
        fin = _near(draw, shape[1] if len(shape) > 1 else 1, "in_features")
        o = draw(geometry(1, 2, 3, bad=(0,)))
        params = {"weight": _param(draw, (o, fin), x.dtype, "weight"),
                  "bias": draw(mostly(st.sampled_from(["ok", None]), st.just("wrong")))}
        out_c = o
    elif layer_type == "zeropad2d":
        config = {"padding": _pair_of(draw, geometry(0, 1, 2, bad=(-1,)), 4)}
    elif layer_type == "pad2d":
        config = {"padding": _pair_of(draw, geometry(0, 1, 2, -1, bad=(-9, 9)), 4),
                  "mode": draw(mostly(st.sampled_from(["constant", "reflect", "replicate"]),
                                      st.sampled_from(["edge", None]))),
                  "value": draw(real(0.0, 1.5))}
    elif layer_type == "upsample2d":
        config = {"scale_factor": _pair_of(draw, geometry(1, 2, 3, bad=(-1, 0)))}
    elif layer_type in ("clip", "relu6"):
        config = {"min": draw(mostly(real(-0.5, 0.0), st.none())),
                  "max": draw(mostly(real(0.5, 6.0), st.none()))}
    elif layer_type == "rbfoutput":
        fin = _near(draw, shape[1] if len(shape) > 1 else 1, "in_features")
        params = {"codes": _param(draw, (draw(geometry(1, 2, 3, bad=(0,))), fin), x.dtype,
                                  "codes")}
    if isinstance(params.get("bias"), str):
        size = out_c if params["bias"] == "ok" else out_c + 1
        params["bias"] = _param(draw, (max(size, 0),), x.dtype, "bias")
    return x, params, config, huge


def _hostile_dy(draw, y, x):
    """(kind, dy) for a backward call after a forward that returned y."""
    kind = draw(st.sampled_from(["ok", "ok", "strided", "shape", "rank", "dtype", "list"]),
                label="dy")
    rng = np.random.default_rng(3)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    if kind == "strided" and y.ndim:
        dy = np.repeat(dy, 2, axis=-1)[..., ::2]
    elif kind == "shape" and y.ndim:
        dy = np.zeros(y.shape[:-1] + (y.shape[-1] + 1,), dtype=y.dtype)
    elif kind == "rank":
        dy = dy[None] if dy.ndim < 2 else dy.reshape(dy.shape[0], math.prod(dy.shape[1:]))
        if dy.shape == y.shape:
            kind = "ok"
    elif kind == "dtype":
        dy = dy.astype(draw(st.sampled_from(["float16", "int32", "float32", "float64"])))
        if dy.dtype == y.dtype:
            kind = "ok"
    elif kind == "list":
        dy = dy.tolist()
    elif y.ndim == 0:
        kind = "ok"
    return kind, dy


#: compiled variants: held to the strict contract (every invalid call refused cleanly)
COMPILED = ("cython", "winograd", "direct")


def is_compiled(name):
    """A compiled variant: the portable build, an instruction-set build of it, or winograd."""
    return name in COMPILED or name.rpartition("-")[0] in COMPILED


def _call_variant(variant, x, params, config, dy_draw):
    """Forward (and backward) of one variant; returns (y, dx, outcome) and enforces the
    contract for a direct call of that variant."""
    impl = variant.impl
    cython = is_compiled(variant.name)
    expected = _expected_shape(variant.layer_type, x, params, config)
    # the NumPy reference must compute what a layer could send: no empty arrays, no lists
    strict = expected is not None and (cython or (x.size > 0 and all(
        p is None or isinstance(p, np.ndarray) for p in params.values())))
    try:
        y, ctx = impl.forward(x, params, config, True)
    except Exception as exc:  # noqa: BLE001 - which exceptions are allowed is checked here
        if cython or strict:
            assert isinstance(exc, (ValueError, TypeError)), \
                f"{variant.name} {variant.layer_type}: {type(exc).__name__}: {exc}"
            assert str(exc), f"{variant.name} {variant.layer_type}: empty message"
        if strict and not cython:
            raise AssertionError(f"numpy {variant.layer_type} refused a valid call: {exc!r}")
        event(f"{variant.name}: forward refused")
        return None, None
    if expected is None and _has_str(config):  # "2" for 2: coercing it is fine too
        event(f"{variant.name}: forward computed a config with strings")
        return None, None
    if expected is None:
        assert not cython, (f"{variant.name} {variant.layer_type} computed an invalid call: x "
                            f"{x.shape} {x.dtype}, params "
                            f"{ {k: getattr(v, 'shape', v) for k, v in params.items()} }, "
                            f"config {config}, returned {getattr(y, 'shape', y)}")
        event(f"{variant.name}: forward computed invalid input")
        return None, None
    event(f"{variant.name}: forward computed")
    # (a NumPy variant may hand back a NumPy scalar for a 0-d input; no layer sends one)
    assert isinstance(y, np.ndarray) or not cython, type(y)
    assert np.shape(y) == expected, (variant.name, np.shape(y), expected)
    assert np.asarray(y).dtype == x.dtype, (variant.name, np.asarray(y).dtype, x.dtype)
    y = np.asarray(y)
    kind, dy = dy_draw(y)
    try:
        dx, grads = impl.backward(dy, ctx)
    except Exception as exc:  # noqa: BLE001
        if cython or kind in ("ok", "strided"):
            assert isinstance(exc, (ValueError, TypeError)) and str(exc), \
                f"{variant.name} {variant.layer_type} backward: {type(exc).__name__}: {exc}"
        assert kind not in ("ok", "strided"), \
            f"{variant.name} {variant.layer_type} backward refused a valid dy: {exc!r}"
        event(f"{variant.name}: backward refused ({kind})")
        return y, None
    if kind == "shape" or kind == "rank":
        assert not cython, f"{variant.name} {variant.layer_type} backward accepted dy {np.shape(dy)}"
        return y, None
    if cython or kind in ("ok", "strided"):
        assert isinstance(dx, np.ndarray) or not cython, type(dx)
        assert np.shape(dx) == x.shape, (variant.name, np.shape(dx), x.shape)
        assert isinstance(grads, dict)
        for key, g in grads.items():
            assert g.shape == np.shape(params[key]), (key, g.shape)
    event(f"{variant.name}: backward computed")
    return y, (dx if kind in ("ok", "strided") else None)


LAYER_TYPES = ("conv2d", "convtranspose2d", "maxpool2d", "avgpool2d", "relu", "sigmoid",
               "tanh", "leakyrelu", "elu", "gelu", "scaledtanh", "softmax", "logsoftmax",
               "dropout", "batchnorm1d", "batchnorm2d", "globalavgpool2d", "subsampling",
               "dense", "zeropad2d", "globalmaxpool2d", "clip", "relu6", "pad2d",
               "upsample2d", "rbfoutput")


def test_every_builtin_variant_is_fuzzed():
    registered = {lt for lt, vs in ck.get_registry().variants.items()
                  if any(v.plugin.startswith("cnnkit.builtin") for v in vs.values())}
    assert registered == set(LAYER_TYPES)


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
@FUZZ
@given(data=st.data())
def test_fuzz_kernel_entry_points(layer_type, data):
    x, params, config, huge = data.draw(kernel_calls(layer_type))
    variants = ck.get_registry().variants[layer_type]
    results = {}
    for name in builtin_impls(layer_type):
        if huge and not is_compiled(name):
            event("numpy: skipped (huge geometry)")
            continue  # the NumPy reference would allocate the huge geometry
        before = np.array(x, copy=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[name] = _call_variant(variants[name], x, params, config,
                                          lambda y: _hostile_dy(data.draw, y, x))
        np.testing.assert_array_equal(x, before)  # never mutated
    # where a compiled variant and the reference both computed a valid call on finite input,
    # they agree
    yn = results.get("numpy", (None,))[0]
    for name, (yc, _) in results.items():
        if is_compiled(name) and yc is not None and yn is not None and np.all(np.isfinite(x)) \
                and np.all(np.isfinite(yn)):
            assert_close(yc, yn, tol=1e-3 if x.dtype == np.float32 else 1e-8)
