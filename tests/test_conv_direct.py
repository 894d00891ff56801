"""conv2d's "direct" variants: register-blocked stride-1 loops without im2col (the portable
build, and the AVX2 / AVX-512 builds where this CPU has the features).  The conformance kit and
the fuzz suite check them against the NumPy reference; these tests pin what is particular to
them: the domain they refuse, non-finite inputs, the bottom/right padding that follows from the
output shape, and automatic selection."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit._cpu import missing_cpu_features
from cnnkit._ext import ISA_FEATURES
from cnnkit._ext import conv as _conv
from cnnkit.builtin import conv as builtin_conv
from cnnkit.plugins import SelectionError

DIRECT = ["direct"] + [f"direct-{isa}" for isa in ISA_FEATURES
                       if not missing_cpu_features(ISA_FEATURES[isa])]


def _loop_conv(x, w, b, pads):
    """Plain loops: y[n, o, r, s] = b[o] + sum x_padded[n, c, r + i, s + j] * w[o, c, i, j]."""
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, _, hp, wp = xp.shape
    o, c, kh, kw = w.shape
    y = np.zeros((n, o, hp - kh + 1, wp - kw + 1))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + y.shape[2], j:j + y.shape[3]]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("impl", DIRECT)
@pytest.mark.parametrize("kernel, padding, shape", [
    (5, 2, (3, 1, 11, 9)), (5, 0, (2, 6, 14, 14)), (3, "same", (2, 5, 7, 10)),
    (4, "same", (2, 3, 9, 8)),          # even kernel: "same" pads one more at the bottom/right
    (1, 0, (2, 7, 5, 5)), ((2, 3), (1, 2), (3, 2, 6, 13)),
    (3, 4, (2, 2, 5, 6))])              # padding beyond the kernel: all-zero rows and columns
def test_forward_and_gradients_match_loops_and_finite_differences(impl, kernel, padding, shape):
    rng = np.random.default_rng(0)
    layer = L.Conv2D(shape[1], 6, kernel, padding=padding, impl=impl, dtype=np.float64, rng=0)
    layer.params["bias"][...] = rng.standard_normal(6)
    x = rng.standard_normal(shape)
    y = layer.forward(x, training=True)
    assert layer._ctx[0].name == impl
    res = layer.resolution(shape)
    want = _loop_conv(x, layer.params["weight"], layer.params["bias"], res.config["padding"])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    # finite differences of <conv(x), dy> along random directions
    eps = 1e-6
    for _ in range(3):
        v = rng.standard_normal(x.shape)
        num = (np.vdot(_loop_conv(x + eps * v, layer.params["weight"], layer.params["bias"],
                                  res.config["padding"]), dy)
               - np.vdot(_loop_conv(x - eps * v, layer.params["weight"], layer.params["bias"],
                                    res.config["padding"]), dy)) / (2 * eps)
        assert abs(np.vdot(dx, v) - num) <= 1e-6 * max(1.0, abs(num))
        u = rng.standard_normal(layer.params["weight"].shape)
        w = layer.params["weight"]
        num = (np.vdot(_loop_conv(x, w + eps * u, layer.params["bias"], res.config["padding"]), dy)
               - np.vdot(_loop_conv(x, w - eps * u, layer.params["bias"],
                                    res.config["padding"]), dy)) / (2 * eps)
        assert abs(np.vdot(layer.grads["weight"], u) - num) <= 1e-6 * max(1.0, abs(num))
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("impl", DIRECT)
def test_non_finite_inputs_give_the_references_nan_pattern(impl):
    """The weight-gradient loop multiplies the dropped grid columns by zero: an inf there would
    turn into NaN where the reference has a finite value, so such inputs take im2col's path."""
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 7))
    x[0, 1, 3, 6] = np.inf  # last column: read by the dropped columns of the other taps
    x[1, 0, 0, 0] = np.nan
    dy = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    got, ref = (L.Conv2D(2, 3, 3, impl=i, dtype=np.float64, rng=0) for i in (impl, "numpy"))
    for layer in (got, ref):
        layer.forward(x, training=True)
        layer.backward(dy)
    for key in ("weight", "bias"):
        a, b = got.grads[key], ref.grads[key]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[np.isfinite(b)], b[np.isfinite(b)], rtol=1e-12)


@pytest.mark.parametrize("kwargs, why", [
    ({"stride": 2}, "stride"), ({"dilation": 2}, "dilation"), ({"groups": 2}, "groups")])
def test_configurations_outside_the_domain_are_refused_with_a_reason(kwargs, why):
    layer = L.Conv2D(4, 4, 3, impl="direct", **kwargs)
    with pytest.raises(SelectionError, match=why):
        layer.variant(np.float32, (1, 4, 9, 9))
    auto = L.Conv2D(4, 4, 3, **kwargs)  # automatic selection goes elsewhere
    assert not auto.variant(np.float32, (1, 4, 9, 9)).name.startswith("direct")


def test_a_build_without_the_kernels_says_so(monkeypatch):
    monkeypatch.setattr(_conv, "direct_available", lambda: False)
    with pytest.raises(SelectionError, match="no vector extensions"):
        L.Conv2D(1, 2, 3, impl="direct").variant(np.float32, (1, 1, 5, 5))


def test_automatic_selection_takes_the_fastest_build_for_few_taps_only():
    small = L.Conv2D(6, 16, 5)                   # LeNet's conv2: 150 taps per output
    big = L.Conv2D(64, 64, 5, padding=2)         # 1600 taps: im2col + GEMM
    picked = small.variant(np.float32, (8, 6, 14, 14)).name
    isa = [n for n in DIRECT if n != "direct"]
    assert picked == (max(isa, key=lambda n: ck.get_registry().variants["conv2d"][n].priority)
                      if isa else "cython")
    assert big.variant(np.float32, (8, 64, 14, 14)).name == "cython"
    assert builtin_conv.direct_auto_refusal({"channels": (64, 64), "kernel_size": (5, 5)})
