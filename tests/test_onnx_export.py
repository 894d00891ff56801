"""ONNX export (cnnkit.onnx.export, cnnkit export): every built-in layer type, run in
onnxruntime (the oracle: an independent implementation of every operator), gives cnnkit's
inference output within 1e-5 of the output scale in float32; the batch axis is dynamic; graphs
with skips, merges and several inputs and outputs; plugin exporters through the hook; the
errors; the command; atomic writes."""
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.hookspecs import OnnxExportContext
from cnnkit.onnx.export import DEFAULT_OPSET, MIN_OPSET
from cnnkit.plugins import PluginError, Registry, hookimpl
from cnnkit.testing._cases import Case, builtin_cases

RTOL = 1e-5  # of the output scale, float32
#: the oldest opset written, the default, and those where an operator's form changes
#: (ReduceMean's axes became an input in 18, Gelu exists from 20)
OPSETS = (MIN_OPSET, DEFAULT_OPSET, 20)


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (cnnkit[onnx], "
                        "installed by the test extras)")
    return pytest.importorskip("onnxruntime", reason="the exported files are run with "
                               "onnxruntime (installed by the test extras)")


def _builtin_layer_types():
    reg = Registry()
    reg.load(entry_points=False)
    return {name: cls for name, (cls, plugin) in reg.layer_types.items()
            if plugin.startswith("cnnkit.builtin")}


BUILTIN_TYPES = _builtin_layer_types()

#: cases beyond the conformance kit's: layer types without variants, and what export treats
#: specially (ceil-mode windows dropped in the right padding, batch statistics in inference)
EXTRA_CASES = {
    "flatten": [Case({}, (2, 3, 4, 5)), Case({}, (2, 7))],
    "maxpool2d": [Case({"kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True},
                       (2, 2, 4, 7))],
    "avgpool2d": [Case({"kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True},
                       (2, 2, 4, 7)),
                  Case({"kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True,
                        "count_include_pad": False}, (2, 2, 4, 7))],
    "batchnorm2d": [Case({"num_features": 3, "track_running_stats": False}, (4, 3, 2, 3)),
                    Case({"num_features": 2, "affine": False, "track_running_stats": False},
                         (3, 2, 3, 2))],
    "batchnorm1d": [Case({"num_features": 3, "track_running_stats": False}, (4, 3, 5)),
                    Case({"num_features": 2, "track_running_stats": False}, (5, 2))],
}
#: merge layers take several inputs: (constructor arguments, input shapes)
MERGE_CASES = {
    "add": [({}, [(3, 4, 5)] * 2), ({}, [(6,)] * 3)],
    "concat": [({}, [(2, 4, 5), (3, 4, 5)]), ({"axis": -1}, [(2, 4, 5), (2, 4, 1), (2, 4, 3)])],
}


def _cases():
    out = []
    for layer_type, cls in sorted(BUILTIN_TYPES.items()):
        if cls.is_merge:
            continue
        cases = (builtin_cases(layer_type) or []) + EXTRA_CASES.get(layer_type, [])
        for i, case in enumerate(cases):
            out.append(pytest.param(layer_type, case, id=f"{layer_type}-{i}"))
    return out


def randomize(layer, rng):
    """Parameters drawn from N(0, 1), BatchNorm's running statistics away from their
    initial 0 and 1, so every value the export writes matters."""
    for key, value in layer.params.items():
        if value is not None:
            layer.params[key] = rng.standard_normal(value.shape).astype(value.dtype)
    buffers = getattr(layer, "buffers", None) or {}
    if "running_mean" in buffers:
        buffers["running_mean"] = rng.standard_normal(buffers["running_mean"].shape
                                                      ).astype(np.float32)
        buffers["running_var"] = rng.uniform(0.5, 2.0, buffers["running_var"].shape
                                             ).astype(np.float32)
    return layer


def run_onnx(ort, path, xs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs)})


def assert_close(got, want, what=""):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, cnnkit {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1e-30) if want.size else 1.0
    err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
    assert err <= RTOL, f"{what}: error {err:.3g} of the output scale (> {RTOL})"


def export_and_compare(ort, model, xs, path, opset=DEFAULT_OPSET):
    ck.onnx.export(model, path, opset=opset)
    got = run_onnx(ort, path, xs)
    want = model.forward(xs if len(xs) > 1 else xs[0], training=False)
    want = want if isinstance(want, list) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g, w, f"{model.name} at opset {opset}")
    return got


