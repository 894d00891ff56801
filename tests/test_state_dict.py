"""Structural state dicts: names that depend on the model's structure only, exchange with
PyTorch (its modules are the oracle for names, layouts and BatchNorm's running statistics),
and weight files that load in a fresh process."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.state import IncompatibleKeys, LegacyNamesWarning

RNG = np.random.default_rng(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args):
    """A fresh interpreter that imports this tree's cnnkit whatever its working folder."""
    env = dict(os.environ, CNNKIT_LOAD_PLUGINS="")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def ck_lenet(**kw):
    """The README's LeNet: no layer names given."""
    return ck.Sequential([
        L.Conv2D(1, 6, 5, padding=2, **kw), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(6, 16, 5, **kw), L.ReLU(), L.MaxPool2D(2),
        L.Flatten(), L.Dense(400, 120, **kw), L.ReLU(), L.Dense(120, 84, **kw), L.ReLU(),
        L.Dense(84, 10, **kw)], input_shape=(1, 28, 28))


def torch_lenet():
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def ck_bn_net(momentum=0.1):
    return ck.Sequential([L.Conv2D(3, 4, 3, padding=1), L.BatchNorm2D(4, momentum=momentum),
                          L.ReLU(), L.Flatten(), L.Dense(4 * 6 * 6, 5)], input_shape=(3, 6, 6))


def torch_bn_net(momentum=0.1):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=momentum),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def images(n=5, shape=(1, 28, 28)):
    return RNG.standard_normal((n, *shape)).astype(np.float32)


# ------------------------------------------------------------------------------------ names
def test_sequential_keys_are_torch_sequential_keys():
    model = ck_lenet()
    assert list(model.state_dict()) == list(torch_lenet().state_dict())
    assert list(model.state_dict())[:4] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    # named layers and an unbuilt Sequential: still by position
    named = ck.models.lenet5(rng=0)
    assert list(named.state_dict()) == list(model.state_dict())
    unbuilt = ck.Sequential([L.Dense(3, 2, name="fc"), L.ReLU(), L.Dense(2, 1, bias=False)])
    assert list(unbuilt.state_dict()) == ["0.weight", "0.bias", "2.weight"]


def test_batchnorm_buffers_have_torch_names():
    assert list(ck_bn_net().state_dict()) == list(torch_bn_net().state_dict())
    assert "1.num_batches_tracked" in ck_bn_net().state_dict()
    no_stats = ck.Sequential([L.BatchNorm1D(3, affine=False, track_running_stats=False)])
    ref = torch.nn.Sequential(torch.nn.BatchNorm1d(3, affine=False, track_running_stats=False))
    assert list(no_stats.state_dict()) == list(ref.state_dict()) == []


def test_names_do_not_depend_on_what_the_process_built_before():
    before = list(ck_lenet().state_dict())
    for _ in range(3):
        L.Conv2D(1, 6, 5), L.Dense(2, 2)  # advance the default-name counters
    assert list(ck_lenet().state_dict()) == before

    def graph():
        x = ck.Input((2, 5, 5))
        h = L.Conv2D(2, 3, 3, padding=1)(x)
        s = L.Add()([h, L.Conv2D(3, 3, 3, padding=1, name="side")(h)])
        return ck.Model(x, L.Dense(75, 2, name="head")(L.Flatten()(s)))

    keys = list(graph().state_dict())
    L.Conv2D(1, 1, 1)
    assert list(graph().state_dict()) == keys
    # given names are kept, the others are positions in topological order
    assert keys == ["0.weight", "0.bias", "side.weight", "side.bias", "head.weight", "head.bias"]


def test_graph_layer_named_like_a_position_is_refused():
    x = ck.Input((3,))
    y = L.Dense(3, 3, name="0")(L.Dense(3, 3)(x))
    model = ck.Model(x, y)
    with pytest.raises(ValueError, match="'0'.*rename"):
        model.state_dict()


