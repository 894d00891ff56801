"""cnnkit.transforms: each augmentation against a plain loop or an exact identity, seeded
reproducibility, and its use from fit."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import transforms as T
from cnnkit.train import fit


def _batch(n=6, c=2, h=7, w=9, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


def test_random_crop_cuts_a_window_of_the_padded_image():
    x = _batch()
    out = T.RandomCrop((5, 6), padding=2)(x, rng=4)
    # the offsets the transform drew, drawn again from the same seed
    rng = np.random.default_rng(4)
    top = rng.integers(0, 7 + 4 - 5 + 1, size=6)
    left = rng.integers(0, 9 + 4 - 6 + 1, size=6)
    for i in range(6):
        padded = np.zeros((2, 11, 13), np.float32)
        padded[:, 2:9, 2:11] = x[i]
        np.testing.assert_array_equal(out[i], padded[:, top[i]:top[i] + 5, left[i]:left[i] + 6])
    # every offset occurs: the crop is not stuck to one corner
    many = T.RandomCrop(padding=1)(np.ones((400, 1, 3, 3), np.float32), rng=0)
    assert len({m.tobytes() for m in many}) == 9
    with pytest.raises(ValueError, match="larger than the padded image"):
        T.RandomCrop(12, padding=1)(x)


def test_horizontal_flip():
    x = _batch()
    np.testing.assert_array_equal(T.RandomHorizontalFlip(1.0)(x), x[..., ::-1])
    np.testing.assert_array_equal(T.RandomHorizontalFlip(0.0)(x), x)
    out = T.RandomHorizontalFlip()(x, rng=1)
    flipped = np.random.default_rng(1).random(6) < 0.5
    for i in range(6):
        np.testing.assert_array_equal(out[i], x[i, :, :, ::-1] if flipped[i] else x[i])


class _Fixed:
    """A generator stand-in whose uniform draws are fixed numbers."""

    def __init__(self, **values):
        self.values = values
        self.calls = 0

    def uniform(self, low, high, n):
        self.calls += 1
        key = ["angle", "scale", "ty", "tx"][self.calls - 1]
        return np.full(n, self.values[key], dtype=np.float64)


def test_random_affine_identity_rotation_and_shift():
    x = _batch(h=9, w=9)
    np.testing.assert_array_equal(T.RandomAffine()(x, rng=0), x)
    t = T.RandomAffine(degrees=90)
    rot = t.apply(x, _Fixed(angle=90.0, scale=1.0, ty=0.0, tx=0.0))
    # a quarter turn of a square image maps pixels exactly (up to rounding of cos 90)
    candidates = [np.rot90(x, k, axes=(2, 3)) for k in (1, 3)]
    assert min(np.abs(rot - c).max() for c in candidates) < 1e-5
    shifted = T.RandomAffine(translate=0.5).apply(x, _Fixed(angle=0.0, scale=1.0, ty=0.0,
                                                            tx=2.0 / 9 * 2))
    # a shift right by 4/9 of the width... drawn as a fraction: 2 * (2/9) * 9 = 4 pixels
    np.testing.assert_allclose(shifted[..., 4:], x[..., :-4], atol=1e-6)
    assert np.all(shifted[..., :4] == 0)


def test_normalize_and_inference_part():
    x = _batch(c=3)
    n = T.Normalize([1.0, 2.0, 3.0], [2.0, 4.0, 8.0])
    expect = (x - np.array([1, 2, 3], np.float32)[:, None, None]) / np.array(
        [2, 4, 8], np.float32)[:, None, None]
    np.testing.assert_allclose(n(x), expect, rtol=1e-6)
    comp = T.Compose([T.RandomHorizontalFlip(), n])
    assert comp.inference().transforms == [n]
    assert T.Compose([T.RandomCrop(padding=1)]).inference() is None
    with pytest.raises(ValueError, match="2 mean values for 3 channels"):
        T.Normalize([0, 0], 1)(x)
    with pytest.raises(ValueError, match="std must be positive"):
        T.Normalize(0, [0.0])


def test_seeded_and_reproducible():
    x = _batch()
    aug = T.Compose([T.RandomCrop(padding=2), T.RandomHorizontalFlip(),
                     T.RandomAffine(degrees=10, translate=0.1, scale=(0.9, 1.1))])
    np.testing.assert_array_equal(aug(x, rng=7), aug(x, rng=7))
    assert not np.array_equal(aug(x, rng=7), aug(x, rng=8))


def test_from_spec_and_errors():
    c = T.from_spec(["crop:padding=4", {"name": "random_horizontal_flip", "p": 0.25},
                     "random_affine:degrees=10:translate=0.1/0.2"])
    assert [type(t) for t in c.transforms] == [T.RandomCrop, T.RandomHorizontalFlip,
                                               T.RandomAffine]
    assert c.transforms[2].translate == (0.1, 0.2)
    assert c.get_config()["transforms"][1] == {"name": "random_horizontal_flip", "p": 0.25}
    with pytest.raises(ValueError, match="did you mean 'random_crop'"):
        T.from_spec(["random_corp"])
    with pytest.raises(ValueError, match="key=value"):
        T.from_spec(["crop:4"])
    with pytest.raises(ValueError, match="unexpected keyword"):
        T.from_spec(["crop:pad=4"])
    with pytest.raises(ValueError, match="expected a float batch"):
        T.RandomHorizontalFlip()(np.zeros((2, 3)))


class _Recorder(T.Transform):
    def __init__(self):
        self.seen = []
        self._config = {}

    def apply(self, x, rng):
        self.seen.append(x.shape)
        return x[..., ::-1].copy()


def test_fit_applies_the_transform_to_training_batches_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    L = ck.layers

    def model():
        return ck.Sequential([L.Flatten(), L.Dense(36, 2, rng=0)])

    rec = _Recorder()
    m1 = model()
    fit(m1, (x, y), (x, y), optimizer=ck.optim.SGD(m1, lr=0.1), epochs=2, batch_size=16,
        shuffle=False, verbose=False, transform=rec)
    assert rec.seen == [(16, 1, 6, 6), (16, 1, 6, 6), (8, 1, 6, 6)] * 2
    # equal to training on the flipped images directly
    m2 = model()
    fit(m2, (x[..., ::-1].copy(), y), optimizer=ck.optim.SGD(m2, lr=0.1), epochs=2,
        batch_size=16, shuffle=False, verbose=False)
    np.testing.assert_array_equal(m1.layers[1].params["weight"], m2.layers[1].params["weight"])
    # a seeded run with random augmentation repeats exactly
    aug = T.Compose([T.RandomCrop(padding=1), T.RandomHorizontalFlip()])
    ws = []
    for _ in range(2):
        m = model()
        fit(m, (x, y), optimizer=ck.optim.SGD(m, lr=0.1), epochs=2, verbose=False, rng=3,
            transform=aug)
        ws.append(m.layers[1].params["weight"].copy())
    np.testing.assert_array_equal(*ws)
    with pytest.raises(TypeError, match="transform must be"):
        fit(model(), (x, y), optimizer=ck.optim.SGD(model(), lr=0.1), transform=lambda b: b)
