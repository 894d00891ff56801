"""Model files from strangers: damaged or hostile ONNX and safetensors files get a clear cnnkit
error (``ONNXImportError`` / ``ModelFileError``, message naming the file and the node, operator
or tensor), never a crash, another exception type, a huge allocation or a read outside the
model's folder.  Byte flips and truncations of valid files are fuzzed (hypothesis,
``CNNKIT_FUZZ_EXAMPLES`` examples per test, derandomised)."""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkit as ck
from cnnkit.modelfile import ModelFileError, load_safetensors

onnx = pytest.importorskip("onnx", reason="the ONNX import tests need the 'onnx' package "
                           "(pip install -e '.[test]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnkit.onnx import ONNXImportError  # noqa: E402

EXAMPLES = int(os.environ.get("CNNKIT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


def _model(nodes, inits=(), opset=17, x_shape=(1, 4, 4)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _small_model():
    w = numpy_helper.from_array(np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3) / 10, "W")
    b = numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "B")
    return _model([helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3],
                                    pads=[1, 0, 1, 1], name="conv"),
                   helper.make_node("Relu", ["c"], ["r"], name="relu"),
                   helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2],
                                    strides=[2, 2], ceil_mode=1, name="pool"),
                   helper.make_node("Flatten", ["p"], ["y"], name="flat")], [w, b])


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _refused(path, *fragments):
    with pytest.raises(ONNXImportError) as info:
        ck.onnx.load(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_the_small_model_imports(tmp_path):
    model = ck.onnx.load(_save(tmp_path, _small_model()))
    assert model.forward(np.ones((2, 1, 4, 4), np.float32)).shape == (2, 8)


# ------------------------------------------------------------------------ damaged files
def test_garbage_truncated_and_empty_files(tmp_path):
    data = _small_model().SerializeToString()
    for name, content, fragment in [
            ("empty.onnx", b"", "empty"),
            ("garbage.onnx", bytes(range(256)) * 4, "not an ONNX model"),
            ("text.onnx", b"this is not a model\n", "not an ONNX model"),
            ("cut.onnx", data[: len(data) // 2], "not an ONNX model")]:
        (tmp_path / name).write_bytes(content)
        _refused(tmp_path / name, fragment)
    (tmp_path / "folder.onnx").mkdir()
    _refused(tmp_path / "folder.onnx", "not a regular file")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ck.onnx.load(tmp_path / "missing.onnx")


def test_graph_with_a_cycle(tmp_path):
    model = _model([helper.make_node("Relu", ["b"], ["a"], name="first"),
                    helper.make_node("Relu", ["a"], ["b"], name="second"),
                    helper.make_node("Relu", ["a"], ["y"], name="out")])
    _refused(_save(tmp_path, model), "cycle", "Relu")


def test_undefined_and_twice_written_tensors(tmp_path):
    _refused(_save(tmp_path, _model([helper.make_node("Add", ["x", "ghost"], ["y"],
                                                      name="adder")])),
             "'adder'", "'ghost'")
    _refused(_save(tmp_path, _model([helper.make_node("Relu", ["x"], ["y"], name="one"),
                                     helper.make_node("Relu", ["x"], ["y"], name="two")])),
             "written twice")


def test_tensor_sizes_that_overflow_or_exceed_the_file(tmp_path):
    """The dims are checked against the bytes present before any array is made: a shape whose
    element count overflows 64 bits, or that claims gigabytes, is refused at once."""
    for dims, raw, fragment in [([2**40, 2**40, 2**40], b"\0" * 16, "needs"),
                                ([1 << 62, 4], b"\0" * 16, "needs"),
                                ([250_000_000, 4], b"\0" * 64, "needs 4000000000 bytes"),
                                ([-1, 4], b"\0" * 16, "negative dimension")]:
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)
        model = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w],
                       x_shape=(4,))
        _refused(_save(tmp_path, model), "'W'", fragment)
    # typed (not raw) data with too few values
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3], float_data=[1.0] * 5)
    _refused(_save(tmp_path, _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w],
                                    x_shape=(4,))), "'W'", "needs 12 values")


def _external_model(location, offset=0, length=None):
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3],
                    data_location=TensorProto.EXTERNAL)
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        w.external_data.add(key=key, value=value)
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w],
                  x_shape=(4,))