def test_every_builtin_layer_type_has_export_cases():
    covered = {p.values[0] for p in _cases()} | set(MERGE_CASES)
    assert set(BUILTIN_TYPES) <= covered, (
        "built-in layer types without an ONNX export case (add them to EXTRA_CASES or "
        f"MERGE_CASES): {sorted(set(BUILTIN_TYPES) - covered)}")


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("layer_type, case", _cases())
def test_builtin_layer_exports_and_matches_in_onnxruntime(ort, tmp_path, layer_type, case, opset):
    rng = np.random.default_rng(0)
    layer = randomize(BUILTIN_TYPES[layer_type](**case.kwargs), rng)
    x = ck.Input(case.input_shape[1:])
    model = ck.Model(x, layer(x))
    # a batch size other than the case's: nothing in the file may depend on it
    batch = case.input_shape[0] + 2
    inputs = [rng.standard_normal((batch,) + tuple(case.input_shape[1:])).astype(np.float32)]
    if layer_type == "avgpool2d" and tuple(getattr(layer, "dilation", (1, 1))) != (1, 1) \
            and opset < 19:
        with pytest.raises(ValueError, match="dilated average pooling needs ONNX opset 19"):
            ck.onnx.export(model, tmp_path / "layer.onnx", opset=opset)
        assert not (tmp_path / "layer.onnx").exists()
        return
    export_and_compare(ort, model, inputs, tmp_path / "layer.onnx", opset)


@pytest.mark.parametrize("layer_type", sorted(MERGE_CASES))
def test_merge_layers_export_with_several_inputs(ort, tmp_path, layer_type):
    rng = np.random.default_rng(1)
    for kwargs, shapes in MERGE_CASES[layer_type]:
        nodes = [ck.Input(s) for s in shapes]
        model = ck.Model(nodes, BUILTIN_TYPES[layer_type](**kwargs)(nodes))
        xs = [rng.standard_normal((3,) + s).astype(np.float32) for s in shapes]
        export_and_compare(ort, model, xs, tmp_path / "merge.onnx")


def _lenet(rng_seed=0):
    ck.seed(rng_seed)
    model = ck.Sequential([
        L.Conv2D(1, 6, 5, padding=2), L.ScaledTanh(), L.Subsampling(6),
        L.Conv2D(6, 16, 5), L.BatchNorm2D(16), L.ReLU(), L.MaxPool2D(2),
        L.Flatten(), L.Dense(400, 120), L.Dropout(0.3), L.GELU(), L.Dense(120, 10),
        L.LogSoftmax()])
    return model


def test_batch_axis_is_dynamic(ort, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = _lenet()
    rng = np.random.default_rng(2)
    model.forward(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))  # built at batch 8
    for layer in model.layers:
        randomize(layer, rng)
    path = tmp_path / "lenet.onnx"
    ck.onnx.export(model, path)
    graph = onnx.load(str(path)).graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value"), value.name
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["output"]
    # parameters and buffers keep their state-dict names
    names = {t.name for t in graph.initializer}
    assert {"0.weight", "0.bias", "3.weight", "4.running_mean", "4.running_var", "8.weight",
            "11.bias"} <= names
    for batch in (1, 5, 8):
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        assert_close(run_onnx(ort, path, [x])[0], model.forward(x, training=False),
                     f"batch {batch}")


def test_graph_with_skip_connections_and_several_outputs(ort, tmp_path):
    ck.seed(3)
    x = ck.Input((3, 12, 12), name="image")
    h = L.ReLU(name="stem_relu")(L.Conv2D(3, 8, 3, padding="same", name="stem")(x))
    r = L.BatchNorm2D(8, name="bn")(L.Conv2D(8, 8, 3, padding=1, name="branch")(h))
    s = L.Add(name="skip")([h, r])                                        # h fans out
    c = L.Concat(name="cat")([s, L.AvgPool2D(3, stride=1, padding=1, name="pool")(h)])
    y = L.Dense(16, 5, name="head")(L.GlobalAvgPool2D(name="gap")(c))
    model = ck.Model(x, [y, h, x])  # an inner value that also feeds layers, and the input
    rng = np.random.default_rng(4)
    for layer in model.layers:
        randomize(layer, rng)
    xs = [rng.standard_normal((2, 3, 12, 12)).astype(np.float32)]
    got = export_and_compare(ort, model, xs, tmp_path / "graph.onnx")
    np.testing.assert_array_equal(got[2], xs[0])
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(tmp_path / "graph.onnx")).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["output_0", "output_1", "output_2"]
    assert {"stem.weight", "bn.running_var", "head.bias"} <= {t.name for t in graph.initializer}