# ------------------------------------------------------------------------------------ PyTorch
def test_torch_state_dict_loads_as_is_and_gives_torch_outputs():
    torch.manual_seed(0)
    ref = torch_lenet().eval()
    model = ck_lenet()
    result = model.load_state_dict(ref.state_dict())  # torch tensors, not converted by the caller
    assert result == IncompatibleKeys([], []) and result.missing_keys == []
    x = images()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = model.predict(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_loaded_tensors_are_copies_not_views_of_the_source():
    # torch's load_state_dict copies into the module's own storage: training the source model
    # afterwards (in-place updates of its tensors) must not move the loaded model, and the
    # loaded model's in-place optimizer steps must not write back into the caller's arrays.
    torch.manual_seed(0)
    ref = torch_lenet().eval()
    model = ck_lenet()
    model.load_state_dict(ref.state_dict())
    x = images()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
        for t in ref.state_dict().values():
            t.mul_(-3.0).add_(1.0)
    got = model.predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    source = {k: v.copy() for k, v in ck_lenet().state_dict().items()}
    kept = {k: v.copy() for k, v in source.items()}
    model.load_state_dict(source)
    for layer in model.layers:
        for p in layer.params.values():
            if p is not None:
                p *= 2.0
    for k in source:
        np.testing.assert_array_equal(source[k], kept[k], err_msg=k)


def test_cnnkit_state_dict_loads_into_torch():
    model = ck_lenet(rng=3)
    ref = torch_lenet().eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = images()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = model.predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def train_torch(ref, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ref.train()
    with torch.no_grad():
        for _ in range(steps):
            ref(torch.randn(8, 3, 6, 6, generator=gen))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_statistics_round_trip_with_torch(momentum):
    torch.manual_seed(1)
    ref = torch_bn_net(momentum)
    train_torch(ref, 3)
    model = ck_bn_net(momentum)
    model.load_state_dict(ref.state_dict())
    bn = model.layers[1]
    assert int(bn.buffers["num_batches_tracked"]) == 3
    assert bn.buffers["num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(bn.buffers["running_mean"],
                                  ref.state_dict()["1.running_mean"].numpy())
    x = images(4, (3, 6, 6))
    ref.eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)
    # one more training batch on both: with momentum=None the update weights by
    # num_batches_tracked, so this also checks that the count was kept
    batch = images(8, (3, 6, 6))
    model.forward(batch, training=True)
    ref.train()
    with torch.no_grad():
        ref(torch.from_numpy(batch))
    back = torch_bn_net(momentum)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    for key in ("1.running_mean", "1.running_var"):
        np.testing.assert_allclose(back.state_dict()[key].numpy(), ref.state_dict()[key].numpy(),
                                   rtol=1e-5, atol=1e-7)
    assert int(back.state_dict()["1.num_batches_tracked"]) == 4


def test_parameters_requiring_grad_and_other_dtypes():
    model = ck_lenet()
    ref = torch_lenet()
    params = dict(ref.named_parameters())  # nn.Parameter: requires grad
    with pytest.raises(TypeError, match=r"'0\.weight'.*detached"):
        model.load_state_dict(params, strict=False)
    # float64 tensors are cast to the model's float32; a float64 model keeps float64
    doubles = {k: v.double() for k, v in ref.state_dict().items()}
    model.load_state_dict(doubles)
    assert model.layers[0].params["weight"].dtype == np.float32
    m64 = ck_lenet(dtype=np.float64)
    m64.load_state_dict(doubles)
    assert m64.layers[0].params["weight"].dtype == np.float64
    np.testing.assert_array_equal(m64.layers[0].params["weight"],
                                  doubles["0.weight"].numpy())
    with pytest.raises(TypeError, match=r"'0\.weight'"):
        model.load_state_dict({**ref.state_dict(), "0.weight": ref.state_dict()["0.weight"]
                               .to(torch.bfloat16)})


def test_array_protocols_without_importing_torch():
    # in a fresh process without third-party plugins: loading tensors never imports torch
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import cnnkit as ck
        from cnnkit import layers as L

        class OnlyArray:  # speaks __array__ only, as some libraries do
            def __init__(self, a):
                self.a = a

            def __array__(self, dtype=None, copy=None):
                return self.a if dtype is None else self.a.astype(dtype)

        class OnlyDLPack:
            def __init__(self, a):
                self.a = a

            def __dlpack__(self, **kw):
                return self.a.__dlpack__(**kw)

            def __dlpack_device__(self):
                return self.a.__dlpack_device__()

        m = ck.Sequential([L.Dense(3, 2), L.ReLU(), L.Dense(2, 1)], input_shape=(3,))
        w = np.arange(6.0).reshape(2, 3)
        m.load_state_dict({"0.weight": OnlyArray(w), "0.bias": OnlyDLPack(np.ones(2)),
                           "2.weight": np.float32([[1, 2]]), "2.bias": np.float64([3])})
        assert np.array_equal(m.layers[0].params["weight"], w.astype(np.float32))
        assert m.layers[0].params["bias"].dtype == np.float32
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    res = run_python("-c", script)  # without third-party plugins (one of them uses torch)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ------------------------------------------------------------------------------------ strictness
def test_strict_false_reports_missing_and_unexpected_keys():
    model = ck_lenet(rng=1)
    before = model.state_dict()
    state = {k: v + 1 for k, v in ck_lenet(rng=2).state_dict().items()}
    del state["11.bias"]
    state["12.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing keys \['11\.bias'\].*unexpected keys "
                                         r"\['12\.weight'\]"):
        model.load_state_dict(state)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["11.bias"] and result.unexpected_keys == ["12.weight"]
    after = model.state_dict()
    np.testing.assert_array_equal(after["11.bias"], before["11.bias"])  # not given: unchanged
    np.testing.assert_array_equal(after["0.weight"], state["0.weight"])


def test_shape_mismatch_names_the_key_and_both_shapes_and_changes_nothing():
    model = ck_lenet(rng=1)
    before = model.state_dict()
    state = dict(ck_lenet(rng=2).state_dict())
    state["7.weight"] = np.zeros((120, 399), np.float32)
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"'7\.weight'.*\(120, 399\).*\(120, 400\)"):
            model.load_state_dict(state, strict=strict)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_non_finite_values_are_refused(bad):
    model = ck_lenet()
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    state["3.bias"][2] = bad
    with pytest.raises(ValueError, match=r"'3\.bias'.*non-finite"):
        model.load_state_dict(state)


