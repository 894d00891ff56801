"""Declarative models: round trips through TOML/JSON, and errors that name the entry and line."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import config as C
from cnnkit import layers as L
from cnnkit.train import fit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def same_outputs(a, b, x):
    b.load_state_dict(a.state_dict())
    return np.array_equal(a.predict(x), b.predict(x))


def residual_graph():
    rng = np.random.default_rng(0)
    x = ck.Input((3, 16, 16), name="x")
    h = L.ReLU(name="r")(L.Conv2D(3, 8, 3, padding=1, name="c1", rng=rng)(x))
    r = L.BatchNorm2D(8, name="bn")(L.Conv2D(8, 8, 3, padding="same", bias=False, name="c2",
                                             rng=rng)(h))
    s = L.Add(name="add")([h, r])
    cat = L.Concat(name="cat")([s, L.LeakyReLU(0.2, name="lr")(h)])
    y = L.Dense(16, 5, name="fc", rng=rng)(L.GlobalAvgPool2D(name="gap")(cat))
    return ck.Model(x, y, name="resnetish")


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_sequential_round_trip(tmp_path, fmt):
    model = ck.models.lenet5(rng=0)
    cfg = C.model_to_config(model)
    assert "inputs" not in cfg and cfg["input_shape"] == [1, 28, 28]
    path = tmp_path / f"lenet.{fmt}"
    C.save_config(model, path)
    loaded = C.load_config(path)
    assert loaded == json.loads(json.dumps(cfg))
    again = C.model_from_config(loaded)
    assert isinstance(again, ck.Sequential) and again.name == "lenet5"
    assert C.model_to_config(again) == cfg
    assert [(n.name, n.shape) for n in again.nodes] == [(n.name, n.shape) for n in model.nodes]
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    assert same_outputs(model, again, x)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_graph_round_trip(tmp_path, fmt):
    model = residual_graph()
    cfg = C.model_to_config(model)
    assert cfg["inputs"] == [{"name": "x", "shape": [3, 16, 16]}] and cfg["outputs"] == "fc"
    assert {e["name"]: e["inputs"] for e in cfg["layers"]}["add"] == ["r", "bn"]
    path = tmp_path / f"g.{fmt}"
    C.save_config(model, path)
    again = C.load_model(path)
    assert type(again) is ck.Model and C.model_to_config(again) == cfg
    # a few training steps so BatchNorm's buffers are not at their defaults
    xs = np.random.default_rng(2).normal(size=(8, 3, 16, 16)).astype(np.float32)
    for _ in range(2):
        model.forward(xs, training=True)
    assert same_outputs(model, again, xs)


def test_every_new_layer_type_round_trips():
    layers = [L.ZeroPad2D((1, 2), name="pad"), L.Conv2D(2, 4, 3, name="conv"),
              L.ELU(0.5, name="elu"), L.GELU("tanh", name="gelu"), L.ScaledTanh(name="st"),
              L.Subsampling(4, 2, mode="average", name="sub"),
              L.ConvTranspose2D(4, 3, 2, stride=2, name="deconv"), L.BatchNorm2D(3, name="bn"),
              L.AvgPool2D(2, name="avg"), L.Dropout(0.25, name="drop"),
              L.GlobalAvgPool2D(name="gap"), L.BatchNorm1D(3, momentum=None, name="bn1"),
              L.Dense(3, 6, bias=False, name="fc"), L.Softmax(name="sm"),
              L.LogSoftmax(name="lsm"), L.Sigmoid(name="sig"), L.Tanh(name="tanh")]
    model = ck.Sequential(layers, input_shape=(2, 9, 9), name="zoo")
    cfg = C.model_to_config(model)
    text = C.dumps_toml(cfg)
    again = C.model_from_config(C.loads(text, "toml"))
    assert C.model_to_config(again) == cfg
    x = np.random.default_rng(0).random((3, 2, 9, 9)).astype(np.float32)
    assert same_outputs(model, again, x)


def test_float64_multi_output_and_defaults():
    cfg = {"name": "two", "dtype": "float64",
           "inputs": [{"name": "a", "shape": [4]}, {"name": "b", "shape": [4]}],
           "outputs": ["s", "d2"],
           "layers": [{"type": "add", "name": "s", "inputs": ["a", "b"]},
                      {"type": "dense", "name": "d1", "in_features": 4, "out_features": 3,
                       "inputs": "a"},
                      {"type": "relu"},                      # default name relu_1, after d1
                      {"type": "dense", "name": "d2", "in_features": 3, "out_features": 2}]}
    model = C.model_from_config(cfg, rng=0)
    assert model.dtype == np.float64 and [n.name for n in model.nodes][-2:] == ["relu_1", "d2"]
    out = model.forward([np.ones((2, 4)), np.ones((2, 4))])
    assert isinstance(out, list) and out[0].shape == (2, 4) and out[1].shape == (2, 2)
    assert C.model_to_config(model)["outputs"] == ["s", "d2"]
    # same seed, same weights
    again = C.model_from_config(cfg, rng=0)
    assert all(np.array_equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_layers_may_be_listed_in_any_order():
    cfg = {"inputs": [{"name": "x", "shape": [4]}], "outputs": "out",
           "layers": [{"type": "dense", "name": "out", "in_features": 3, "out_features": 2,
                       "inputs": ["h"]},
                      {"type": "dense", "name": "h", "in_features": 4, "out_features": 3,
                       "inputs": ["x"]}]}
    model = C.model_from_config(cfg)
    assert [n.name for n in model.nodes] == ["h", "out"]


def test_initializers_impl_and_unbuilt_sequential():
    model = ck.Sequential([L.Conv2D(1, 2, 3, impl="numpy", weight_init="xavier_uniform",
                                    bias_init=("constant", {"value": 0.5}), name="c")])
    cfg = C.model_to_config(model)
    entry = cfg["layers"][0]
    assert entry["impl"] == "numpy" and entry["weight_init"] == "xavier_uniform"
    assert entry["bias_init"] == {"name": "constant", "value": 0.5}
    assert "input_shape" not in cfg
    again = C.model_from_config(C.loads(C.dumps_toml(cfg), "toml"))
    assert again.layers[0].impl == "numpy"
    assert np.all(again.layers[0].params["bias"] == 0.5)
    with pytest.raises(ValueError, match="callable"):
        C.model_to_config(ck.Sequential([L.Dense(2, 2, weight_init=lambda s, **k: np.ones(s))]))


def test_toml_emitter_writes_valid_toml():
    import tomllib

    cfg = {"name": 'quote " and \\ back', "values": [1, 2.5, True, "x"], "f": 1e-07,
           "big": 3.0, "nested": {"a": 1, "deeper": {"b": [1, 2]}},
           "items": [{"k": 1, "init": {"name": "n", "v": 2}}, {"k": 2}], "none": None,
           "listed": [None, 1]}
    text = C.dumps_toml(cfg)
    tomllib.loads(text)  # valid TOML
    assert C.loads(text, "toml") == cfg  # None round trips as {none = true}


def test_examples_build_with_the_expected_shapes():
    lenet98 = C.load_model(EXAMPLES / "lenet5-1998.toml")
    assert lenet98.output_shape == (None, 10)
    assert [type(l).__name__ for l in lenet98.layers][:4] == ["Conv2D", "ScaledTanh",
                                                              "Subsampling", "ScaledTanh"]
    assert lenet98.get_layer("C5").get_config()["out_channels"] == 120
    modern = C.load_model(EXAMPLES / "lenet5-modern.toml", rng=np.random.default_rng(0))
    reference = ck.models.lenet5(rng=np.random.default_rng(0))
    assert C.model_to_config(modern) == C.model_to_config(reference)
    assert all(np.array_equal(v, modern.state_dict()[k])
               for k, v in reference.state_dict().items())
    resnet = C.load_model(EXAMPLES / "resnet-small.toml")
    assert resnet.input_shape == (None, 3, 32, 32) and resnet.output_shape == (None, 4)
    assert sum(isinstance(l, L.Add) for l in resnet.layers) == 2
    assert sum(isinstance(l, L.BatchNorm2D) for l in resnet.layers) >= 4
    for name in ("lenet5-1998", "lenet5-modern", "resnet-small"):
        spec = C.training_from_config(C.load_config(EXAMPLES / f"{name}.toml"))
        assert spec.epochs >= 1


def test_resnet_example_trains_on_a_synthetic_task():
    cfg = C.load_config(EXAMPLES / "resnet-small.toml")
    spec = C.training_from_config(cfg)
    spec.data = dict(spec.data, train_size=256, test_size=64)
    (x, y), (xv, yv), _ = C.load_data(spec)
    assert x.shape == (256, 3, 32, 32)
    rng = np.random.default_rng(spec.seed)
    model = C.model_from_config(cfg, rng=rng)
    opt = C.make_optimizer(spec, model)
    sched = C.make_schedule(spec, opt, spec.epochs)
    h = fit(model, (x, y), (xv, yv), optimizer=opt, loss=C.make_loss(spec),
              scheduler=sched, epochs=spec.epochs, batch_size=spec.batch_size, rng=rng,
              verbose=False)
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["val_accuracy"][-1] > 0.8


# ------------------------------------------------------------------------------ errors
BASE_TOML = '''name = "net"
input_shape = [1, 8, 8]

[[layers]]
type = "conv2d"
name = "c1"
in_channels = 1
out_channels = 4
kernel_size = 3

[[layers]]
type = "relu"
name = "act"

[[layers]]
type = "flatten"

[[layers]]
type = "dense"
name = "fc"
in_features = 144
out_features = 10
'''


def write(tmp_path, text, name="net.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path_or_cfg):
    cfg = C.load_config(path_or_cfg) if isinstance(path_or_cfg, Path) else path_or_cfg
    with pytest.raises(C.ConfigError) as info:
        C.model_from_config(cfg)
    return str(info.value)


def line_of(text, needle):
    return text.splitlines().index(needle) + 1


def test_base_config_is_fine(tmp_path):
    model = C.load_model(write(tmp_path, BASE_TOML))
    assert [l.name for l in model.layers] == ["c1", "act", "flatten_1", "fc"]


def test_unknown_layer_type(tmp_path):
    text = BASE_TOML.replace('type = "relu"', 'type = "rleu"')
    path = write(tmp_path, text)
    msg = error_of(path)
    line = line_of(text, 'type = "rleu"')
    assert msg.startswith(f"{path}:{line}: ")
    assert 'layers[1] "act" (rleu): unknown layer type \'rleu\'' in msg
    assert "relu" in msg and "conv2d" in msg  # lists the registered types


def test_unexpected_argument(tmp_path):
    text = BASE_TOML.replace("kernel_size = 3", "kernal_size = 3")
    path = write(tmp_path, text)
    msg = error_of(path)
    assert msg.startswith(f"{path}:{line_of(text, 'kernal_size = 3')}: ")
    assert "layers[0] \"c1\" (conv2d): unexpected argument 'kernal_size'" in msg
    assert "kernel_size" in msg  # what it takes


def test_missing_required_argument(tmp_path):
    text = BASE_TOML.replace("out_channels = 4\n", "")
    msg = error_of(write(tmp_path, text))
    assert "layers[0] \"c1\" (conv2d): missing required argument 'out_channels'" in msg


@pytest.mark.parametrize("bad, needle, expect", [
    ("kernel_size = 0", "kernel_size = 0", "kernel_size must be >= 1"),
    ('kernel_size = "big"', 'kernel_size = "big"', "kernel_size must be an int or a pair"),
    ('padding = "full"', 'padding = "full"', "padding must be 'valid', 'same'"),
])
def test_bad_argument_value(tmp_path, bad, needle, expect):
    text = BASE_TOML.replace("kernel_size = 3", bad if "padding" not in bad
                             else "kernel_size = 3\n" + bad)
    path = write(tmp_path, text)
    msg = error_of(path)
    assert 'layers[0] "c1" (conv2d): bad argument' in msg and expect in msg
    assert msg.startswith(f"{path}:{line_of(text, needle)}: ")


def test_shape_mismatch_in_a_chain(tmp_path):
    text = BASE_TOML.replace("in_features = 144", "in_features = 100")
    path = write(tmp_path, text)
    msg = error_of(path)
    line = line_of(text, 'name = "fc"')
    assert msg.startswith(f"{path}:{line}: ")
    assert 'layers[3] "fc" (dense): shape mismatch' in msg
    assert "expected 100 input features, got shape (None, 144)" in msg
    assert "fed by layers[2] 'flatten_1'" in msg


def test_duplicate_names(tmp_path):
    text = BASE_TOML.replace('name = "act"', 'name = "c1"')
    path = write(tmp_path, text)
    msg = error_of(path)
    line = [i + 1 for i, t in enumerate(text.splitlines()) if t == 'name = "c1"'][1]
    assert msg.startswith(f"{path}:{line}: ")  # the second one
    assert "duplicate name 'c1' (also layers[0])" in msg


GRAPH_JSON = {
    "name": "g", "inputs": [{"name": "x", "shape": [4]}], "outputs": "out",
    "layers": [
        {"type": "dense", "name": "a", "in_features": 4, "out_features": 3, "inputs": ["x"]},
        {"type": "dense", "name": "b", "in_features": 4, "out_features": 3, "inputs": ["x"]},
        {"type": "add", "name": "sum", "inputs": ["a", "b"]},
        {"type": "dense", "name": "out", "in_features": 3, "out_features": 2, "inputs": ["sum"]},
    ]}


def graph_error(tmp_path, mutate):
    cfg = json.loads(json.dumps(GRAPH_JSON))
    mutate(cfg)
    text = json.dumps(cfg, indent=2)
    path = write(tmp_path, text, "g.json")
    return path, text, error_of(path)


def json_line(text, layer_name, key=None):
    lines = text.splitlines()
    start = lines.index(f'      "name": "{layer_name}",') if key is None else \
        lines.index(f'      "name": "{layer_name}",') - 1
    if key is None:
        return start + 1
    for i in range(start, len(lines)):
        if lines[i].strip().startswith(f'"{key}"'):
            return i + 1
    raise AssertionError(key)


def test_graph_config_is_fine(tmp_path):
    path = write(tmp_path, json.dumps(GRAPH_JSON), "g.json")
    assert [n.name for n in C.load_model(path).nodes] == ["a", "b", "sum", "out"]


def test_broken_edge_unknown_node(tmp_path):
    path, text, msg = graph_error(tmp_path, lambda c: c["layers"][2].update(inputs=["a", "c"]))
    assert msg.startswith(f"{path}:{json_line(text, 'sum', 'inputs')}: ")
    assert 'layers[2] "sum" (add): broken edge: input \'c\' names no node' in msg
    assert "known nodes: x, a, b, out" in msg


def test_broken_edge_cycle(tmp_path):
    def mutate(c):
        c["layers"][0]["inputs"] = ["out"]
        c["layers"][0]["in_features"] = 2
    path, text, msg = graph_error(tmp_path, mutate)
    assert "broken edge: a cycle" in msg
    assert re.search(r"'(a|sum|out)' -> '(a|sum|out)' -> '(a|sum|out)' -> '\1'", msg)
    assert re.match(rf"{re.escape(str(path))}:\d+: layers\[\d\] \"(a|sum|out)\"", msg)


def test_broken_edge_dangling_layer(tmp_path):
    def mutate(c):
        c["layers"].insert(3, {"type": "relu", "name": "unused", "inputs": ["sum"]})
    path, text, msg = graph_error(tmp_path, mutate)
    assert msg.startswith(f"{path}:{json_line(text, 'unused')}: ")
    assert 'layers[3] "unused" (relu): broken edge: dangling layer' in msg
    assert "reaches none of the model outputs ('out')" in msg


def test_broken_edge_unknown_output_and_unused_input(tmp_path):
    path, text, msg = graph_error(tmp_path, lambda c: c.update(outputs="outt"))
    assert "broken edge: output 'outt' names no node" in msg
    line = text.splitlines().index('  "outputs": "outt",') + 1
    assert msg.startswith(f"{path}:{line}: ")

    def two_inputs(c):
        c["inputs"].append({"name": "z", "shape": [4]})
    _, _, msg = graph_error(tmp_path, two_inputs)
    assert "model input 'z' is not used" in msg


def test_shape_mismatch_in_a_graph(tmp_path):
    path, text, msg = graph_error(tmp_path, lambda c: c["layers"][1].update(out_features=5))
    assert msg.startswith(f"{path}:{json_line(text, 'sum')}: ")
    assert 'layers[2] "sum" (add): shape mismatch' in msg
    assert "(N, 3) and (N, 5)" in msg


def test_merge_layer_needs_inputs(tmp_path):
    text = BASE_TOML.replace('type = "relu"', 'type = "add"')
    msg = error_of(write(tmp_path, text))
    assert 'layers[1] "act" (add): a merge layer needs \'inputs\'' in msg


def test_structural_errors(tmp_path):
    msg = error_of(write(tmp_path, 'name = "x"\nlayerz = []\n'))
    assert "net.toml:2: unknown top-level key 'layerz'" in msg
    msg = error_of(write(tmp_path, 'input_shape = [1, 0]\n[[layers]]\ntype = "relu"\n'))
    assert "net.toml:1: input_shape must be a non-empty list of positive ints" in msg
    with pytest.raises(C.ConfigError, match=r"net\.toml: invalid TOML"):
        C.load_config(write(tmp_path, "name = \n"))
    with pytest.raises(C.ConfigError, match=r"g\.json:2: invalid JSON"):
        C.load_config(write(tmp_path, '{\n  "name": ,\n}', "g.json"))
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        C.load_config(tmp_path / "net.yaml")
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        C.load_config(tmp_path / "missing.toml")
    # a dict config (no file): the entry is still named
    with pytest.raises(C.ConfigError, match=r"^layers\[0\] \(conv\): unknown layer type"):
        C.model_from_config({"layers": [{"type": "conv"}]})


def test_training_section_and_its_errors(tmp_path):
    text = BASE_TOML + '''
[training]
epochs = 2
optimizer = { name = "adam", lr = 0.01 }
schedule = { name = "warmup", warmup_steps = 2, after = { name = "cosine", T_max = 3 } }
loss = { name = "softmax_cross_entropy" }
regularizer = { name = "l2", weight_decay = 0.001 }
early_stopping = { patience = 2 }
data = { name = "mnist", train_size = 10, test_size = 5 }
'''
    path = write(tmp_path, text)
    cfg = C.load_config(path)
    spec = C.training_from_config(cfg)
    model = C.model_from_config(cfg)
    opt = C.make_optimizer(spec, model)
    assert isinstance(opt, ck.optim.Adam) and opt.lr == 0.01
    sched = C.make_schedule(spec, opt, spec.epochs)
    assert type(sched).__name__ == "LinearWarmup" and type(sched.after).__name__ == \
        "CosineAnnealingLR"
    assert isinstance(C.make_loss(spec), ck.losses.SoftmaxCrossEntropy)
    assert isinstance(C.make_regularizer(spec), ck.losses.L2Penalty)
    (x, y), (xv, yv), _ = C.load_data(spec)
    assert len(x) == 10 and len(xv) == 5

    def err(replacement, needle):
        bad = text.replace(needle, replacement)
        p = write(tmp_path, bad, "bad.toml")
        cfg = C.load_config(p)
        with pytest.raises(C.ConfigError) as info:
            spec = C.training_from_config(cfg)
            model = C.model_from_config(cfg)
            opt = C.make_optimizer(spec, model)
            C.make_schedule(spec, opt, 2)
            C.make_loss(spec)
            C.load_data(spec)
        return str(info.value), bad

    msg, bad = err("epochs = 0", "epochs = 2")
    assert msg.startswith(f"{tmp_path / 'bad.toml'}:{line_of(bad, 'epochs = 0')}: training.epochs:")
    assert "positive int" in msg
    msg, bad = err('optimizer = { name = "adamm" }', 'optimizer = { name = "adam", lr = 0.01 }')
    assert "training.optimizer: unknown optimizer 'adamm'" in msg
    line = line_of(bad, 'optimizer = { name = "adamm" }')
    assert f":{line}:" in msg
    msg, _ = err('optimizer = { name = "adam", momentum = 0.9 }',
                 'optimizer = { name = "adam", lr = 0.01 }')
    assert "training.optimizer:" in msg and "momentum" in msg
    msg, _ = err('loss = "hinge"', 'loss = { name = "softmax_cross_entropy" }')
    assert "training.loss: unknown loss 'hinge'" in msg and "softmaxcrossentropy" in msg
    msg, _ = err('data = "cifar"', 'data = { name = "mnist", train_size = 10, test_size = 5 }')
    assert "training.data: unknown data set 'cifar'" in msg
    msg, _ = err("epochz = 2", "epochs = 2")
    assert "training.epochz: unknown key" in msg
    msg, _ = err('schedule = { name = "cosine", T_maxx = 3 }',
                 'schedule = { name = "warmup", warmup_steps = 2, after = { name = "cosine", '
                 'T_max = 3 } }')
    assert "training.schedule:" in msg and "T_maxx" in msg


def test_training_names_resolve_through_one_table_per_kind(tmp_path):
    """Every spelling a config may use finds its class; a name of another kind is refused."""
    def spec(**section):
        return C.training_from_config({"layers": [], "training": section})

    model = ck.Sequential([L.Dense(3, 2, name="fc")], input_shape=(3,))
    for name, cls in (("softmax_cross_entropy", ck.losses.SoftmaxCrossEntropy),
                      ("SoftmaxCrossEntropy", ck.losses.SoftmaxCrossEntropy),
                      ("cross-entropy", ck.losses.SoftmaxCrossEntropy),
                      ("ce", ck.losses.SoftmaxCrossEntropy), ("MSE", ck.losses.MSE),
                      ("nll_loss", ck.losses.NLLLoss), ("bce_with_logits", ck.losses.BCEWithLogits)):
        assert type(C.make_loss(spec(loss=name))) is cls, name
    for name, cls, opts in (("StepLR", ck.schedules.StepLR, {"step_size": 2}),
                            ("step", ck.schedules.StepLR, {"step_size": 2}),
                            ("multi_step", ck.schedules.MultiStepLR, {"milestones": [2]}),
                            ("exponential", ck.schedules.ExponentialLR, {"gamma": 0.5}),
                            ("cosine_annealing", ck.schedules.CosineAnnealingLR, {}),
                            ("warmup", ck.schedules.LinearWarmup, {"warmup_steps": 2})):
        opt = ck.optim.SGD(model, lr=0.1)
        sched = C.make_schedule(spec(schedule={"name": name, **opts}), opt, epochs=4)
        assert type(sched) is cls, name
    for name in ("l2", "L2Penalty", "l2_penalty"):
        reg = C.make_regularizer(spec(regularizer={"name": name, "weight_decay": 0.5}))
        assert isinstance(reg, ck.losses.L2Penalty) and reg.weight_decay == 0.5
    # a loss is not a weight penalty, nor a schedule a loss
    with pytest.raises(C.ConfigError, match=r"training.regularizer: unknown regularizer 'mse'"):
        C.make_regularizer(spec(regularizer={"name": "mse"}))
    with pytest.raises(C.ConfigError, match=r"training.loss: unknown loss 'steplr'"):
        C.make_loss(spec(loss="steplr"))
    with pytest.raises(C.ConfigError, match=r"unknown schedule 'adam'; known: .*warmup"):
        C.make_schedule(spec(schedule="adam"), ck.optim.SGD(model, lr=0.1))
    # the data set options are checked by cnnkit.datasets, reported against the config entry
    with pytest.raises(C.ConfigError, match=r"training.data: synthetic_data: classes must be"):
        C.load_data(spec(data={"name": "synthetic", "classes": 0}))
    with pytest.raises(C.ConfigError, match=r"training.data: pixel_range must be"):
        C.load_data(spec(data={"name": "mnist", "pixel_range": [1, 0]}))
    with pytest.raises(C.ConfigError, match=r"--data \(a folder\) does not apply"):
        C.load_data(spec(data="synthetic"), path_override=str(tmp_path))


def test_save_config_is_atomic_and_adds_training(tmp_path, monkeypatch):
    model = ck.models.lenet5()
    path = tmp_path / "m.toml"
    C.save_config(model, path, training={"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.1}})
    before = path.read_text()
    spec = C.training_from_config(C.load_config(path))
    assert spec.epochs == 3 and spec.optimizer == {"name": "sgd", "lr": 0.1}

    import cnnkit.io

    def boom(*a, **k):
        raise OSError("rename failed")
    monkeypatch.setattr(cnnkit.io.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        C.save_config(ck.models.lenet5(num_classes=3), path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.toml"]