def test_external_data_inside_the_folder_loads(tmp_path):
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w.bin").write_bytes(b"\xff" * 8 + weights.tobytes())
    model = ck.onnx.load(_save(tmp_path, _external_model("data/w.bin", offset=8, length=48)))
    np.testing.assert_array_equal(model.layers[0].params["weight"], weights.T)


def test_external_data_never_leaves_the_models_folder(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(12, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    (folder / "link.bin").symlink_to(secret)
    (folder / "sub" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    for location, fragment in [(str(secret), "leaves the model's folder"),
                               ("../secret.bin", "leaves the model's folder"),
                               ("sub/../../secret.bin", "leaves the model's folder"),
                               ("sub\\..\\..\\secret.bin", "leaves the model's folder"),
                               ("link.bin", "outside the model's folder"),
                               ("sub/dirlink/secret.bin", "outside the model's folder")]:
        _refused(_save(folder, _external_model(location)), "'W'", fragment)
    # inside the folder, but not what the tensor needs
    (folder / "short.bin").write_bytes(b"\0" * 20)
    _refused(_save(folder, _external_model("short.bin")), "'W'", "holds 20 bytes")
    _refused(_save(folder, _external_model("short.bin", offset=0, length=10**12)), "'W'",
             "does not match")
    _refused(_save(folder, _external_model("nothere.bin")), "'W'", "cannot open")
    _refused(_save(folder, _external_model("sub")), "'W'")


def test_unknown_operators_and_unsupported_attributes(tmp_path):
    _refused(_save(tmp_path, _model([helper.make_node("FancyOp", ["x"], ["y"], name="n1")])),
             "'n1'", "unknown operator 'FancyOp'")
    node = helper.make_node("Relu", ["x"], ["y"], name="n2", domain="com.example")
    model = _model([node])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    _refused(_save(tmp_path, model), "'n2'", "com.example")
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "W")
    for attrs, fragment in [({"frobnicate": 1}, "attribute 'frobnicate'"),
                            ({"auto_pad": "SOMETIMES"}, "auto_pad 'SOMETIMES'"),
                            ({"pads": [1, 1]}, "pads"),
                            ({"strides": [2**40, 1]}, "stride")]:
        node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[3, 3],
                                **attrs)
        _refused(_save(tmp_path, _model([node], [w])), "'conv'", fragment)
    for node, fragment in [
            (helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap", name="pad"), "wrap"),
            (helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", name="rs"),
             "linear"),
            (helper.make_node("Softmax", ["x"], ["y"], axis=9, name="sm"), "axis")]:
        inits = [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p"),
                 numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")]
        _refused(_save(tmp_path, _model([node], inits)), fragment)


def test_graph_level_problems(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.other", 1))
    _refused(_save(tmp_path, model), "operator set")
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"
    _refused(_save(tmp_path, model), "fixed positive sizes")
    model = _model([helper.make_node("Relu", ["x"], ["z"])])
    _refused(_save(tmp_path, model), "never computed")


# ------------------------------------------------------------------------ fuzzing
def _onnx_outcome(path):
    try:
        model = ck.onnx.load(path)
    except ONNXImportError as exc:
        assert str(exc).startswith(str(path))
        return None
    model.eval()
    return model


@FUZZ
@given(data=st.data())
def test_fuzz_onnx_byte_flips_and_truncations(tmp_path, data):
    raw = bytearray(_small_model().SerializeToString())
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]), label="kind")
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="at")
        if kind == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "set" and raw:
            raw[at] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]), label="byte")
        elif kind == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(bytes(raw))
    model = _onnx_outcome(path)
    if model is not None:  # whatever imported also runs (or refuses the input cleanly)
        shape = model.inputs[0].shape[1:]
        if np.prod(shape) <= 10**5:
            try:
                model.forward(np.ones((1,) + shape, np.float32))
            except (ValueError, TypeError):
                pass


_OPS = ["Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalMaxPool", "Relu", "Clip",
        "Gemm", "MatMul", "Add", "Mul", "Concat", "Pad", "Resize", "Reshape", "Flatten",
        "Shape", "Gather", "Unsqueeze", "Softmax", "BatchNormalization", "Identity", "Expand"]
_INTS = st.sampled_from([-(2**62), -2, -1, 0, 1, 2, 3, 7, 2**31, 2**62])