def test_inputs_are_validated():
    model = ck_lenet()
    state = model.state_dict()
    with pytest.raises(TypeError, match="dict"):
        model.load_state_dict([("0.weight", state["0.weight"])])
    with pytest.raises(TypeError, match="keys must be str"):
        model.load_state_dict({0: state["0.weight"]}, strict=False)
    with pytest.raises(TypeError, match="strict"):
        model.load_state_dict(state, strict="yes")
    with pytest.raises(TypeError, match=r"'0\.bias'.*list"):
        model.load_state_dict({**state, "0.bias": [0.0] * 6})
    with pytest.raises(TypeError, match=r"'0\.bias'.*dtype complex"):
        model.load_state_dict({**state, "0.bias": np.zeros(6, complex)})
    bn = ck_bn_net()
    bstate = bn.state_dict()
    with pytest.raises(TypeError, match=r"'1\.num_batches_tracked'.*integers"):
        bn.load_state_dict({**bstate, "1.num_batches_tracked": np.float64(2.0)})
    with pytest.raises(TypeError, match="Model or Sequential"):
        ck.state.state_dict(L.Dense(2, 2))


# ------------------------------------------------------------------------------------ files
def test_weight_files_use_structural_names(tmp_path):
    model = ck_lenet(rng=4)
    model.save_weights(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert [k for k in z.files if not k.startswith("__")] == list(model.state_dict())
    model.save_weights(tmp_path / "w.safetensors")
    from safetensors.numpy import load_file

    assert sorted(load_file(tmp_path / "w.safetensors")) == sorted(model.state_dict())
    for name in ("w.npz", "w.safetensors"):
        fresh = ck_lenet()
        fresh.load_weights(tmp_path / name)
        x = images()
        np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


README_SCENARIO = """
import sys
import numpy as np
import cnnkit as ck
from cnnkit import layers as L

def build():
    return ck.Sequential([
        L.Conv2D(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(6, 16, 5), L.ReLU(), L.MaxPool2D(2),
        L.Flatten(), L.Dense(400, 120), L.ReLU(), L.Dense(120, 84), L.ReLU(), L.Dense(84, 10),
    ], input_shape=(1, 28, 28))

def build_graph():
    x = ck.Input((1, 8, 8))
    h = L.ReLU()(L.Conv2D(1, 4, 3, padding=1)(x))
    r = L.BatchNorm2D(4)(L.Conv2D(4, 4, 3, padding=1)(h))
    return ck.Model(x, L.Dense(256, 3)(L.Flatten()(L.Add()([h, r]))))

folder, step = sys.argv[1], sys.argv[2]
x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
xg = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
if step == "save":
    ck.seed(0)
    conv = L.Conv2D(1, 6, kernel_size=5, padding="same")   # the tour's standalone layer first
    conv.forward(x)
    model, graph = build(), build_graph()
    graph.forward(xg, training=True)                         # non-default running statistics
    model.save_weights(folder + "/lenet.npz")
    model.save_weights(folder + "/lenet.safetensors")
    graph.save_weights(folder + "/graph.npz")
    np.save(folder + "/expected.npy", model.predict(x))
    np.save(folder + "/expected_graph.npy", graph.predict(xg))
else:
    ck.seed(1)
    for name in ("lenet.npz", "lenet.safetensors"):
        model = build()
        model.load_weights(folder + "/" + name)
        assert np.array_equal(model.predict(x), np.load(folder + "/expected.npy")), name
    graph = build_graph()
    graph.load_weights(folder + "/graph.npz")
    assert np.array_equal(graph.predict(xg), np.load(folder + "/expected_graph.npy"))
    print("ok")
"""


def test_readme_scenario_weights_load_in_a_fresh_process(tmp_path):
    script = tmp_path / "scenario.py"
    script.write_text(README_SCENARIO)
    for step in ("save", "load"):
        res = run_python(str(script), str(tmp_path), step)
        assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def write_01_file(path, model):
    """A weight file as cnnkit 0.1 wrote it: tensors under the saving process's layer names,
    the layers listed in the metadata."""
    arrays = {}
    for layer in model.layers:
        for key, p in layer.params.items():
            if p is not None:
                arrays[f"{layer.name}.{key}"] = p
        for key, b in getattr(layer, "buffers", {}).items():
            arrays[f"{layer.name}.{key}"] = np.asarray(b)
    meta = {"cnnkit_version": "0.1.0", "model": model.name,
            "layers": [[layer.name, type(layer).__name__] for layer in model.layers]}
    ck.io.save_weights(path, arrays, meta)


def test_files_from_0_1_load_by_position_with_a_warning(tmp_path):
    model = ck_bn_net()
    model.forward(images(8, (3, 6, 6)), training=True)
    path = tmp_path / "old.npz"
    write_01_file(path, model)
    fresh = ck_bn_net()
    with pytest.warns(LegacyNamesWarning, match=r"old\.npz.*0\.1.*conv2d_\d+\.weight"):
        fresh.load_weights(path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)
    # a structural file never goes through the by-position matching
    model.save_weights(tmp_path / "new.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck_bn_net().load_weights(tmp_path / "new.npz")
    # an 0.1 file of another architecture is refused, naming the file
    other = ck.Sequential([L.Conv2D(3, 4, 3, padding=1), L.ReLU(), L.Flatten(),
                           L.Dense(4 * 6 * 6, 5)], input_shape=(3, 6, 6))
    with pytest.raises(ValueError, match=r"old\.npz.*missing keys"):
        other.load_weights(path)
