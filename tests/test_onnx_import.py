"""cnnkit.onnx.load: models exported by PyTorch (both exporters) and single operators built with
onnx.helper, each against an independent oracle: PyTorch itself for the exported models,
onnxruntime for every operator and attribute variant."""
import warnings

import numpy as np
import pytest

import cnnkit as ck

onnx = pytest.importorskip("onnx", reason="the ONNX import tests need the 'onnx' package "
                           "(pip install -e '.[test]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _rel_err(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# ------------------------------------------------------------------------ models from PyTorch
@pytest.fixture(scope="module")
def torch_models():
    torch = pytest.importorskip("torch", reason="the PyTorch round trips need torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = (None if stride == 1 and cin == cout else
                          nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout)))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            return torch.relu(h + (x if self.short is None else self.short(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(8), nn.ReLU())
            self.layer1 = Block(8, 8, 1)
            self.layer2 = Block(8, 16, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            h = self.pool(self.layer2(self.layer1(self.stem(x))))
            return self.fc(h.view(h.size(0), -1))  # Shape/Gather/Concat feeding Reshape

    torch.manual_seed(0)
    lenet = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, 10))
    resnet = ResNet()
    with torch.no_grad():  # running statistics and affine values away from the defaults
        for m in resnet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return {"lenet": (lenet.eval(), (1, 28, 28)), "resnet": (resnet.eval(), (3, 16, 16))}


def _export(torch_models, name, exporter, path):
    import torch

    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="PyTorch's dynamo exporter needs onnxscript")
    net, shape = torch_models[name]
    x = torch.zeros((2,) + shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["x"],
                              output_names=["y"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            # batch norm kept as nodes (no folding into the convolutions)
            torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                              training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False)
    return net, shape


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_pytorch_exports_import_with_pytorchs_outputs_and_train(torch_models, name, exporter,
                                                                 tmp_path):
    import torch

    net, shape = _export(torch_models, name, exporter, tmp_path / f"{name}.onnx")
    model = ck.onnx.load(tmp_path / f"{name}.onnx")
    assert isinstance(model, ck.Model)
    rng = np.random.default_rng(0)
    model.eval()
    for batch in (1, 5):  # exported at batch 2: the batch axis is dynamic
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = model.forward(x)
        assert got.shape == want.shape
        assert _rel_err(got, want) < 1e-5
    if exporter == "torchscript":
        # weights keep PyTorch's names, batch norm buffers included
        assert set(model.state_dict()) == set(net.state_dict())
    # trainable: a few SGD steps on a fixed batch lower the loss
    model.train()
    x = rng.standard_normal((16,) + shape).astype(np.float32)
    y = rng.integers(0, 10, 16)
    history = model.fit(x, y, optimizer=ck.optim.SGD(model, lr=0.1), epochs=6,
                        batch_size=16, shuffle=False, verbose=False)
    losses = history["loss"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.97 * losses[0], losses


def test_imported_batchnorm_keeps_running_statistics(torch_models, tmp_path):
    net, _ = _export(torch_models, "resnet", "torchscript", tmp_path / "r.onnx")
    model = ck.onnx.load(tmp_path / "r.onnx")
    state = model.state_dict()
    for key in ("stem.1.running_mean", "layer2.short.1.running_var", "layer1.bn2.weight"):
        np.testing.assert_allclose(state[key], net.state_dict()[key].numpy(), rtol=1e-7)


# ------------------------------------------------------------------------ single operators
def _graph(nodes, x_shape, inits=(), opset=17, out="y"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(tmp_path, model, x_shape, seed=0):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    imported = ck.onnx.load(path)
    imported.eval()
    got = imported.forward(x)
    assert got.shape == want.shape
    assert _rel_err(got, want) < 1e-5, _rel_err(got, want)
    return imported


def _w(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CONV_CASES = {
    "same_upper_s2_k4": dict(kernel_shape=[4, 4], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower_s2_k4": dict(kernel_shape=[4, 4], strides=[2, 2], auto_pad="SAME_LOWER"),
    "same_upper_k2": dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
    "valid_s2": dict(kernel_shape=[3, 3], strides=[2, 1], auto_pad="VALID"),
    "asymmetric_pads": dict(kernel_shape=[3, 3], pads=[0, 1, 2, 0]),
    "dilations": dict(kernel_shape=[3, 3], dilations=[2, 1], pads=[2, 1, 2, 1]),
    "groups": dict(kernel_shape=[3, 3], group=2, pads=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(tmp_path, case, bias):
    attrs = CONV_CASES[case]
    k = attrs["kernel_shape"]
    inputs = ["x", "W"] + (["B"] if bias else [])
    inits = [("W", _w(4, 4 // attrs.get("group", 1), *k))] + ([("B", _w(4, seed=2))] if bias
                                                              else [])
    _check(tmp_path, _graph([helper.make_node("Conv", inputs, ["y"], **attrs)], (2, 4, 9, 8),
                            inits), (3, 4, 9, 8))


CONV_TRANSPOSE_CASES = {
    "s2_pads": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asymmetric_pads": dict(strides=[2, 2], pads=[1, 0, 0, 1]),
    "output_padding": dict(strides=[2, 3], pads=[1, 1, 1, 1], output_padding=[1, 2]),
    "output_shape": dict(strides=[2, 2], output_shape=[10, 11]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "dilations_groups": dict(dilations=[2, 1], group=2, pads=[0, 1, 0, 1]),
    "crop_end": dict(strides=[1, 1], pads=[0, 0, 2, 2]),
}


@pytest.mark.parametrize("case", sorted(CONV_TRANSPOSE_CASES))
def test_conv_transpose(tmp_path, case):
    attrs = CONV_TRANSPOSE_CASES[case]
    g = attrs.get("group", 1)
    node = helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], **attrs)
    _check(tmp_path, _graph([node], (2, 4, 5, 5), [("W", _w(4, 6 // g, 3, 3)),
                                                   ("B", _w(6, seed=2))]), (2, 4, 5, 5))


POOL_CASES = {
    "k2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "same_upper": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
    "same_upper_k2_s1": dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
    "valid": dict(kernel_shape=[3, 2], strides=[2, 1], auto_pad="VALID"),
    "asymmetric_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "ceil_mode": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "ceil_mode_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "ceil_asymmetric": dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1),
    "dilations": dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2]),
    "dilations_pads_ceil": dict(kernel_shape=[3, 2], dilations=[2, 1], strides=[2, 2],
                                pads=[1, 0, 2, 1], ceil_mode=1),
}


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "AveragePool-include-pad"])
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool(tmp_path, op, case):
    attrs = dict(POOL_CASES[case])
    if op == "AveragePool-include-pad":
        op, attrs["count_include_pad"] = "AveragePool", 1
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    _check(tmp_path, _graph([node], (2, 3, 9, 10), opset=19), (2, 3, 9, 10))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("then", ["output", "flatten", "conv"])
def test_global_pool(tmp_path, op, then):
    nodes = [helper.make_node(op, ["x"], ["p" if then != "output" else "y"])]
    inits = []
    if then == "flatten":
        nodes.append(helper.make_node("Flatten", ["p"], ["y"]))
    elif then == "conv":  # a squeeze-excite style 1x1 convolution on the pooled map
        nodes.append(helper.make_node("Conv", ["p", "W"], ["y"], kernel_shape=[1, 1]))
        inits = [("W", _w(2, 3, 1, 1))]
    model = _check(tmp_path, _graph(nodes, (2, 3, 5, 6), inits), (2, 3, 5, 6))
    if then == "flatten":
        assert any(type(layer).__name__.startswith("Global") for layer in model.layers)


@pytest.mark.parametrize("pads,mode,value", [
    ([0, 0, 1, 2, 0, 0, 2, 1], "constant", 0.5),
    ([0, 0, 2, 1, 0, 0, 1, 3], "reflect", 0.0),
    ([0, 0, 3, 0, 0, 0, 1, 2], "edge", 0.0),
    ([0, 0, -1, 2, 0, 0, 1, -2], "constant", 0.0),
])
def test_pad(tmp_path, pads, mode, value):
    node = helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode=mode)
    inits = [("pads", np.array(pads, dtype=np.int64)), ("value", np.array(value, np.float32))]
    _check(tmp_path, _graph([node], (2, 2, 5, 6), inits), (2, 2, 5, 6))


@pytest.mark.parametrize("coord,nearest,how", [
    ("half_pixel", "round_prefer_floor", "scales"),
    ("asymmetric", "floor", "scales"),
    ("pytorch_half_pixel", "round_prefer_ceil", "sizes"),
])
def test_resize_nearest(tmp_path, coord, nearest, how):
    inputs = ["x", "", "scales"] if how == "scales" else ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], mode="nearest",
                            coordinate_transformation_mode=coord, nearest_mode=nearest)
    inits = ([("scales", np.array([1, 1, 2, 3], np.float32))] if how == "scales" else
             [("sizes", np.array([2, 2, 12, 5], np.int64))])
    _check(tmp_path, _graph([node], (2, 2, 4, 5), inits), (2, 2, 4, 5))


@pytest.mark.parametrize("op,attrs,extra", [
    ("Relu", {}, []), ("Sigmoid", {}, []), ("Tanh", {}, []),
    ("LeakyRelu", {"alpha": 0.2}, []), ("Elu", {"alpha": 0.7}, []),
    ("Gelu", {}, []), ("Gelu", {"approximate": "tanh"}, []),
    ("Softmax", {"axis": 1}, []), ("LogSoftmax", {"axis": -1}, []),
    ("Clip", {}, [("lo", 0.0), ("hi", 6.0)]), ("Clip", {}, [("lo", -0.3), ("hi", 0.4)]),
    ("Clip", {}, [("lo", 0.0)]), ("Dropout", {}, []), ("Identity", {}, []),
])
def test_elementwise(tmp_path, op, attrs, extra):
    inits = [(k, np.array(v, np.float32)) for k, v in extra]
    # the input scaled first, so ReLU6's and Clip's bounds are crossed
    nodes = [helper.make_node("Mul", ["x", "four"], ["s"]),
             helper.make_node(op, ["s"] + [k for k, _ in extra], ["y"], **attrs)]
    _check(tmp_path, _graph(nodes, (2, 3, 4, 5), inits + [("four", np.array(4.0, np.float32))],
                            opset=20), (2, 3, 4, 5))


@pytest.mark.parametrize("op,const", [
    ("Add", np.arange(3, dtype=np.float32).reshape(3, 1, 1)),
    ("Add", np.array([[[[0.5]], [[1.5]], [[-2.0]]]], np.float32)),
    ("Mul", np.array([0.5, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1)),
    ("Mul", np.array(3.0, np.float32)),
    ("Sub", np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1)),
    ("Div", np.array(4.0, np.float32)),
])
def test_arithmetic_with_a_constant(tmp_path, op, const):
    node = helper.make_node(op, ["x", "c"], ["y"])
    model = _check(tmp_path, _graph([node], (2, 3, 4, 5), [("c", const)]), (2, 3, 4, 5))
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    model.train()
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y))  # the layer computing it is trainable


