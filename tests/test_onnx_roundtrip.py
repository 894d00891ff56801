"""cnnkit -> ONNX -> cnnkit: ``ck.onnx.export`` then ``ck.onnx.load`` gives back the same weights
and the same predictions, bit for bit (standard layers map one to one onto ONNX operators and
back)."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L

pytest.importorskip("onnx", reason="the ONNX round trip needs the onnx package "
                                   "(pip install \"cnnkit[onnx]\")")


def _models():
    ck.seed(3)
    lenet = ck.Sequential([
        L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(6, 16, 5), L.BatchNorm2D(16), L.ReLU(), L.AvgPool2D(2),
        L.Flatten(), L.Dense(400, 120), L.Tanh(), L.Dense(120, 10)], input_shape=(1, 28, 28))
    x = ck.Input((8, 12, 12))
    h = L.Conv2D(8, 8, 3, padding=1)(x)
    r = L.Conv2D(8, 8, 3, padding=1)(L.ReLU()(h))
    y = L.Dense(8, 4)(L.GlobalAvgPool2D()(L.ReLU()(L.Add()([h, r]))))
    resnet = ck.Model(x, y)
    return {"lenet": (lenet, (1, 28, 28)), "skip": (resnet, (8, 12, 12))}


def _randomize_buffers(model, rng):
    for layer in model.layers:
        for key, buf in getattr(layer, "buffers", {}).items():
            if key == "running_var":
                buf[...] = rng.uniform(0.5, 2.0, buf.shape)
            elif key == "running_mean":
                buf[...] = rng.standard_normal(buf.shape)


@pytest.mark.parametrize("name", ["lenet", "skip"])
def test_round_trip_gives_bitwise_equal_weights_and_outputs(tmp_path, name):
    model, shape = _models()[name]
    rng = np.random.default_rng(0)
    _randomize_buffers(model, rng)
    path = tmp_path / f"{name}.onnx"
    ck.onnx.export(model, path)
    back = ck.onnx.load(path)
    before = model.state_dict()
    after = back.state_dict()
    # the same arrays, in the same order (the names may follow the file's)
    assert len(before) == len(after)
    for (k1, v1), (k2, v2) in zip(before.items(), after.items()):
        assert v1.shape == v2.shape and v1.dtype == v2.dtype, (k1, k2)
        np.testing.assert_array_equal(v1, v2, err_msg=f"{k1} -> {k2}")
    x = rng.standard_normal((5,) + shape).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
