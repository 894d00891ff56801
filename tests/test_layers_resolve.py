"""A layer resolves its configuration against an input shape once per per-sample shape:
forward and backward reuse that resolution, it is redone when what it depends on changes,
and variant selection still follows impl=, cnnkit.use and CNNKIT_IMPL on every call."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L

RNG = np.random.default_rng(7)


def _count_output_shape(layer):
    calls = []
    original = layer.output_shape

    def counting(shape):
        calls.append(tuple(shape))
        return original(shape)

    layer.output_shape = counting
    return calls


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_forward_and_backward_reuse_one_resolution_per_sample_shape():
    conv = L.Conv2D(2, 3, 3, padding="same")
    calls = _count_output_shape(conv)
    for batch in (4, 4, 2, 5):
        y = conv.forward(_x(batch, 2, 9, 7), training=True)
        conv.backward(np.ones_like(y))
    assert calls == [(None, 2, 9, 7)]
    conv.forward(_x(1, 2, 6, 6))
    assert calls == [(None, 2, 9, 7), (None, 2, 6, 6)]


def test_same_padding_is_resolved_per_shape_without_touching_config():
    conv = L.Conv2D(1, 1, 4, padding="same")  # even kernel: total padding 3, odd
    before = dict(conv.config)
    y = conv.forward(_x(1, 1, 8, 6))
    assert y.shape == (1, 1, 8, 6)
    assert conv.config == before
    res = conv.resolution((None, 1, 8, 6))
    assert res.config["padding"] == (1, 2, 1, 2)
    assert res.output_shape == (1, 8, 6)
    assert {"padding", "asymmetric_padding"} <= set(res.features)
    assert conv.resolve((3, 1, 8, 6)) is res.config
    odd = L.Conv2D(1, 1, 3, padding="same").resolution((None, 1, 8, 6))
    assert odd.config["padding"] == (1, 1, 1, 1) and "asymmetric_padding" not in odd.features


def test_invalid_shapes_raise_every_time():
    conv = L.Conv2D(2, 3, 5)
    for _ in range(2):
        with pytest.raises(ValueError, match="expected 2 input channels"):
            conv.forward(_x(1, 3, 8, 8))
        with pytest.raises(ValueError, match="is larger than the padded input"):
            conv.forward(_x(1, 2, 4, 8))
    conv.forward(_x(1, 2, 8, 8))
    with pytest.raises(ValueError, match="empty batch"):
        conv.forward(_x(0, 2, 8, 8))
    relu = L.ReLU()
    relu.forward(_x(3))  # caches the per-sample shape () of a 1-D input
    with pytest.raises(ValueError, match="at least a 1-D input"):
        relu.forward(np.zeros((), np.float32))


def test_resolution_is_redone_when_config_or_dtype_changes():
    pool = L.AvgPool2D(2)
    calls = _count_output_shape(pool)
    x = _x(2, 1, 4, 4)
    pool.forward(x)
    pool.forward(x)
    pool.config = dict(pool.config, count_include_pad=False)
    pool.forward(x)
    assert len(calls) == 2
    dense = L.Dense(3, 2)
    calls = _count_output_shape(dense)
    dense.forward(_x(2, 3))
    dense.astype(np.float64)
    dense.forward(np.ones((2, 3)))
    assert len(calls) == 2


def test_selection_follows_impl_use_and_environment_on_every_call(monkeypatch):
    relu = L.ReLU()
    x = _x(2, 5)

    def used():
        relu.forward(x, training=True)
        return relu._ctx[0].name

    assert used() == "cython"
    with ck.use(relu="numpy"):
        assert used() == "numpy"
    assert used() == "cython"
    monkeypatch.setenv("CNNKIT_IMPL", "relu=numpy")
    assert used() == "numpy"
    monkeypatch.delenv("CNNKIT_IMPL")
    relu.impl = "numpy"
    assert used() == "numpy"
    relu.impl = None
    assert used() == "cython"


def test_dropout_draws_a_fresh_seed_per_call_without_resolving_again():
    drop = L.Dropout(0.5, rng=3)
    calls = _count_output_shape(drop)
    x = np.ones((4, 64), np.float32)
    masks = [drop.forward(x, training=True) != 0 for _ in range(3)]
    assert len(calls) == 1
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    again = L.Dropout(0.5, rng=3)
    assert np.array_equal(again.forward(x, training=True) != 0, masks[0])
