"""MaxPool2D on inputs full of ties: the gradient goes to the FIRST maximum of each window in
row-major order (PyTorch's rule on CPU).

Every other pool test draws tie-free inputs, where the rule is invisible.  Here the inputs are
small integers, constant planes and windows that overlap (stride < kernel) or hang over the
padding, and the backward pass of each built-in variant is compared with a plain-loop reference
(``_reference.maxpool2d_backward``) and with ``torch.nn.functional.max_pool2d``."""
import numpy as np
import pytest

from cnnkit import layers as L

import _reference as ref

TORCH_REASON = "PyTorch not installed: the peer comparison needs torch"
IMPLS = ["numpy", "cython"]

# kernel, stride, padding, ceil_mode
CONFIGS = [
    ((2, 2), (2, 2), (0, 0), False),
    ((3, 3), (1, 1), (0, 0), False),  # heavy overlap: one maximum is shared by many windows
    ((3, 2), (2, 1), (1, 1), False),  # padding: windows partly outside the input
    ((2, 3), (1, 2), (1, 1), True),   # ceil mode: windows hanging past the padding
    ((4, 4), (3, 3), (2, 2), True),
]
CONFIG_IDS = [f"k{k[0]}x{k[1]}-s{s[0]}x{s[1]}-p{p[0]}x{p[1]}-{'ceil' if c else 'floor'}"
              for k, s, p, c in CONFIGS]


def tie_inputs():
    rng = np.random.default_rng(7)
    shape = (2, 3, 7, 8)
    return {
        "small_integers": rng.integers(0, 3, shape).astype(np.float64),
        "constant": np.full(shape, 1.5),
        "zeros": np.zeros(shape),
        "binary": rng.integers(0, 2, shape).astype(np.float64),
        # equal runs along each row, and every row the same: ties in both directions
        "runs": np.broadcast_to(np.arange(8.0) // 3, shape).copy(),
        # all-negative windows that reach into the padding: the padding must never win
        "negative": -1.0 - rng.integers(0, 2, shape).astype(np.float64),
    }


INPUTS = tie_inputs()


def _layer(config, impl):
    k, s, p, c = config
    return L.MaxPool2D(k, stride=s, padding=p, ceil_mode=c, impl=impl)


def _backward(layer, x, seed=0):
    y = layer.forward(x, training=True)
    # distinct gradient values, so a gradient sent to the wrong tied position is visible
    dy = np.random.default_rng(seed).permutation(y.size).reshape(y.shape).astype(x.dtype) + 1
    return y, dy, layer.backward(dy)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_maxpool_ties_match_loop_reference(name, config, impl):
    x = INPUTS[name]
    layer = _layer(config, impl)
    y, dy, dx = _backward(layer, x)
    k, s, p, c = config
    np.testing.assert_array_equal(y, ref.maxpool2d_forward(x, k, s, p, c))
    # integer-valued gradients sum exactly
    np.testing.assert_array_equal(dx, ref.maxpool2d_backward(x, dy, k, s, p, c))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_maxpool_ties_match_torch(name, config, impl):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    x = INPUTS[name]
    layer = _layer(config, impl)
    y, dy, dx = _backward(layer, x)
    k, s, p, c = config
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, k, stride=s, padding=p, ceil_mode=c)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_loop_reference_sends_ties_to_the_first_maximum():
    """The reference's own rule on a window worked out by hand."""
    x = np.array([[[[1.0, 2.0, 2.0],
                    [2.0, 0.0, 2.0]]]])
    dx = ref.maxpool2d_backward(x, np.array([[[[5.0]]]]), (2, 3), (1, 1), (0, 0), False)
    expected = np.zeros_like(x)
    expected[0, 0, 0, 1] = 5.0
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config", [((2, 2), (2, 2), (0, 0), False), ((3, 3), (1, 1), (1, 1), False)],
                         ids=["k2x2-s2x2", "k3x3-s1x1-p1x1"])
def test_maxpool_nan_wins_its_window_like_torch(config, impl):
    # NaN beats every number (torch.max_pool2d propagates it) wherever it sits in the window,
    # not only as the window's first element, and the gradient follows it.  One NaN per window
    # at most: with several, torch's CPU kernel keeps the last and ours the first.
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    x = np.random.default_rng(3).standard_normal((2, 2, 6, 6)).astype(np.float32)
    x[0, 0, 1, 1] = x[0, 1, 4, 4] = x[1, 0, 1, 4] = np.nan
    layer = _layer(config, impl)
    y, dy, dx = _backward(layer, x)
    k, s, p, c = config
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, k, stride=s, padding=p, ceil_mode=c)
    ty.backward(torch.tensor(dy))
    assert np.isnan(y).any()
    np.testing.assert_array_equal(y, ty.detach().numpy())  # NaNs compare equal here
    np.testing.assert_array_equal(dx, tx.grad.numpy())
