"""Data-driven initialisation: the initializer protocol's ``needs_data``, kmeans_patches,
initialize_from_data, fit(init_data=True) and a config's ``init_data``."""
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import config as C
from cnnkit.init import initialize_from_data, kmeans_patches, needs_data
from cnnkit.layers import Conv2D, Flatten, ReLU
from cnnkit.train import fit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lenet5-kmeans-init.toml"

# two 3x3 patterns; every patch of the images below is one of them, times a contrast and plus
# a brightness (what the per-patch normalisation removes)
VERTICAL = np.array([[-1.0, 0, 1]] * 3)
CROSS = np.array([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])


def _normalised(p):
    p = p.ravel() - p.mean()
    return p / np.sqrt(np.mean(p * p))


def _pattern_images(rng, n=40):
    """3x3 images (so each holds exactly one 3x3 patch) of the two patterns."""
    which = rng.integers(0, 2, n)
    gain = rng.uniform(0.5, 3.0, n)[:, None, None]
    shift = rng.uniform(-2, 2, n)[:, None, None]
    imgs = np.where(which[:, None, None] == 0, VERTICAL, CROSS) * gain + shift
    return imgs[:, None], which


def test_kmeans_kernels_are_the_normalised_patterns():
    """Oracle: the data holds two patterns only, so the two centroids are their normalised
    forms (in some order), up to the final scaling to He's variance."""
    x, _ = _pattern_images(np.random.default_rng(0))
    w = kmeans_patches((2, 1, 3, 3), fan_in=9, fan_out=18, data=x, seed=0, eps=0.0)
    expected = np.array([_normalised(VERTICAL), _normalised(CROSS)]) * np.sqrt(2 / 9)
    got = w.reshape(2, 9).astype(np.float64)
    if abs(got[0] @ expected[0]) < abs(got[0] @ expected[1]):
        got = got[::-1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.mean(w.astype(np.float64) ** 2) == pytest.approx(2 / 9, rel=1e-5)


def test_kmeans_patches_is_seeded_and_falls_back_without_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 2, 8, 8))
    a = kmeans_patches((4, 2, 3, 3), fan_in=18, fan_out=36, data=x, seed=3, n_patches=500)
    b = kmeans_patches((4, 2, 3, 3), fan_in=18, fan_out=36, data=x, seed=3, n_patches=500)
    c = kmeans_patches((4, 2, 3, 3), fan_in=18, fan_out=36, data=x, seed=4, n_patches=500)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    he = ck.init.he_uniform((4, 2, 3, 3), fan_in=18, fan_out=36, rng=np.random.default_rng(9))
    fallback = kmeans_patches((4, 2, 3, 3), fan_in=18, fan_out=36,
                              rng=np.random.default_rng(9))
    assert np.array_equal(he, fallback)
    assert needs_data("kmeans_patches") and needs_data(("kmeans_patches", {}))
    assert not needs_data("he_uniform")
    with pytest.raises(ValueError, match="input channels"):
        kmeans_patches((4, 3, 3, 3), fan_in=27, fan_out=36, data=x)
    with pytest.raises(ValueError, match="n_patches"):
        kmeans_patches((4, 2, 3, 3), fan_in=18, fan_out=36, data=x, n_patches=2)


def _small_model(init=("kmeans_patches", {"n_patches": 400}), table=None):
    model = ck.Sequential([Conv2D(1, 3, 3, weight_init=init, connections=None, name="c1"),
                           ReLU(),
                           Conv2D(3, 2, 3, connections=table,
                                  weight_init=("kmeans_patches", {"n_patches": 300}),
                                  name="c2"),
                           Flatten()])
    model.build((1, 9, 9))
    return model


def test_initialize_from_data_feeds_each_layer_what_it_receives():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 1, 9, 9)).astype(np.float32)
    table = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    model = _small_model(table=table)
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    w1, w2 = c1.params["weight"], c2.params["weight"]
    done = initialize_from_data(model, x, rng=5)
    assert done == ["c1", "c2"]
    assert c1.params["weight"] is w1 and c2.params["weight"] is w2  # in place
    gen = np.random.default_rng(5)
    expected1 = kmeans_patches((3, 1, 3, 3), fan_in=9, fan_out=27, rng=gen, data=x,
                               n_patches=400)
    np.testing.assert_array_equal(w1, expected1)
    seen = np.maximum(c1.forward(x, training=False), 0)  # what c2 receives
    expected2 = kmeans_patches((2, 3, 3, 3), fan_in=27, fan_out=18, rng=gen, data=seen,
                               n_patches=300) * table[:, :, None, None]
    np.testing.assert_allclose(w2, expected2, rtol=1e-6)
    assert np.all(w2[~table] == 0)


def test_fit_init_data_and_the_config_key():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 1, 9, 9)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    runs = []
    for init_data in (False, True, True):
        model = _small_model()
        start = model.get_layer("c1").params["weight"].copy()
        opt = ck.optim.SGD(model, lr=0.0)
        fit(model, (x, y), optimizer=opt, epochs=1, batch_size=20, verbose=False, seed=0,
            init_data=init_data)
        after = model.get_layer("c1").params["weight"]
        assert np.array_equal(after, start) != init_data
        runs.append(after.copy())
    assert np.array_equal(runs[1], runs[2])  # the seed decides it
    spec = C.training_from_config(C.load_config(EXAMPLE))
    assert spec.init_data is True
    model = C.load_model(EXAMPLE)
    assert needs_data(model.get_layer("conv1").weight_init)
    again = C.model_from_config(C.model_to_config(model))
    assert needs_data(again.get_layer("conv1").weight_init)
    with pytest.raises(C.ConfigError, match="init_data"):
        C.training_from_config({"training": {"init_data": "yes"}})
