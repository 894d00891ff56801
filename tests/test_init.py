"""Weight initializers: statistics, fan modes and gains (against torch.nn.init), orthogonality,
the Gabor filter bank, registration and option validation."""
import math

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import init
from cnnkit import layers as L

TORCH_REASON = "PyTorch not installed: the peer comparison needs torch==2.13.0"
SHAPE, FAN_IN, FAN_OUT = (400, 500), 50, 30


def draw(name, **options):
    return init.initialize(name, SHAPE, fan_in=FAN_IN, fan_out=FAN_OUT, rng=0, dtype=np.float64,
                           **options)


def leaky(a):
    return 2.0 / (1 + a * a)


STATS = [  # (name, options, mean, variance)
    ("uniform", {}, 0.5, 1 / 12),
    ("uniform", {"a": -1.0, "b": 3.0}, 1.0, 16 / 12),
    ("normal", {}, 0.0, 1.0),
    ("normal", {"mean": 0.5, "std": 2.0}, 0.5, 4.0),
    ("xavier_uniform", {}, 0.0, 2 / (FAN_IN + FAN_OUT)),
    ("xavier_normal", {"gain": 2.0}, 0.0, 4 * 2 / (FAN_IN + FAN_OUT)),
    ("glorot_uniform", {"gain": 0.5}, 0.0, 0.25 * 2 / (FAN_IN + FAN_OUT)),
    ("glorot_normal", {}, 0.0, 2 / (FAN_IN + FAN_OUT)),
    ("he_uniform", {}, 0.0, 2 / FAN_IN),
    ("he_normal", {}, 0.0, 2 / FAN_IN),
    ("he_uniform", {"mode": "fan_out"}, 0.0, 2 / FAN_OUT),
    ("he_normal", {"mode": "fan_out", "nonlinearity": "tanh"}, 0.0, (5 / 3) ** 2 / FAN_OUT),
    ("kaiming_uniform", {"nonlinearity": "leaky_relu", "a": 0.2}, 0.0, leaky(0.2) / FAN_IN),
    ("kaiming_normal", {"nonlinearity": "leaky_relu"}, 0.0, leaky(0.0) / FAN_IN),
    ("he_normal", {"nonlinearity": "linear"}, 0.0, 1 / FAN_IN),
    ("he_uniform", {"nonlinearity": "selu", "mode": "fan_out"}, 0.0, 0.75 ** 2 / FAN_OUT),
    ("lecun_uniform", {}, 0.0, 1 / FAN_IN),
    ("lecun_normal", {}, 0.0, 1 / FAN_IN),
]


@pytest.mark.parametrize("name,options,mean,var", STATS,
                         ids=[f"{n}-{o}" for n, o, _, _ in STATS])
def test_initializer_statistics(name, options, mean, var):
    arr = draw(name, **options)
    assert arr.shape == SHAPE and arr.dtype == np.float64
    assert arr.var() == pytest.approx(var, rel=0.02)
    assert abs(arr.mean() - mean) < 4 * math.sqrt(var / arr.size) + 1e-12
    if "uniform" in name:  # support: the documented bound
        bound = math.sqrt(3 * var)
        lo, hi = (mean - bound, mean + bound)
        assert lo <= arr.min() < lo + 0.01 * bound and hi - 0.01 * bound < arr.max() <= hi


def test_constant_zeros_and_dtype():
    arr = init.initialize("constant", (3, 4), fan_in=1, fan_out=1, value=0.25, dtype=np.float32)
    assert arr.dtype == np.float32 and np.all(arr == np.float32(0.25))
    assert np.all(init.initialize("zeros", (5,), fan_in=1, fan_out=1) == 0)
    dense = L.Dense(4, 3, bias_init=("constant", {"value": 0.1}), dtype=np.float64)
    assert np.all(dense.params["bias"] == 0.1)
    for name in ("normal", "he_normal", "orthogonal", "gabor"):
        shape = (4, 3, 5, 5)
        assert init.initialize(name, shape, fan_in=75, fan_out=100, rng=0,
                               dtype=np.float32).dtype == np.float32


def test_aliases_and_seeds_are_reproducible():
    for alias, name in (("glorot_uniform", "xavier_uniform"), ("kaiming_normal", "he_normal")):
        np.testing.assert_array_equal(draw(alias), draw(name))
    assert not np.array_equal(draw("he_normal"), init.initialize(
        "he_normal", SHAPE, fan_in=FAN_IN, fan_out=FAN_OUT, rng=1, dtype=np.float64))