def test_conv_bias_add_folds_into_the_bias(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["h"], kernel_shape=[3, 3]),
             helper.make_node("Add", ["h", "c"], ["y"])]
    inits = [("W", _w(4, 2, 3, 3)), ("B", _w(4, seed=2)),
             ("c", np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1))]
    model = _check(tmp_path, _graph(nodes, (2, 2, 6, 6), inits), (2, 2, 6, 6))
    assert len(model.layers) == 1


@pytest.mark.parametrize("form", ["gemm", "gemm_transB_alpha_beta", "matmul_add", "matmul"])
def test_dense_forms(tmp_path, form):
    if form == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["y"], transB=1)]
        inits = [("B", _w(4, 6)), ("C", _w(4, seed=2))]
    elif form == "gemm_transB_alpha_beta":
        nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["y"], alpha=0.5, beta=2.0)]
        inits = [("B", _w(6, 4)), ("C", _w(1, 4, seed=2))]
    elif form == "matmul_add":
        nodes = [helper.make_node("MatMul", ["x", "B"], ["h"]),
                 helper.make_node("Add", ["h", "C"], ["y"])]
        inits = [("B", _w(6, 4)), ("C", _w(4, seed=2))]
    else:
        nodes = [helper.make_node("MatMul", ["x", "B"], ["y"])]
        inits = [("B", _w(6, 4))]
    model = _check(tmp_path, _graph(nodes, (3, 6), inits), (3, 6))
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]


