"""The dedicated 2x2 and 3x3 stride-2 loops of the compiled pooling kernels, against PyTorch.

The Cython variant reduces the windows that lie wholly inside the input with row loops of its
own and walks the others (padding, ceil-mode overhang, odd sizes) one window at a time; the
row loops compare with a plain ``>`` and hand rows holding a NaN to the walk.  Each seam is
checked here: sizes that leave a remainder row or column, rows wide enough for the vectorised
loop body, a NaN at every place of a window, windows of -inf, and the compact (uint8) argmax
that backward reads.  Max pooling must agree with ``torch.nn.functional.max_pool2d`` exactly,
gradient included; average pooling within rounding.
"""
import numpy as np
import pytest

from cnnkit import layers as L
from cnnkit.builtin import pool as Bpool

torch = pytest.importorskip("torch", reason="PyTorch not installed: the peer comparison needs torch")
F = torch.nn.functional

# kernel, padding, ceil_mode (stride 2)
GEOMETRIES = [(2, 0, False), (2, 1, False), (2, 0, True), (2, 1, True),
              (3, 0, False), (3, 1, False), (3, 0, True), (3, 1, True)]
GEOMETRY_IDS = [f"k{k}-p{p}-{'ceil' if c else 'floor'}" for k, p, c in GEOMETRIES]
# odd and even sides; 70 and 41 columns give rows of 20-35 windows (the vectorised body)
SHAPES = [(1, 2, 7, 9), (2, 3, 8, 8), (1, 1, 13, 41), (2, 2, 6, 70), (1, 1, 3, 3)]


def _torch_pool(kind, x, dy, k, p, ceil):
    tx = torch.tensor(x, requires_grad=True)
    if kind == "max":
        ty = F.max_pool2d(tx, k, 2, p, ceil_mode=ceil)
    else:
        ty = F.avg_pool2d(tx, k, 2, p, ceil_mode=ceil)
    ty.backward(torch.tensor(dy))
    return ty.detach().numpy(), tx.grad.numpy()


def _ours(kind, x, k, p, ceil, dy_seed=0):
    cls = L.MaxPool2D if kind == "max" else L.AvgPool2D
    layer = cls(k, stride=2, padding=p, ceil_mode=ceil, impl="cython")
    y = layer.forward(x, training=True)
    # distinct integer gradients: one sent to the wrong place is visible, and sums are exact
    dy = (np.random.default_rng(dy_seed).permutation(y.size).reshape(y.shape) + 1).astype(x.dtype)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(layer.forward(x, training=False), y)
    return y, dy, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fast_paths_match_torch(kind, geometry, shape, dtype):
    k, p, ceil = geometry
    if shape[2] + 2 * p < k or shape[3] + 2 * p < k:
        pytest.skip("window larger than the padded input")
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    y, dy, dx = _ours(kind, x, k, p, ceil)
    ty, tdx = _torch_pool(kind, x, dy, k, p, ceil)
    if kind == "max":
        np.testing.assert_array_equal(y, ty)
        np.testing.assert_array_equal(dx, tdx)
    else:
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(y, ty, rtol=tol, atol=tol)
        np.testing.assert_allclose(dx, tdx, rtol=tol, atol=tol * 100)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_ties_match_torch(geometry):
    """Small integers: most windows hold their maximum several times, inside and at the edges."""
    k, p, ceil = geometry
    x = np.random.default_rng(2).integers(0, 3, (2, 2, 11, 45)).astype(np.float32)
    y, dy, dx = _ours("max", x, k, p, ceil)
    ty, tdx = _torch_pool("max", x, dy, k, p, ceil)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tdx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", [(2, 0, False), (3, 1, False), (3, 0, True)],
                         ids=["k2", "k3-p1", "k3-ceil"])
def test_a_nan_wins_wherever_it_sits(geometry, dtype):
    """One NaN per window (PyTorch keeps the last of several, cnnkit the first), moved over
    every place of an interior window and over the edge windows."""
    k, p, ceil = geometry
    # 10 x 38: every input lies in some window of these geometries
    base = np.random.default_rng(3).standard_normal((1, 1, 10, 38)).astype(dtype)
    for r in range(k):
        for c in range(k):
            for r0, c0 in [(4 - p, 14 - p), (0, 0), (0, 37 - c), (9 - r, 10)]:
                x = base.copy()
                x[0, 0, min(r0 + r, 9), min(c0 + c, 37)] = np.nan
                y, dy, dx = _ours("max", x, k, p, ceil)
                ty, tdx = _torch_pool("max", x, dy, k, p, ceil)
                assert np.isnan(y).any()
                np.testing.assert_array_equal(y, ty)
                np.testing.assert_array_equal(dx, tdx)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_windows_of_minus_infinity_match_torch(geometry):
    """-inf equals -inf: the first in-input position of the window gets the gradient."""
    k, p, ceil = geometry
    x = np.full((1, 2, 9, 41), -np.inf, dtype=np.float32)
    x[0, 1, ::3, ::5] = 1.0
    y, dy, dx = _ours("max", x, k, p, ceil)
    ty, tdx = _torch_pool("max", x, dy, k, p, ceil)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tdx)


def test_argmax_is_one_byte_per_output_and_kept_only_for_training():
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    config = {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": False}
    _, ctx = Bpool.MaxPool2dCython.forward(x, {}, config, True)
    argmax = ctx[2]
    assert argmax.dtype == np.uint8 and argmax.shape == (2, 3, 4, 4)
    assert argmax.max() < 9
    assert Bpool.MaxPool2dCython.forward(x, {}, config, False)[1] is None


def test_windows_past_one_byte_keep_int32_positions():
    """17 x 17 = 289 window positions do not fit a byte: the int32 argmax, same results."""
    x = np.random.default_rng(5).standard_normal((1, 2, 20, 19))
    config = {"kernel_size": (17, 17), "stride": (2, 1), "padding": (3, 8), "ceil_mode": True}
    y, ctx = Bpool.MaxPool2dCython.forward(x, {}, config, True)
    assert ctx[2].dtype == np.intc
    y0, ctx0 = Bpool.MaxPool2dNumpy.forward(x, {}, config, True)
    np.testing.assert_array_equal(y, y0)
    dy = np.random.default_rng(6).standard_normal(y.shape)
    np.testing.assert_allclose(Bpool.MaxPool2dCython.backward(dy, ctx)[0],
                               Bpool.MaxPool2dNumpy.backward(dy, ctx0)[0], rtol=1e-14, atol=1e-14)


def test_kernel_refuses_an_argmax_that_does_not_fit():
    from cnnkit._ext import pool as _pool

    x = np.zeros((1, 1, 4, 4), np.float32)
    y = np.empty((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="argmax"):
        _pool.maxpool2d_forward(x, y, np.empty((1, 1, 2, 3), np.uint8), 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="argmax"):
        _pool.maxpool2d_forward(x, y, np.empty((1, 1, 2, 2), np.int64), 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="argmax"):
        _pool.maxpool2d_backward(y, None, x, 2, 2, 2, 2, 0, 0)
