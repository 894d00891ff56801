"""The fans a conv layer hands to its weight initializer, against PyTorch's convention
(``torch.nn.init._calculate_fan_in_and_fan_out`` on the torch weight of the same layer), and
ConvTranspose2D's default initialisation against what its docstring promises.

A transposed convolution's weight is ``(in, out/groups, kh, kw)``: PyTorch takes fan_in from
the SECOND axis (``out/groups*kh*kw``) and fan_out from the first (``in*kh*kw``), the reverse
of what the channel names suggest; swapping them changes the default scale by
``sqrt(fan_out/fan_in)``."""
import math

import numpy as np
import pytest

from cnnkit import layers as L

TORCH_REASON = "PyTorch not installed: the peer comparison needs torch"

# in, out, kernel, groups, stride
CONFIGS = [
    (64, 4, 3, 1, 1),        # fan_in 36 vs fan_out 576: a swap is a factor 4 in scale
    (3, 10, (3, 2), 1, 2),
    (6, 4, (3, 2), 2, 1),
    (8, 12, 5, 4, 2),
]
IDS = [f"in{i}-out{o}-k{k}-g{g}" for i, o, k, g, _ in CONFIGS]


class Recorder:
    """An initializer (the public callable form) that records the fans it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, shape, *, fan_in, fan_out, rng, dtype):
        self.calls.append({"shape": tuple(shape), "fan_in": fan_in, "fan_out": fan_out})
        return np.zeros(shape, dtype=dtype)


def _build(cls, config, recorder):
    cin, cout, k, g, s = config
    return cls(cin, cout, k, stride=s, groups=g, weight_init=recorder, rng=0)


def _torch_fans(torch, cls, config):
    cin, cout, k, g, s = config
    tcls = torch.nn.ConvTranspose2d if cls is L.ConvTranspose2D else torch.nn.Conv2d
    weight = tcls(cin, cout, k, stride=s, groups=g).weight
    return weight.shape, torch.nn.init._calculate_fan_in_and_fan_out(weight)


def _kernel(k):
    return (k, k) if isinstance(k, int) else k


@pytest.mark.parametrize("cls", [L.ConvTranspose2D, L.Conv2D], ids=lambda c: c.__name__)
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_fans_follow_the_documented_convention(cls, config):
    """Torch-free: the formulas of PyTorch's convention written out, per layer type."""
    rec = Recorder()
    layer = _build(cls, config, rec)
    cin, cout, k, g, _ = config
    kh, kw = _kernel(k)
    call = rec.calls[0]
    assert call["shape"] == layer.params["weight"].shape
    if cls is L.ConvTranspose2D:
        assert call["shape"] == (cin, cout // g, kh, kw)
        assert call["fan_in"] == cout // g * kh * kw
        if g == 1:
            assert call["fan_out"] == cin * kh * kw
    else:
        assert call["shape"] == (cout, cin // g, kh, kw)
        assert call["fan_in"] == cin // g * kh * kw
        if g == 1:
            assert call["fan_out"] == cout * kh * kw


@pytest.mark.parametrize("cls", [L.ConvTranspose2D, L.Conv2D], ids=lambda c: c.__name__)
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_fans_match_torch(cls, config):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    rec = Recorder()
    _build(cls, config, rec)
    shape, (fan_in, fan_out) = _torch_fans(torch, cls, config)
    call = rec.calls[0]
    assert call["shape"] == tuple(shape)
    assert call["fan_in"] == fan_in
    assert call["fan_out"] == fan_out


@pytest.mark.parametrize("cls", [L.ConvTranspose2D, L.Conv2D], ids=lambda c: c.__name__)
def test_grouped_fan_out_matches_torch(cls):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    config = CONFIGS[2]
    rec = Recorder()
    _build(cls, config, rec)
    _, (_, fan_out) = _torch_fans(torch, cls, config)
    assert rec.calls[0]["fan_out"] == fan_out


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_convtranspose_default_init_scale(config):
    """Default ``he_uniform``: U(+-sqrt(2) * sqrt(3 / fan_in)) with fan_in = out/groups*kh*kw
    (the docstrings of ConvTranspose2D and cnnkit.init); variance 2 / fan_in."""
    cin, cout, k, g, s = config
    kh, kw = _kernel(k)
    layer = L.ConvTranspose2D(cin, cout, k, stride=s, groups=g, dtype=np.float64, rng=3)
    w = layer.params["weight"]
    bound = math.sqrt(2.0) * math.sqrt(3.0 / (cout // g * kh * kw))
    assert np.abs(w).max() <= bound
    # with n uniform draws the largest |w| falls short of the bound by about bound / n
    assert np.abs(w).max() >= bound * (1 - 8.0 / w.size)
    assert w.var() == pytest.approx(bound ** 2 / 3, rel=6 / math.sqrt(w.size))
    assert np.all(layer.params["bias"] == 0)
