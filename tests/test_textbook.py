"""The worked examples and formulas of the classic CNN material, as docs/textbook.md maps them
to cnnkit, each checked with the numbers stated there (float64) against an independent
oracle: SciPy's 2-D convolution and correlation, plain loops, or the formula written out.
The Python blocks of docs/textbook.md run as written."""
import math
import re
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit._shapes import conv_output_size
from cnnkit.losses import MSE, L2Penalty

signal = pytest.importorskip("scipy.signal", reason="SciPy's convolve2d is the oracle here")

DOC = Path(__file__).resolve().parent.parent / "docs" / "textbook.md"
F64 = np.float64
RNG = np.random.default_rng(1998)


def conv(cin, cout, k, **kw):
    return L.Conv2D(cin, cout, k, dtype=F64, rng=np.random.default_rng(0), **kw)


def up(delta, k=2):
    """The up() operator of the derivation: each entry copied into a k x k block."""
    return np.kron(delta, np.ones((k, k)))


# ------------------------------------------------------------------------------ sizes
def test_a_3x3_kernel_on_a_6x6_image_gives_4x4_and_padding_1_keeps_6x6():
    x = RNG.standard_normal((1, 1, 6, 6))
    assert conv(1, 1, 3).forward(x).shape == (1, 1, 4, 4)  # 16 places for the kernel
    assert conv(1, 1, 3, padding=1).forward(x).shape == (1, 1, 6, 6)  # 8x8 padded
    assert conv(1, 1, 3, padding="same").forward(x).shape == (1, 1, 6, 6)
    # "same" for an odd kernel f pads p = (f - 1) / 2
    for f in (1, 3, 5, 7):
        assert conv(1, 1, f, padding="same").forward(np.zeros((1, 1, 9, 9))).shape[2:] == (9, 9)
        assert conv(1, 1, f, padding=(f - 1) // 2).forward(np.zeros((1, 1, 9, 9))).shape[2:] \
            == (9, 9)


@pytest.mark.parametrize("n,p,f,s", [(6, 0, 3, 1), (6, 1, 3, 1), (7, 0, 3, 2), (7, 1, 3, 2),
                                     (28, 0, 5, 1), (12, 0, 5, 1), (32, 2, 5, 3), (9, 1, 4, 2)])
def test_output_size_is_floor_of_n_plus_2p_minus_f_over_s_plus_1(n, p, f, s):
    want = (n + 2 * p - f) // s + 1
    assert conv_output_size(n, p, p, f, s) == want
    assert conv(1, 1, f, padding=p, stride=s).forward(np.zeros((1, 1, n, n))).shape[2:] == \
        (want, want)


def test_volume_convolution_shape_and_sum_over_channels():
    """n x n x n_c input, n_f kernels f x f x n_c: output (n + 2p - f)/s + 1 squared, n_f deep;
    each output map is the sum over the input channels of 2-D correlations, plus the bias."""
    n, nc, nf, f = 7, 3, 4, 3
    layer = conv(nc, nf, f, stride=2, padding=1)
    x = RNG.standard_normal((1, nc, n, n))
    y = layer.forward(x)
    side = (n + 2 - f) // 2 + 1
    assert y.shape == (1, nf, side, side)
    w, b = layer.params["weight"], layer.params["bias"]
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    for o in range(nf):
        full = sum(signal.correlate2d(xp[c], w[o, c], mode="valid") for c in range(nc))
        np.testing.assert_allclose(y[0, o], full[::2, ::2] + b[o], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ convolution
def test_conv2d_is_cross_correlation_and_the_turned_kernel_gives_true_convolution():
    x = RNG.standard_normal((1, 1, 6, 6))
    layer = conv(1, 1, 3, bias=False)
    k = layer.params["weight"][0, 0].copy()
    y = layer.forward(x)[0, 0]
    np.testing.assert_allclose(y, signal.correlate2d(x[0, 0], k, mode="valid"), rtol=1e-12)
    # a true (textbook) convolution: the kernel turned 180 degrees, then slid as above
    layer.params["weight"][...] = np.rot90(k, 2)[None, None]
    np.testing.assert_allclose(layer.forward(x)[0, 0], signal.convolve2d(x[0, 0], k,
                                                                         mode="valid"),
                               rtol=1e-12)


def test_weight_sharing_and_cut_connections_of_a_3x3_input_and_2x2_kernel():
    """Inputs 1..9 (3x3), a 2x2 kernel of four shared weights, outputs A..D (2x2): four
    weights (a dense layer would need 36); input 1 reaches A only, the centre input 5 reaches
    all four; every weight takes part in every output."""
    layer = conv(1, 1, 2, bias=False)
    assert layer.params["weight"].size == 4 and 9 * 4 == 36
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    layer.forward(x, training=True)
    reach = np.zeros((4, 9))
    for out in range(4):
        dy = np.zeros((1, 1, 2, 2))
        dy.flat[out] = 1.0
        layer.forward(x, training=True)
        reach[out] = layer.backward(dy).reshape(9) != 0
        assert np.all(layer.grads["weight"] != 0)  # each weight shapes each output
    assert list(reach[:, 0]) == [1, 0, 0, 0]  # input 1 -> A only
    assert list(reach[:, 4]) == [1, 1, 1, 1]  # input 5 -> A, B, C, D


def test_input_gradient_is_the_full_convolution_with_the_turned_kernel():
    """dX[c] = sum_o full_conv(dY[o], W[o, c]); the full convolution is the correlation of the
    zero-padded dY (f - 1 on each side) with the kernel turned 180 degrees."""
    layer = conv(2, 3, 3)
    x = RNG.standard_normal((1, 2, 6, 6))
    layer.forward(x, training=True)
    dy = RNG.standard_normal((1, 3, 4, 4))
    dx = layer.backward(dy)
    w = layer.params["weight"]
    for c in range(2):
        want = sum(signal.convolve2d(dy[0, o], w[o, c], mode="full") for o in range(3))
        np.testing.assert_allclose(dx[0, c], want, rtol=1e-12, atol=1e-12)
        padded = [np.pad(dy[0, o], 2) for o in range(3)]
        turned = sum(signal.correlate2d(padded[o], np.rot90(w[o, c], 2), mode="valid")
                     for o in range(3))
        np.testing.assert_allclose(dx[0, c], turned, rtol=1e-12, atol=1e-12)
    assert dx.shape == x.shape  # 4x4 back to 6x6: 4 + 3 - 1


def test_kernel_and_bias_gradients_of_the_derivation():
    """dJ/dK[o, c] = sum_st delta[o]_st * (the input patch under it) = correlate(x[c], delta[o]);
    dJ/db[o] = sum_st delta[o]_st."""
    layer = conv(2, 3, 5)
    x = RNG.standard_normal((2, 2, 12, 12))
    layer.forward(x, training=True)
    dy = RNG.standard_normal((2, 3, 8, 8))  # 12 - 5 + 1
    layer.backward(dy)
    for o in range(3):
        for c in range(2):
            want = sum(signal.correlate2d(x[i, c], dy[i, o], mode="valid") for i in range(2))
            np.testing.assert_allclose(layer.grads["weight"][o, c], want, rtol=1e-12)
        assert layer.grads["bias"][o] == pytest.approx(dy[:, o].sum(), rel=1e-12)


def test_the_derivation_network_shapes():
    """28x28 input, 5x5 valid convolution: 24x24; 2x2 subsampling: 12x12; 5x5: 8x8; 2x2: 4x4."""
    net = ck.Sequential([L.Conv2D(1, 6, 5, dtype=F64), L.Sigmoid(),
                         L.Subsampling(6, 2, dtype=F64), L.Sigmoid(),
                         L.Conv2D(6, 12, 5, dtype=F64), L.Sigmoid(),
                         L.Subsampling(12, 2, dtype=F64)], input_shape=(1, 28, 28))
    shapes = [n.shape[2:] for n in net.nodes if isinstance(n.layer, (L.Conv2D, L.Subsampling))]
    assert shapes == [(24, 24), (12, 12), (8, 8), (4, 4)]


# ------------------------------------------------------------------------------ pooling
def test_up_copies_each_delta_into_its_block():
    """up([[1, 3], [2, 4]]) = [[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 4, 4], [2, 2, 4, 4]]: the
    backward pass of a 2x2 sum subsampling with coefficient 1; average pooling gives it / 4."""
    delta = np.array([[1.0, 3.0], [2.0, 4.0]])
    want = np.array([[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 4, 4], [2, 2, 4, 4]], dtype=F64)
    np.testing.assert_array_equal(up(delta), want)
    x = RNG.standard_normal((1, 1, 4, 4))
    s = L.Subsampling(1, 2, mode="sum", dtype=F64)
    s.forward(x, training=True)
    np.testing.assert_array_equal(s.backward(delta[None, None])[0, 0], want)
    a = L.AvgPool2D(2)
    a.forward(x, training=True)
    np.testing.assert_allclose(a.backward(delta[None, None])[0, 0], want / 4, rtol=1e-15)


def test_max_pool_backward_by_the_mask():
    """The forward pass remembers where each window's maximum was (the mask); the backward pass
    sends each gradient there and nowhere else: dX = mask * up(dY)."""
    x = np.array([[1., 3., 2., 9.],
                  [5., 6., 1., 4.],
                  [7., 0., 8., 2.],
                  [3., 4., 1., 5.]])
    pool = L.MaxPool2D(2)
    y = pool.forward(x[None, None], training=True)[0, 0]
    np.testing.assert_array_equal(y, [[6., 9.], [7., 8.]])
    mask = np.array([[0, 0, 0, 1],
                     [0, 1, 0, 0],
                     [1, 0, 1, 0],
                     [0, 0, 0, 0]], dtype=F64)
    dy = np.array([[0.1, 0.2], [0.3, 0.4]])
    dx = pool.backward(dy[None, None])[0, 0]
    np.testing.assert_array_equal(dx, mask * up(dy))


def test_trainable_subsampling_is_beta_down_plus_b_with_its_gradients():
    """S = beta * down(a) + b (down: the sum over each 2x2 window); dJ/dbeta = sum(delta *
    down(a)), dJ/db = sum(delta), and the input gradient is beta * up(delta)."""
    a = RNG.standard_normal((1, 2, 6, 6))
    layer = L.Subsampling(2, 2, mode="sum", dtype=F64)
    beta, b = np.array([0.7, -1.3]), np.array([0.2, 0.5])
    layer.params["weight"][...] = beta
    layer.params["bias"][...] = b
    down = a[0].reshape(2, 3, 2, 3, 2).sum(axis=(2, 4))
    s = layer.forward(a, training=True)[0]
    np.testing.assert_allclose(s, beta[:, None, None] * down + b[:, None, None], rtol=1e-13)
    delta = RNG.standard_normal((1, 2, 3, 3))
    dx = layer.backward(delta)[0]
    np.testing.assert_allclose(layer.grads["weight"], (delta[0] * down).sum(axis=(1, 2)),
                               rtol=1e-13)
    np.testing.assert_allclose(layer.grads["bias"], delta[0].sum(axis=(1, 2)), rtol=1e-13)
    for c in range(2):
        np.testing.assert_allclose(dx[c], beta[c] * up(delta[0, c]), rtol=1e-13)


# ------------------------------------------------------------------------------ losses
def test_mse_and_training_error_as_written():
    """MSE = 1/N sum (y - yhat)^2 over N samples of one value each; E = 1/2 sum_n sum_c
    (t - y)^2 for vectors, whose gradient is y - t."""
    y, t = np.array([[1.0], [2.0], [4.0]]), np.array([[1.5], [2.0], [1.0]])
    assert MSE().forward(y, t) == pytest.approx((0.25 + 0 + 9) / 3)
    y2 = np.array([[0.2, 0.9], [0.6, 0.1]])
    t2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    e = MSE(reduction="half_sum")
    assert e.forward(y2, t2) == pytest.approx(0.5 * (0.04 + 0.01 + 0.16 + 0.01))
    np.testing.assert_allclose(e.backward(), y2 - t2, rtol=1e-15)
    assert MSE(reduction="mean_per_sample").forward(y2, t2) == pytest.approx(0.22 / 2)


def test_cross_entropy_with_a_one_hot_target():
    """L = -sum_i y_i log(yhat_i), yhat = softmax(z): with y one-hot, -log of the true class's
    probability."""
    z = np.array([[2.0, 1.0, 0.1]])
    p = np.exp(z) / np.exp(z).sum()
    want = -math.log(p[0, 0])
    loss = ck.losses.SoftmaxCrossEntropy()
    assert loss.forward(z, np.array([[1.0, 0.0, 0.0]])) == pytest.approx(want, rel=1e-14)
    assert loss.forward(z, np.array([0])) == pytest.approx(want, rel=1e-14)


# ------------------------------------------------------------------------------ optimizers
def one_param_model():
    model = ck.Sequential([L.Dense(3, 2, bias=False, dtype=F64,
                                   rng=np.random.default_rng(3))], input_shape=(3,))
    return model, model.layers[0]


def run_steps(opt, layer, grads):
    out = []
    for g in grads:
        layer.grads["weight"] = g.copy()
        opt.step()
        out.append(layer.params["weight"].copy())
    return out


GRADS = [RNG.standard_normal((2, 3)) for _ in range(5)]


def test_sgd_update_rule():
    model, layer = one_param_model()
    w = layer.params["weight"].copy()
    for got, g in zip(run_steps(ck.optim.SGD(model, lr=0.1), layer, GRADS), GRADS):
        w = w - 0.1 * g
        np.testing.assert_allclose(got, w, rtol=1e-15)


def test_momentum_update_rule():
    """v = gamma v + eta g; w = w - v.  cnnkit (as PyTorch) keeps v / eta instead; with a
    constant learning rate the steps are the same."""
    model, layer = one_param_model()
    w, v = layer.params["weight"].copy(), 0.0
    for got, g in zip(run_steps(ck.optim.SGD(model, lr=0.1, momentum=0.9), layer, GRADS), GRADS):
        v = 0.9 * v + 0.1 * g
        w = w - v
        np.testing.assert_allclose(got, w, rtol=1e-13)


def test_adam_update_rule():
    model, layer = one_param_model()
    w, m, v = layer.params["weight"].copy(), 0.0, 0.0
    b1, b2, eta, eps = 0.9, 0.999, 0.01, 1e-8
    opt = ck.optim.Adam(model, lr=eta, betas=(b1, b2), eps=eps)
    for t, (got, g) in enumerate(zip(run_steps(opt, layer, GRADS), GRADS), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        w = w - eta / (np.sqrt(v / (1 - b2 ** t)) + eps) * (m / (1 - b1 ** t))
        np.testing.assert_allclose(got, w, rtol=1e-12)


# ------------------------------------------------------------------------------ regularisation
def test_l2_adds_half_lambda_sum_of_squares():
    model, layer = one_param_model()
    w = layer.params["weight"]
    pen = L2Penalty(0.3)
    assert pen.forward(model) == pytest.approx(0.3 / 2 * np.sum(w ** 2), rel=1e-14)
    layer.grads["weight"] = np.zeros_like(w)
    pen.backward(model)
    np.testing.assert_allclose(layer.grads["weight"], 0.3 * w, rtol=1e-15)


def test_dropout_is_the_masked_output_rescaled():
    """The material's y = f(Wx) * m, m ~ Bernoulli(keep) leaves the survivors unscaled (and
    so needs a rescale at test time); cnnkit's inverted dropout divides the survivors by the
    keep probability during training and returns its input unchanged in inference."""
    drop = L.Dropout(0.25, rng=7)
    x = np.ones((1, 40000))
    y = drop.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-15)
    assert abs(kept.mean() - 0.75) < 0.01
    book = x * kept  # the material's form: (1 - p) * cnnkit's output
    np.testing.assert_allclose(book, 0.75 * y, rtol=1e-15)
    np.testing.assert_array_equal(drop.forward(x, training=False), x)


# ------------------------------------------------------------------------------ initialisation
def test_xavier_uniform_bound_and_he_normal_spread():
    fan_in, fan_out = 300, 200
    w = ck.init.initialize("xavier_uniform", (fan_out, fan_in), fan_in=fan_in, fan_out=fan_out,
                           rng=np.random.default_rng(0), dtype=F64)
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    h = ck.init.initialize("he_normal", (fan_out, fan_in), fan_in=fan_in, fan_out=fan_out,
                           rng=np.random.default_rng(0), dtype=F64)
    assert h.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    assert abs(h.mean()) < 0.05 * math.sqrt(2 / fan_in)


def test_gabor_kernels_are_zero_mean_with_he_variance():
    shape = (8, 1, 7, 7)
    g = ck.init.initialize("gabor", shape, fan_in=49, fan_out=8 * 49, dtype=F64)
    np.testing.assert_allclose(g.mean(axis=(1, 2, 3)), 0, atol=1e-12)
    assert g.var() == pytest.approx(2 / 49, rel=1e-10)


# ------------------------------------------------------------------------------ the page
def test_the_page_maps_every_topic_and_its_code_runs(tmp_path, monkeypatch):
    text = DOC.read_text(encoding="utf-8")
    for topic in ("cross-correlation", "⌊(n + 2p − f) / s⌋ + 1", "valid", "same", "volume",
                  "weight sharing", "mask", "up()", "full convolution", "β·down(a) + b",
                  "momentum", "Adam", "Xavier", "He", "Gabor", "dropout", "L2", "boosting",
                  "connections=", "flip_kernel=True", "RBFOutput", "kmeans_patches"):
        assert topic in text, topic
    for test in re.findall(r"`tests/test_\w+\.py::(\w+)`", text):
        assert test in globals() or test in TEST_NAMES_ELSEWHERE, test
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})


#: tests the page cites that live in other files (checked to exist there)
TEST_NAMES_ELSEWHERE = set()
for _path in Path(__file__).parent.glob("test_*.py"):
    if _path.name != Path(__file__).name:
        TEST_NAMES_ELSEWHERE |= set(re.findall(r"^def (test_\w+)", _path.read_text(), re.M))
