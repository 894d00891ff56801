"""The vector kernels of 2x2 and 3x3 stride-2 max pooling, in every compiled build of the pool
family.

Interior windows are reduced a vector of windows at a time (4, 8 or 16 float32 windows, half as
many float64 ones, by build; the last vector of a row overlaps the one before), rows of fewer
windows than a vector by the scalar row loop, and a plane holding a NaN by the scalar loops
again.  The seams checked here: rows of whole vectors, of one window more or less, of fewer
windows than a vector; windows hanging over the padding or past the input (ceil mode); ties
(the first maximum in row-major order wins, the sign of a zero included), infinities, and a
NaN at each place of each lane of a vector.  The oracle is a plain loop over each window
(``_window_max`` below), which shares nothing with the kernels.
"""
import math

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit._ext import pool as _pool

import _reference as ref

_VARIANTS = ck.get_registry().variants["maxpool2d"]
#: the compiled builds: the portable one and the instruction-set ones this CPU can run
BUILDS = [name if _VARIANTS[name].unavailable() is None
          else pytest.param(name, marks=pytest.mark.skip(reason=f"{name}: "
                                                                f"{_VARIANTS[name].unavailable()}"))
          for name in sorted(_VARIANTS) if name.startswith("cython")]

#: widths giving rows of 1..35 2x2 windows: whole vectors of 2, 4, 8 and 16 lanes, and one
#: window more or less than each (one column more gives as many 3x3 windows)
WIDTHS = [2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 34, 35, 63, 64, 65, 66, 67, 70]
KERNELS = [2, 3]


def _window_max(x, k, s, p, ceil):
    """(y, first position inside each window) by a plain loop: the first maximum in row-major
    order, a NaN above every number (the first NaN wins), padding never."""
    n, c, h, w = x.shape
    oh = ref.pool_output_size(h, k, s, p, ceil)
    ow = ref.pool_output_size(w, k, s, p, ceil)
    y = np.empty((n, c, oh, ow), x.dtype)
    at = np.empty((n, c, oh, ow), np.int64)
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where = None, None
                    for u in range(k):
                        for v in range(k):
                            r, q = i * s - p + u, j * s - p + v
                            if not (0 <= r < h and 0 <= q < w):
                                continue
                            val = x[a, ch, r, q]
                            if (best is None or val > best
                                    or (math.isnan(val) and not math.isnan(best))):
                                best, where = val, u * k + v
                    y[a, ch, i, j], at[a, ch, i, j] = best, where
    return y, at


def _kernels(build):
    return _VARIANTS[build].impl._kernels


def _run(build, x, k=2, p=0, ceil=False):
    """The kernel's y and uint8 argmax, y again without the argmax, and the layer's dx."""
    config = {"kernel_size": (k, k), "stride": (2, 2), "padding": (p, p), "ceil_mode": ceil}
    impl = _VARIANTS[build].impl
    y, ctx = impl.forward(x, {}, config, True)
    y_only, _ = impl.forward(x, {}, config, False)
    dy = (np.random.default_rng(0).permutation(y.size).reshape(y.shape) + 1).astype(x.dtype)
    dx, _ = impl.backward(dy, ctx)
    return y, ctx[2], y_only, dy, dx


def _check(build, x, k=2, p=0, ceil=False):
    y, argmax, y_only, dy, dx = _run(build, x, k, p, ceil)
    ey, eat = _window_max(x, k, 2, p, ceil)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(ey))  # -0.0 == 0.0 otherwise
    np.testing.assert_array_equal(y_only, ey)
    np.testing.assert_array_equal(np.signbit(y_only), np.signbit(ey))
    np.testing.assert_array_equal(argmax, eat)
    np.testing.assert_array_equal(dx, ref.maxpool2d_backward(x, dy, (k, k), (2, 2), (p, p), ceil))
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("k", KERNELS)
def test_rows_of_every_length_match_the_loop(k, width, build, dtype):
    x = np.random.default_rng(width).standard_normal((2, 3, 5, width + k - 2)).astype(dtype)
    _check(build, x, k)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("geometry", [(1, False), (0, True), (1, True)],
                         ids=["p1", "ceil", "p1-ceil"])
@pytest.mark.parametrize("shape", [(1, 2, 7, 35), (1, 2, 6, 66), (2, 1, 9, 67), (1, 1, 4, 3)],
                         ids=["7x35", "6x66", "9x67", "4x3"])
