"""Property-based fuzzing of the public layers and losses (hypothesis).

Every generated case must either give the reference (NumPy variant) answer or raise a
``ValueError``/``TypeError`` that names the layer: never a crash, never a wrong shape or value.
The example budget is ``CNNKIT_FUZZ_EXAMPLES`` (default 60 per test) and the search is
derandomised, so CI runs the same cases every time.
"""
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cnnkit as ck
from cnnkit import layers as L

EXAMPLES = int(os.environ.get("CNNKIT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

small = st.integers(min_value=-1, max_value=4)
dims = st.integers(min_value=0, max_value=9)


@st.composite
def arrays(draw, shape):
    """An input of ``shape`` in a random dtype and memory layout, maybe with NaN/Inf."""
    dtype = draw(st.sampled_from(["float32", "float64", "float64", "float32", "float16", "int32"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e-3, 1e4]))
    if draw(st.booleans()) and base.size:
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


def _names_layer(exc, layer_name, cls_name):
    text = str(exc)
    return layer_name in text or cls_name in text


def _reference(layer, x):
    """The NumPy variant's answer on a clean C-contiguous copy."""
    impl, key = layer.impl, layer._variant_key
    try:
        layer.impl, layer._variant_key = "numpy", None
        return layer.forward(np.ascontiguousarray(x), training=False)
    finally:
        layer.impl, layer._variant_key = impl, None


def check_layer(layer, x):
    owner = type(layer).__name__
    before = np.array(x, copy=True)
    try:
        y = layer.forward(x, training=False)
    except (ValueError, TypeError) as exc:
        assert _names_layer(exc, layer.name, owner), f"error does not name the layer: {exc}"
        event(f"{owner}: refused ({type(exc).__name__})")
        return
    event(f"{owner}: computed")
    np.testing.assert_array_equal(x, before)  # never mutated
    assert y.dtype == x.dtype
    expected_shape = layer.output_shape((None,) + x.shape[1:])
    assert y.shape == (x.shape[0],) + tuple(expected_shape[1:])
    ref = _reference(layer, x)
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    scale = np.nanmax(np.abs(np.where(np.isfinite(ref), ref, 0)), initial=1.0)
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * scale, equal_nan=True)
    dy = np.ones_like(y)
    layer.forward(x, training=True)
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype


@FUZZ
@given(data=st.data(), n=dims, c=st.integers(0, 6), h=dims, w=dims, cout=st.integers(0, 6),
       k=small, s=small, p=st.one_of(small, st.sampled_from(["same", "valid", 50])),
       d=small, g=st.integers(0, 3), bias=st.booleans())
def test_fuzz_conv2d(data, n, c, h, w, cout, k, s, p, d, g, bias):
    try:
        layer = L.Conv2D(c, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias, rng=0)
    except (ValueError, TypeError) as exc:
        assert "Conv2D" in str(exc), exc
        return
    x = data.draw(arrays((n, c, h, w)))
    if x.dtype == np.float64:
        layer.astype(np.float64)
    check_layer(layer, x)


@FUZZ
@given(data=st.data(), cls=st.sampled_from([L.MaxPool2D, L.AvgPool2D]), n=dims,
       c=st.integers(0, 4), h=dims, w=dims, k=small, s=st.one_of(st.none(), small),
       p=st.integers(-1, 3), ceil=st.booleans())
def test_fuzz_pooling(data, cls, n, c, h, w, k, s, p, ceil):
    try:
        layer = cls(k, stride=s, padding=p, ceil_mode=ceil)
    except (ValueError, TypeError) as exc:
        assert cls.__name__ in str(exc), exc
        return
    check_layer(layer, data.draw(arrays((n, c, h, w))))


@FUZZ
@given(data=st.data(), cls=st.sampled_from([L.ReLU, L.Sigmoid, L.Tanh]),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=5))
def test_fuzz_activations(data, cls, shape):
    check_layer(cls(), data.draw(arrays(tuple(shape))))


@FUZZ
@given(data=st.data(), n=dims, fin=st.integers(-1, 6), fout=st.integers(-1, 6),
       xin=st.integers(0, 6), bias=st.booleans())
def test_fuzz_dense(data, n, fin, fout, xin, bias):
    try:
        layer = L.Dense(fin, fout, bias=bias, rng=0)
    except (ValueError, TypeError) as exc:
        assert "Dense" in str(exc), exc
        return
    x = data.draw(arrays((n, xin)))
    if x.dtype == np.float64:
        layer.astype(np.float64)
    check_layer(layer, x)


@FUZZ
@given(data=st.data(), n=st.integers(0, 5), k=st.integers(0, 5))
def test_fuzz_softmax_cross_entropy(data, n, k):
    logits = data.draw(arrays((n, k)))
    labels = np.asarray(data.draw(st.lists(st.integers(-1, 5), min_size=n, max_size=n)),
                        dtype=np.int64)
    loss = ck.losses.SoftmaxCrossEntropy()
    try:
        value = loss.forward(logits, labels)
    except (ValueError, TypeError) as exc:
        assert re.search("SoftmaxCrossEntropy", str(exc)), exc
        return
    assert np.isfinite(value)
    g = loss.backward()
    assert g.shape == logits.shape and np.all(np.isfinite(g))
