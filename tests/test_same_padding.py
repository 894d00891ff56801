"""Conv2D ``padding="same"``: the padding VALUES, not only the output size.

An odd total padding puts the extra row/column at the bottom/right (TensorFlow's rule, and
PyTorch's for ``padding="same"``).  Each case is checked in float64, for every built-in variant,
against a plain-loop reference that resolves the padding itself (``_reference.same_padding``)
and against PyTorch on an input padded explicitly with ``F.pad`` (and torch's own
``padding="same"`` where torch supports it, stride 1).  Forward output, input gradient, weight
and bias gradients are all compared: a padding applied on the wrong side shifts every one."""
import numpy as np
import pytest

from cnnkit import layers as L

import _reference as ref

TORCH_REASON = "PyTorch not installed: the peer comparison needs torch"
IMPLS = ["numpy", "cython"]

# (input h, w), kernel, stride, dilation, groups: chosen so most axes need an ODD total padding
CASES = [
    ((5, 6), 2, 1, 1, 1),            # even kernel: total 1, all of it at the bottom/right
    ((5, 5), 4, 1, 1, 1),            # even kernel: total 3 -> (1, 2)
    ((6, 7), 3, 2, 1, 1),            # stride 2: totals 1 (h) and 2 (w)
    ((8, 7), (5, 2), (3, 2), 1, 1),  # totals 3 and 1, asymmetric kernel and stride
    ((6, 5), 2, 1, 3, 2),            # dilation 3 on an even kernel: effective 4, total 3; groups
    ((7, 6), 3, (2, 1), (1, 2), 1),  # stride 2 with dilation 2 on the other axis
    ((4, 4), 3, 1, 1, 1),            # symmetric total 2: the easy case stays right too
]
IDS = [f"in{h}x{w}-k{k}-s{s}-d{d}-g{g}" for (h, w), k, s, d, g in CASES]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _setup(case, impl, seed=0):
    (h, w), k, s, d, g = case
    rng = np.random.default_rng(seed)
    cin, cout = 2 * g, 3 * g
    layer = L.Conv2D(cin, cout, k, stride=s, padding="same", dilation=d, groups=g,
                     dtype=np.float64, rng=seed, impl=impl)
    layer.params["weight"][...] = rng.standard_normal(layer.params["weight"].shape)
    layer.params["bias"][...] = rng.standard_normal(cout)
    x = rng.standard_normal((2, cin, h, w))
    kh, kw = _pair(k)
    sh, sw = _pair(s)
    dh, dw = _pair(d)
    top, bottom = ref.same_padding(h, kh, sh, dh)
    left, right = ref.same_padding(w, kw, sw, dw)
    return layer, x, (top, bottom, left, right), rng


def _run(layer, x, rng):
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    return y, dy, dx, dict(layer.grads)


def test_reference_padding_rule_is_tensorflows():
    """The test-side rule itself, on hand-computed values (extra at the end)."""
    assert ref.same_padding(5, 2, 1, 1) == (0, 1)
    assert ref.same_padding(5, 4, 1, 1) == (1, 2)
    assert ref.same_padding(6, 3, 2, 1) == (0, 1)
    assert ref.same_padding(7, 3, 2, 1) == (1, 1)
    assert ref.same_padding(8, 5, 3, 1) == (1, 2)
    assert ref.same_padding(5, 2, 1, 3) == (1, 2)
    assert ref.same_padding(5, 1, 2, 1) == (0, 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_padding_values_match_loop_reference(case, impl):
    layer, x, pads, rng = _setup(case, impl)
    y, dy, dx, grads = _run(layer, x, rng)
    w, b = layer.params["weight"], layer.params["bias"]
    y_ref = ref.conv2d_forward(x, w, b, layer.stride, pads, layer.dilation, layer.groups)
    assert y.shape == y_ref.shape
    h, wd = x.shape[2:]
    assert y.shape[2:] == (-(-h // layer.stride[0]), -(-wd // layer.stride[1]))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12, err_msg="forward")
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(x, w, dy, layer.stride, pads, layer.dilation,
                                                 layer.groups)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12, err_msg="input gradient")
    np.testing.assert_allclose(grads["weight"], dw_ref, rtol=1e-12, atol=1e-12,
                               err_msg="weight gradient")
    np.testing.assert_allclose(grads["bias"], db_ref, rtol=1e-12, atol=1e-12,
                               err_msg="bias gradient")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_padding_values_match_torch(case, impl):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    F = torch.nn.functional
    layer, x, (top, bottom, left, right), rng = _setup(case, impl, seed=1)
    y, dy, dx, grads = _run(layer, x, rng)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["weight"], requires_grad=True)
    tb = torch.tensor(layer.params["bias"], requires_grad=True)
    conv = dict(stride=layer.stride, dilation=layer.dilation, groups=layer.groups)
    ty = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, tb, **conv)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["bias"], tb.grad.numpy(), rtol=1e-10, atol=1e-12)
    if layer.stride == (1, 1):  # torch's own "same" (stride 1 only) agrees as well
        tx2 = torch.tensor(x, requires_grad=True)
        tw2 = torch.tensor(layer.params["weight"], requires_grad=True)
        ty2 = F.conv2d(tx2, tw2, tb.detach(), padding="same", **conv)
        ty2.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty2.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, tx2.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["weight"], tw2.grad.numpy(), rtol=1e-10, atol=1e-12)