@pytest.mark.parametrize("k", KERNELS)
def test_edge_windows_around_the_vectors(k, shape, geometry, build):
    """Padding and the ceil-mode overhang move the interior off the row's start and end."""
    p, ceil = geometry
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    _check(build, x, k, p, ceil)


def _windows_side_by_side(windows, k, dtype):
    """One row of k x k windows holding ``windows`` (each k*k values in row-major order) at
    every other window position, so that no two of them share a column (the windows between
    them overlap both and are checked all the same)."""
    x = np.zeros((1, 1, k, 4 * len(windows) + k - 2), dtype)
    for t, values in enumerate(windows):
        x[0, 0, :, 4 * t:4 * t + k] = np.reshape(values, (k, k))
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("k", KERNELS)
def test_ties_and_signed_zeros_keep_the_first_maximum(k, build, dtype):
    """Every arrangement of two levels over the places of a window, and of -0.0 / +0.0: the
    first maximum's position and its sign of zero."""
    windows = [[hi if bits >> b & 1 else lo for b in range(k * k)]
               for lo, hi in [(1.0, 2.0), (-0.0, 0.0), (0.0, -0.0)]
               for bits in range(2 ** (k * k))]
    y = _check(build, _windows_side_by_side(windows, k, dtype), k)
    assert np.signbit(y).any() and not np.signbit(y).all()  # both zeros came out somewhere


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("k", KERNELS)
def test_infinities(k, build, dtype):
    rng = np.random.default_rng(8)
    x = rng.choice(np.array([-np.inf, np.inf, -1.0, 0.0, 1.0], dtype), (2, 2, 6, 66))
    _check(build, x, k)
    _check(build, np.full((1, 1, 4, 64), -np.inf, dtype), k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("k", KERNELS)
def test_a_nan_anywhere_in_a_vector_propagates(k, build, dtype):
    """A NaN at each place of each of 32 windows in turn (the lanes of every vector width),
    in one plane of several; the other planes stay on the vector kernel."""
    base = np.random.default_rng(9).standard_normal((1, 3, 5, 64 + k - 2)).astype(dtype)
    for col in range(64 + k - 2):
        for row in range(k):
            x = base.copy()
            x[0, 1, 2 + row, col] = np.nan
            y = _check(build, x, k)
            assert np.isnan(y[0, 1, 1, min(col // 2, 31)]) and np.isnan(y[0, [0, 2]]).sum() == 0


@pytest.mark.parametrize("build", BUILDS)
def test_several_nans_and_infinities_in_one_window(build):
    """The first NaN wins the argmax, whatever follows it; inf never hides a NaN."""
    x = np.random.default_rng(10).standard_normal((1, 1, 2, 32)).astype(np.float32)
    x[0, 0, 0, 2], x[0, 0, 1, 3] = np.inf, np.nan  # window 1: inf then NaN
    x[0, 0, 0, 9], x[0, 0, 1, 8] = np.nan, np.nan  # window 4: two NaNs
    x[0, 0, 1, 20], x[0, 0, 1, 21] = np.nan, np.inf  # window 10: NaN then inf
    y = _check(build, x)
    assert np.isnan(y[0, 0, 0, [1, 4, 10]]).all() and np.isnan(y).sum() == 3


def test_the_portable_build_has_vectors_where_the_compiler_has_vector_extensions():
    """16-byte vectors in the portable build; 0 only where the compiler lacks GCC/Clang vector
    extensions (then every window goes through the scalar loops, checked above all the same)."""
    assert _pool.vector_bytes() in (0, 16)
    for build in ("cython-avx2", "cython-avx512"):
        if build in _VARIANTS and _VARIANTS[build].unavailable() is None:
            assert _kernels(build).vector_bytes() == {"cython-avx2": 32, "cython-avx512": 64}[build]


def test_the_layer_agrees_with_torch_on_ties_and_zeros():
    """The same rule as PyTorch's max_pool2d on its own ground: ties and signed zeros."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the peer comparison "
                                                "needs torch")
    rng = np.random.default_rng(11)
    x = rng.choice(np.array([-0.0, 0.0, 1.0], np.float32), (2, 3, 8, 66))
    layer = L.MaxPool2D(2, impl="cython")
    y = layer.forward(x, training=True)
    dy = (rng.permutation(y.size).reshape(y.shape) + 1).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 2, 2)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(np.signbit(y), np.signbit(ty.detach().numpy()))
    np.testing.assert_array_equal(dx, tx.grad.numpy())