@pytest.mark.parametrize("nonlinearity,param", [
    ("linear", None), ("conv2d", None), ("conv_transpose3d", None), ("sigmoid", None),
    ("tanh", None), ("relu", None), ("selu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
    ("leaky_relu", 0), ("leaky_relu", 3),
])
def test_gains_match_torch(nonlinearity, param):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-15)


@pytest.mark.parametrize("name,torch_fn,options", [
    ("he_uniform", "kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("he_normal", "kaiming_normal_", {"mode": "fan_in", "nonlinearity": "leaky_relu", "a": 0.3}),
    ("xavier_uniform", "xavier_uniform_", {"gain": 1.5}),
    ("xavier_normal", "xavier_normal_", {}),
])
def test_conv_fans_and_variances_match_torch(name, torch_fn, options):
    """Through a Conv2D layer (fans from the layer, PyTorch's convention) against torch.nn.init
    on a tensor of the same shape."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    conv = L.Conv2D(32, 64, 3, weight_init=(name, options), dtype=np.float64, rng=0)
    w = conv.params["weight"]
    torch.manual_seed(0)
    t = torch.empty(w.shape, dtype=torch.float64)
    getattr(torch.nn.init, torch_fn)(t, **options)
    assert w.var() == pytest.approx(t.var().item(), rel=0.05)
    if "uniform" in name:
        assert np.abs(w).max() == pytest.approx(t.abs().max().item(), rel=0.01)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (4, 2, 3, 3), (20, 2, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_orthogonal(shape, gain):
    w = init.initialize("orthogonal", shape, fan_in=1, fan_out=1, rng=0, dtype=np.float64,
                        gain=gain)
    assert w.shape == shape
    m = w.reshape(shape[0], -1)
    rows, cols = m.shape
    prod = m @ m.T if rows <= cols else m.T @ m
    np.testing.assert_allclose(prod, gain ** 2 * np.eye(min(rows, cols)), atol=1e-12)


def test_orthogonal_is_haar_like():
    """The sign correction makes the diagonal of Q unbiased (without it QR returns a biased Q)."""
    diag = [init.orthogonal((8, 8), rng=s, dtype=np.float64)[0, 0] for s in range(300)]
    assert abs(np.mean(diag)) < 0.06


# --------------------------------------------------------------------------- gabor
def dominant_orientation(kernel, size=64):
    spec = np.abs(np.fft.fftshift(np.fft.fft2(kernel, s=(size, size))))
    iy, ix = np.unravel_index(np.argmax(spec), spec.shape)
    fy, fx = iy - size // 2, ix - size // 2
    return math.atan2(fy, fx) % math.pi, math.hypot(fy, fx) / size


def angle_diff(a, b):
    d = abs(a - b) % math.pi
    return min(d, math.pi - d)


def test_gabor_bank_orientations_and_variance():
    out, cin, k = 8, 3, 11
    fan_in = cin * k * k
    w = init.initialize("gabor", (out, cin, k, k), fan_in=fan_in, fan_out=out * k * k,
                        dtype=np.float64)
    assert w.shape == (out, cin, k, k) and np.all(np.isfinite(w))
    # the same filter on every input channel
    np.testing.assert_array_equal(w, np.broadcast_to(w[:, :1], w.shape))
    # documented scaling: zero mean, variance 2/fan_in overall and per output channel
    assert abs(w.mean()) < 1e-12
    assert w.var() == pytest.approx(2.0 / fan_in, rel=1e-10)
    np.testing.assert_allclose((w ** 2).mean(axis=(1, 2, 3)), 2.0 / fan_in, rtol=1e-10)
    # orientations spread evenly over [0, pi): the FFT peak of channel c points at pi c / 8
    angles = [dominant_orientation(w[c, 0])[0] for c in range(out)]
    for c, a in enumerate(angles):
        assert angle_diff(a, math.pi * c / out) < math.radians(6), (c, math.degrees(a))
    for i in range(out):
        for j in range(i + 1, out):
            assert angle_diff(angles[i], angles[j]) > math.radians(10)


def test_gabor_cycles_wavelengths_and_phases():
    n_o, wavelengths, k = 4, (3.0, 6.0), 15
    w = init.initialize("gabor", (16, 1, k, k), fan_in=k * k, fan_out=16 * k * k,
                        n_orientations=n_o, wavelengths=wavelengths, dtype=np.float64)
    for c in range(16):
        f = w[c, 0]
        o, cycle = c % n_o, c // n_o
        angle, freq = dominant_orientation(f, size=128)
        assert angle_diff(angle, math.pi * o / n_o) < math.radians(8)
        lam = wavelengths[cycle % 2]
        assert abs(1 / freq - lam) / lam < 0.2, (c, 1 / freq, lam)
        if (c + cycle) % 2 == 0:  # phase 0: even filter
            np.testing.assert_allclose(f[::-1, ::-1], f, atol=1e-12)
        else:  # phase pi/2: odd filter
            np.testing.assert_allclose(f[::-1, ::-1], -f, atol=1e-12)


def test_gabor_in_a_conv_layer():
    conv = L.Conv2D(2, 6, 5, weight_init="gabor", dtype=np.float64)
    w = conv.params["weight"]
    assert w.shape == (6, 2, 5, 5)
    assert w.var() == pytest.approx(2.0 / (2 * 25), rel=1e-10)
    # default: min(out, 8) = 6 orientations, one per channel
    angles = [dominant_orientation(w[c, 0])[0] for c in range(6)]
    assert len({round(math.degrees(a)) for a in angles}) == 6
    g = L.Conv2D(1, 4, 7, weight_init=("gabor", {"gain": 1.0, "wavelengths": 4}),
                 dtype=np.float64).params["weight"]
    assert g.var() == pytest.approx(1.0 / 49, rel=1e-10)


# --------------------------------------------------------------------------- registry/errors
def test_every_initializer_is_registered():
    names = {"zeros", "constant", "uniform", "normal", "xavier_uniform", "xavier_normal",
             "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "kaiming_uniform",
             "kaiming_normal", "lecun_uniform", "lecun_normal", "orthogonal", "gabor"}
    reg = ck.get_registry()
    assert names <= set(reg.initializers) and names <= set(init.available())
    for name in names:
        assert reg.initializers[name][1] == "cnnkit.builtin.initializers"


@pytest.mark.parametrize("name,shape,options,match", [
    ("gabor", (4, 9), {}, "initializer gabor: needs a conv weight shape"),
    ("gabor", (4, 1, 2, 2), {}, "initializer gabor: kernels must be at least 3x3"),
    ("gabor", (4, 1, 5, 5), {"wavelengths": (1.5,)}, "initializer gabor: each wavelength"),
    ("gabor", (4, 1, 5, 5), {"wavelengths": ()}, "initializer gabor: wavelengths must not"),
    ("gabor", (4, 1, 5, 5), {"wavelengths": "x"}, "initializer gabor: each wavelength"),
    ("gabor", (4, 1, 5, 5), {"n_orientations": 0}, "initializer gabor: n_orientations"),
    ("gabor", (4, 1, 5, 5), {"sigma_ratio": -1}, "initializer gabor: sigma_ratio"),
    ("gabor", (4, 1, 5, 5), {"gain": 0}, "initializer gabor: gain"),
    ("orthogonal", (5,), {}, "initializer orthogonal: needs an array of at least 2"),
    ("orthogonal", (5, 5), {"gain": float("nan")}, "initializer orthogonal: gain"),
    ("uniform", (3,), {"a": 2.0, "b": 1.0}, "initializer uniform: needs a <= b"),
    ("normal", (3,), {"std": -1.0}, "initializer normal: std must be >= 0"),
    ("constant", (3,), {"value": float("inf")}, "initializer constant: value"),
    ("constant", (3,), {"value": "1"}, "initializer constant: value"),
    ("he_normal", (3, 3), {"mode": "fan_avg"}, "initializer he_normal: mode must be"),
    ("he_uniform", (3, 3), {"nonlinearity": "swish"}, "initializer he_uniform: .*unknown nonl"),
    ("kaiming_uniform", (3, 3), {"nonlinearity": "leaky_relu", "a": "x"},
     "initializer he_uniform: .*negative slope"),
    ("xavier_normal", (3, 3), {"gain": -1}, "initializer xavier_normal: gain"),
    ("lecun_normal", (3, -1), {}, "initializer lecun_normal: shape must be"),
])
def test_bad_options_name_the_initializer(name, shape, options, match):
    with pytest.raises(ValueError, match=match):
        init.initialize(name, shape, fan_in=9, fan_out=9, rng=0, **options)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="initializer he_normal: fan_in must be positive"):
        init.he_normal((3, 3), fan_in=0, fan_out=3)
    with pytest.raises(ValueError, match="initializer normal: dtype must be a float type"):
        init.normal((3,), dtype=np.int32)
    with pytest.raises(TypeError, match="orthogonal.*unexpected keyword argument 'gian'"):
        init.initialize("orthogonal", (3, 3), fan_in=3, fan_out=3, gian=2.0)
    with pytest.raises(ValueError, match="calculate_gain: unknown nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(KeyError, match="unknown initializer 'nope'"):
        L.Conv2D(1, 2, 3, weight_init="nope")