def test_batchnorm_concat_and_residual_add(tmp_path):
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["a"]),
             helper.make_node("Concat", ["a", "h"], ["y"], axis=1)]
    inits = [("s", _w(3) + 2), ("b", _w(3, seed=2)), ("m", _w(3, seed=3)),
             ("v", np.abs(_w(3, seed=4)) + 0.5)]
    model = _check(tmp_path, _graph(nodes, (2, 3, 4, 4), inits), (2, 3, 4, 4))
    bn = next(layer for layer in model.layers if type(layer).__name__ == "BatchNorm2D")
    assert bn.eps == pytest.approx(1e-3) and bn.momentum == pytest.approx(0.1)


def test_folded_shape_chain_feeding_reshape(tmp_path):
    """TorchScript's x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape,
    with a Cast on the way; the batch size stays symbolic."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Cast", ["n1"], ["n2"], to=TensorProto.INT64),
             helper.make_node("Concat", ["n2", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [("zero", np.array(0, np.int64)), ("axes", np.array([0], np.int64)),
             ("minus1", np.array([-1], np.int64))]
    model = _check(tmp_path, _graph(nodes, (2, 3, 4, 5), inits), (2, 3, 4, 5))
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten"]
    assert model.forward(np.zeros((7, 3, 4, 5), np.float32)).shape == (7, 60)


# ------------------------------------------------------------------------ new layers on their own
def test_new_layers_work_outside_onnx(tmp_path):
    L = ck.layers
    x = ck.Input((3, 8, 8))
    h = L.Pad2D((1, 2, 0, 1), mode="reflect")(x)
    h = L.MaxPool2D(3, stride=2, padding=((0, 1), (1, 0)), dilation=1)(h)
    h = L.Upsample2D(2)(h)
    h = L.ReLU6()(h)
    y = L.GlobalMaxPool2D()(h)
    model = ck.Model(x, y)
    out = model.forward(np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    assert out.shape == (2, 3)
    seq = ck.Sequential([L.Pad2D(1, mode="replicate"), L.AvgPool2D(2, dilation=2),
                         L.Clip(-1.0, 1.0), L.MaxPool2D(2, 1, padding=((1, 0), (0, 1)))],
                        input_shape=(1, 6, 6))
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6))
    assert seq.forward(x).shape == (2, 1, 3, 3)
    # the configurations survive a one-file save and load
    for m, path in ((model, tmp_path / "g.safetensors"), (seq, tmp_path / "s.safetensors")):
        m.save(path)
        again = ck.load_model(path)
        x = np.random.default_rng(2).standard_normal((2,) + m.inputs[0].shape[1:])
        np.testing.assert_array_equal(again.forward(x), m.forward(x))


def test_missing_onnx_package_gives_the_install_hint(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r'pip install "cnnkit\[onnx\]"'):
        ck.onnx.load(tmp_path / "m.onnx")


def test_readme_onnx_example_runs(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    pytest.importorskip("torch", reason="the README's example exports with torch")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "ck.onnx.load" in b)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(block, {"ck": ck, "np": np})
    assert float(capsys.readouterr().out.split()[0]) < 1e-5