def test_float64_model_exports_in_float64(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    model = ck.Sequential([L.Dense(4, 3), L.Tanh()], input_shape=(4,)).astype(np.float64)
    ck.onnx.export(model, tmp_path / "f64.onnx")
    proto = onnx.load(str(tmp_path / "f64.onnx"))
    double = onnx.TensorProto.DOUBLE
    assert proto.graph.input[0].type.tensor_type.elem_type == double
    assert all(t.data_type == double for t in proto.graph.initializer)
    weight = next(t for t in proto.graph.initializer if t.name == "0.weight")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), model.layers[0].params["weight"])


# ------------------------------------------------------------------------ Conv2D options
def _conv_with(table, flip, **kwargs):
    """A Conv2D with a connection table and/or flip_kernel: with the constructor arguments
    where Conv2D has them, otherwise set as attributes (all the exporter reads)."""
    try:
        return L.Conv2D(connections=table, flip_kernel=flip, **kwargs), True
    except TypeError:
        layer = L.Conv2D(**kwargs)
        layer.connections, layer.flip_kernel = table, flip
        return layer, False


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("groups", [1])  # a connection table needs groups=1 (Conv2D refuses more)
def test_conv_connection_table_and_true_convolution_export(ort, tmp_path, flip, groups):
    """Exported as the dense convolution with masked weights, the kernel turned 180 degrees
    for true convolution: the oracle is a plain Conv2D given those weights (built here with
    NumPy) run by cnnkit, against onnxruntime on the exported layer."""
    rng = np.random.default_rng(5)
    table = rng.random((6, 4)) < 0.5
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding=(1, 0),
                  groups=groups)
    layer, native = _conv_with(table, flip, **kwargs)
    randomize(layer, rng)
    weight = layer.params["weight"].copy()
    cin_g = 4 // groups
    rows = np.arange(6)[:, None]
    mask = table[rows, (rows // (6 // groups)) * cin_g + np.arange(cin_g)]
    expected = weight * mask[:, :, None, None]
    if flip:
        expected = expected[:, :, ::-1, ::-1]
    plain = L.Conv2D(**kwargs)
    plain.params["weight"] = np.ascontiguousarray(expected)
    plain.params["bias"] = layer.params["bias"].copy()
    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    inp = ck.Input((4, 6, 5))
    model = ck.Model(inp, layer(inp))
    ck.onnx.export(model, tmp_path / "conv.onnx")
    want = plain.forward(x, training=False)
    assert_close(run_onnx(ort, tmp_path / "conv.onnx", [x])[0], want, "masked/flipped conv")
    if native:  # Conv2D has the options: its own forward agrees too
        assert_close(model.forward(x, training=False), want, "cnnkit's own forward")


def test_gelu_is_one_operator_from_opset_20_and_decomposed_before(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    model = ck.Sequential([L.GELU(approximate="tanh")], input_shape=(3,))
    ops = {}
    for opset in (19, 20):
        ck.onnx.export(model, tmp_path / "gelu.onnx", opset=opset)
        ops[opset] = {n.op_type for n in onnx.load(str(tmp_path / "gelu.onnx")).graph.node}
    assert ops[20] == {"Gelu"}
    assert "Gelu" not in ops[19] and "Tanh" in ops[19]


def test_cnnkit_only_layers_are_standard_operators(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    ck.onnx.export(_lenet(), tmp_path / "lenet.onnx", input_shape=(1, 28, 28))
    proto = onnx.load(str(tmp_path / "lenet.onnx"))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", DEFAULT_OPSET)]
    assert all(n.domain == "" for n in proto.graph.node)
    ops = [n.op_type for n in proto.graph.node]
    assert "AveragePool" in ops and "Identity" in ops and ops.count("Gemm") == 2


# ------------------------------------------------------------------------ plugins
class ToySwish(L.Layer):
    """y = x * sigmoid(beta * x): a toy plugin layer type."""

    layer_type = "toyswish"
    input_rank = None

    def __init__(self, beta=1.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.beta = float(beta)
        self.config = {"beta": self.beta}

    def get_config(self):
        return {"beta": self.beta}


class ToySwishNumpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        return x / (1 + np.exp(-config["beta"] * x)), None

    @staticmethod
    def backward(dy, ctx):
        raise NotImplementedError


def export_toyswish(ctx, layer, inputs, input_shapes):
    assert isinstance(ctx, OnnxExportContext)  # what the hook contract promises
    gate = ctx.node("Sigmoid", [ctx.node("Mul", [inputs[0], ctx.constant(layer.beta, "beta")])])
    return ctx.node("Mul", [inputs[0], gate])


class ToyPlugin:
    @staticmethod
    @hookimpl
    def cnnkit_register_layers(register):
        register("toyswish", ToySwish)

    @staticmethod
    @hookimpl
    def cnnkit_register_variants(register):
        register("toyswish", "numpy", ToySwishNumpy)


class ToyExporter:
    @staticmethod
    @hookimpl
    def cnnkit_register_onnx_exporters(register):
        register("toyswish", export_toyswish)


@pytest.fixture
def toy_registry(monkeypatch):
    """A registry with the built-ins and the toy layer type (no exporter yet), used by every
    layer and by the export."""
    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(ToyPlugin, "toy")
    monkeypatch.setattr(ck.plugins, "_registry", reg)
    return reg


def _toy_model():
    x = ck.Input((3, 4, 4))
    swish = ToySwish(1.7, name="swish")
    return ck.Model(x, L.ReLU()(swish(L.Conv2D(3, 3, 3, padding=1, name="conv")(x))))


def test_a_layer_without_exporter_is_an_error_naming_it_and_nothing_is_written(toy_registry,
                                                                              tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    target = tmp_path / "toy.onnx"
    with pytest.raises(ValueError, match=r"no ONNX exporter is registered for layer 'swish' "
                       r"\(type 'toyswish', class ToySwish\).*"
                       r"cnnkit_register_onnx_exporters"):
        ck.onnx.export(_toy_model(), target)
    assert os.listdir(tmp_path) == []


def test_a_plugin_exports_its_layer_type_through_the_hook(ort, toy_registry, tmp_path):
    assert toy_registry.register_plugin(ToyExporter, "toy-export")
    assert toy_registry.plugins["toy-export"].registered["onnx_exporter"] == ["toyswish"]
    assert toy_registry.onnx_exporter("toyswish") == (export_toyswish, "toy-export")
    model = _toy_model()
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4)).astype(np.float32)
    export_and_compare(ort, model, [x], tmp_path / "toy.onnx")


def test_a_second_exporter_for_a_layer_type_fails_the_plugin_naming_both(toy_registry):
    class Again:
        @staticmethod
        @hookimpl
        def cnnkit_register_onnx_exporters(register):
            register("relu", export_toyswish)

    with pytest.raises(PluginError, match=r"onnx_exporter 'relu' is registered twice: by plugin "
                       r"'cnnkit\.builtin\.activation' and by plugin 'again'"):
        toy_registry.register_plugin(Again, "again", strict=True)


def test_a_failing_or_wrong_exporter_names_the_layer_and_leaves_no_file(toy_registry, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")

    def raises(ctx, layer, inputs, input_shapes):
        ctx.node("Relu", inputs)  # halfway through
        raise RuntimeError("cannot express this")

    def reads_nothing(ctx, layer, inputs, input_shapes):
        return ctx.node("Relu", ["not_a_value"])

    def returns_junk(ctx, layer, inputs, input_shapes):
        return 42

    def invalid_node(ctx, layer, inputs, input_shapes):  # Gemm needs 2-D operands
        return ctx.node("Gemm", [inputs[0], ctx.constant(np.ones((3, 3)))])

    target = tmp_path / "toy.onnx"
    target.write_bytes(b"the previous file")
    for exporter, message in [
            (raises, r"swish \(ToySwish\): ONNX export of layer type 'toyswish' \(plugin 'p'\) "
                     r"failed: RuntimeError: cannot express this"),
            (reads_nothing, r"swish \(ToySwish\): a Relu node reads value\(s\) nothing "
                            r"computed: 'not_a_value'"),
            (returns_junk, r"swish \(ToySwish\): the ONNX exporter .* returned 42"),
            (invalid_node, r"(?s)the exported ONNX graph is invalid .*node name: swish/Gemm.*"
                           r"\['swish' is layer swish \(ToySwish\) \(type 'toyswish'\)")]:
        toy_registry.onnx_exporters["toyswish"] = (exporter, "p")
        with pytest.raises(ValueError, match=message):
            ck.onnx.export(_toy_model(), target)
        assert target.read_bytes() == b"the previous file"
        assert os.listdir(tmp_path) == ["toy.onnx"]


def test_the_guides_exporter_example(ort, tmp_path, monkeypatch):
    """docs/plugin-guide.md's exporter for its ChannelScale layer, both run as written."""
    import types

    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugin-guide.md").read_text()
    blocks = [re.search(r"```python\n(.*?)```", guide[guide.index(title):], re.S).group(1)
              for title in ("### A layer with parameters",
                            "### `cnnkit_register_onnx_exporters")]
    assert "cnnkit_register_onnx_exporters" in blocks[1]
    module = types.ModuleType("guide_channelscale")
    for code in blocks:
        exec(compile(code, "plugin-guide.md", "exec"), module.__dict__)
    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(module, "guide")
    monkeypatch.setattr(ck.plugins, "_registry", reg)
    x = ck.Input((3, 4, 5))
    model = ck.Model(x, randomize(module.ChannelScale(3), np.random.default_rng(8))(x))
    xs = [np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)]
    export_and_compare(ort, model, xs, tmp_path / "guide.onnx")


# ------------------------------------------------------------------------ arguments, files
def test_export_checks_its_arguments(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    model = ck.Sequential([L.Dense(4, 2)])
    with pytest.raises(ValueError, match=r"not built yet; pass input_shape="):
        ck.onnx.export(model, tmp_path / "m.onnx")
    ck.onnx.export(model, tmp_path / "m.onnx", input_shape=(4,))  # builds it
    assert model.input_shape == (None, 4)
    with pytest.raises(ValueError, match=r"input_shape \(5,\) differs from the model's input "
                       r"shape \(4,\)"):
        ck.onnx.export(model, tmp_path / "m.onnx", input_shape=(5,))
    for opset in (MIN_OPSET - 1, 10_000, 17.0, True):
        with pytest.raises(ValueError, match=r"opset must be an int from 13 to \d+"):
            ck.onnx.export(model, tmp_path / "m.onnx", opset=opset)
    with pytest.raises(TypeError, match="expected a cnnkit Model or Sequential, got Dense"):
        ck.onnx.export(L.Dense(4, 2), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.onnx.export(model, tmp_path / "no" / "m.onnx")


def test_without_onnx_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    model = ck.Sequential([L.Dense(4, 2)], input_shape=(4,))
    with pytest.raises(ImportError, match=r'install it with: pip install "cnnkit\[onnx\]"') as err:
        ck.onnx.export(model, tmp_path / "m.onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_a_failure_while_writing_leaves_no_partial_file(monkeypatch, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    model = _lenet()
    real_fsync = os.fsync

    def crash(fd):  # the bytes are in the temporary file, the rename has not happened
        assert os.fstat(fd).st_size > 50_000
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    target = tmp_path / "lenet.onnx"
    with pytest.raises(OSError, match="disk full"):
        ck.onnx.export(model, target, input_shape=(1, 28, 28))
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"the previous file")
    with pytest.raises(OSError, match="disk full"):
        ck.onnx.export(model, target)
    assert os.listdir(tmp_path) == ["lenet.onnx"]
    assert target.read_bytes() == b"the previous file"
    monkeypatch.setattr(os, "fsync", real_fsync)
    ck.onnx.export(model, target)
    assert target.stat().st_size > 50_000


# ------------------------------------------------------------------------ command line, README
def test_cli_export_writes_the_saved_model(ort, tmp_path):
    from test_cli import run_cli

    model = _lenet()
    rng = np.random.default_rng(7)
    model.build((1, 28, 28))
    for layer in model.layers:
        randomize(layer, rng)
    model.save(tmp_path / "lenet.safetensors")
    res = run_cli("export", str(tmp_path / "lenet.safetensors"), str(tmp_path / "lenet.onnx"),
                  "--opset", "18")
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "opset 18" in res.stdout and "(N, 1, 28, 28)" in res.stdout
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert_close(run_onnx(ort, tmp_path / "lenet.onnx", [x])[0],
                 ck.load_model(tmp_path / "lenet.safetensors").predict(x), "cnnkit export")
    res = run_cli("export", str(tmp_path / "lenet.safetensors"), str(tmp_path / "b.onnx"),
                  "--opset", "12")
    assert res.returncode == 1 and "opset must be an int from 13" in res.stderr
    res = run_cli("export", str(tmp_path / "missing.safetensors"), str(tmp_path / "c.onnx"))
    assert res.returncode == 1 and "missing.safetensors: file not found" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["lenet.onnx", "lenet.safetensors"]


def test_cli_export_without_onnx_says_what_to_install(monkeypatch, tmp_path, capsys):
    from cnnkit.cli import main

    monkeypatch.setitem(sys.modules, "onnx", None)
    ck.Sequential([L.Dense(4, 2)], input_shape=(4,)).save(tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnkit export: error: ONNX support needs the 'onnx' package")
    assert 'pip install "cnnkit[onnx]"' in err and err.count("\n") == 1


def test_readme_onnx_example_runs(ort, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "ck.onnx.export" in b)
    monkeypatch.chdir(tmp_path)
    model = ck.models.lenet5()
    (_, _), (x_test, _) = ck.datasets.load_mnist()
    ns = {"ck": ck, "model": model, "x_test": x_test}
    exec(block, ns)
    assert_close(ns["logits"], model.predict(x_test[:5]), "README")