@FUZZ
@given(data=st.data())
def test_fuzz_onnx_structure(tmp_path, data):
    """Well-formed protobufs with hostile content: operators swapped, attributes and dims
    replaced by extreme values, inputs rewired."""
    model = _small_model()
    graph = model.graph
    names = ["x", "W", "B", "c", "r", "p", "y", ""]
    for _ in range(data.draw(st.integers(1, 5), label="edits")):
        node = graph.node[data.draw(st.integers(0, len(graph.node) - 1), label="node")]
        kind = data.draw(st.sampled_from(["op", "attr", "dims", "input", "opset"]), label="kind")
        if kind == "op":
            node.op_type = data.draw(st.sampled_from(_OPS), label="op")
        elif kind == "attr":
            key = data.draw(st.sampled_from(["kernel_shape", "pads", "strides", "dilations",
                                             "group", "axis", "ceil_mode", "auto_pad"]))
            for i, a in enumerate(node.attribute):
                if a.name == key:
                    del node.attribute[i]
                    break
            if key == "auto_pad":
                value = data.draw(st.sampled_from(["SAME_UPPER", "VALID", "NOTSET", "X"]))
            elif key in ("group", "axis", "ceil_mode"):
                value = data.draw(_INTS)
            else:
                value = data.draw(st.lists(_INTS, min_size=0, max_size=5))
            node.attribute.append(helper.make_attribute(
                key, value, attr_type=None if value != [] else onnx.AttributeProto.INTS))
        elif kind == "dims":
            init = graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))]
            init.dims[:] = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 9, 2**40]),
                                              max_size=4))
        elif kind == "input" and len(node.input):
            node.input[data.draw(st.integers(0, len(node.input) - 1))] = \
                data.draw(st.sampled_from(names))
        else:
            model.opset_import[0].version = data.draw(st.sampled_from([1, 7, 9, 11, 13, 99]))
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(model.SerializeToString())
    model = _onnx_outcome(path)
    if model is not None:
        try:
            model.forward(np.ones((1, 1, 4, 4), np.float32))
        except (ValueError, TypeError):
            pass


@FUZZ
@given(data=st.data())
def test_fuzz_safetensors_model_files(tmp_path, data):
    path = tmp_path / "m.safetensors"
    if not path.exists():
        seq = ck.Sequential([ck.layers.Conv2D(1, 2, 3, rng=0), ck.layers.ReLU(),
                             ck.layers.Flatten(), ck.layers.Dense(8, 3, rng=1)],
                            input_shape=(1, 4, 4))
        seq.save(path)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "cut", "length"]), label="kind")
        at = data.draw(st.integers(0, len(raw) - 1), label="at") if raw else 0
        if kind == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "cut":
            del raw[at:]
        elif len(raw) >= 8:
            raw[:8] = struct.pack("<Q", data.draw(st.sampled_from(
                [0, 1, len(raw), 2**31, 2**63, 2**64 - 1]), label="header length"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    try:
        ck.load_model(bad)
    except ModelFileError as exc:
        assert str(exc).startswith(str(bad)), str(exc)


# ------------------------------------------------------------------------ safetensors
def _safetensors_bytes(header, payload):
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + payload


@pytest.mark.parametrize("header,payload,fragment", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "corrupt"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 16, "corrupt"),
    ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, b"\0" * 16,
     "corrupt"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16, "corrupt"),
    ({"w": {"dtype": "XX", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "corrupt"),
    ({"w": "nonsense"}, b"", "corrupt"),
    ([1, 2, 3], b"", "not a JSON object"),
])
def test_safetensors_headers_that_lie(tmp_path, header, payload, fragment):
    path = tmp_path / "w.safetensors"
    path.write_bytes(_safetensors_bytes(header, payload))
    with pytest.raises(ModelFileError, match=fragment) as info:
        load_safetensors(path)
    assert str(info.value).startswith(str(path))


def test_safetensors_huge_or_truncated_header(tmp_path):
    path = tmp_path / "w.safetensors"
    for content, fragment in [(struct.pack("<Q", 2**63) + b"{}", "claims"),
                              (struct.pack("<Q", 2**64 - 1), "claims"),
                              (b"\x10\x00", "shorter than the 8-byte header size"),
                              (struct.pack("<Q", 4) + b"{\"a\"", "not JSON")]:
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=fragment):
            load_safetensors(path)
