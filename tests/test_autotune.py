"""Autotuning: the cache is written and then used, explicit choices win over it, a corrupt or
stale cache is ignored with a warning and rewritten, its key follows the versions, the CPU and
the thread count, third-party variants take part, CNNKIT_AUTOTUNE=1 tunes on first call and
`cnnkit tune` tunes a model config.

Timings are never asserted: where a winner matters, the timer is replaced by one that runs
every variant once (so failures are real) and declares a chosen variant the fastest."""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import autotuning
from cnnkit.autotuning import AutotuneWarning
from cnnkit.cli import main
from cnnkit.plugins import Registry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHAPE = (4, 3, 8, 8)


def fake_timer(monkeypatch, winner, calls=None):
    """Make ``winner`` the fastest variant of every tuning; record the names timed."""
    def timed(fns, rounds):
        if calls is not None:
            calls.append(sorted(fns))
        times, errors = {}, {}
        for name, fn in fns.items():
            try:
                fn()  # every candidate really runs: a failing one must still be skipped
            except Exception as exc:
                errors[name] = exc
            else:
                times[name] = 0.001 if name == winner else 0.005
        return times, errors
    monkeypatch.setattr(autotuning, "_time_variants", timed)


def conv(**kw):
    # stride 2: outside the direct variants' domain, so the priority pick is "cython" on any CPU
    return ck.layers.Conv2D(3, 4, 3, padding=1, stride=2, rng=0, **kw)


def cache_files():
    folder = Path(os.environ["CNNKIT_CACHE_DIR"])
    return sorted(folder.glob("autotune-*.json")) if folder.exists() else []


def how(layer, shape=SHAPE, dtype=np.float32, impl=None, registry=None):
    reg = registry or ck.get_registry()
    res = layer.resolution(shape)
    return reg.explain(layer.layer_type, dtype=dtype, features=res.features, config=res.config,
                       impl=impl, shape=shape)


# ------------------------------------------------------------------------------ written, used
def test_the_cache_is_written_then_used(monkeypatch):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    before = conv()
    assert before.variant(np.float32, SHAPE).name == "cython"  # priority, nothing tuned
    assert cache_files() == []
    fake_timer(monkeypatch, "numpy")
    results = ck.autotune(conv(), SHAPE)
    assert [(r.layer_type, r.variant, r.cached) for r in results] == [("conv2d", "numpy", False)]
    assert {"numpy", "cython"} <= set(results[0].times_ms)
    [path] = cache_files()
    assert results[0].path == str(path)
    doc = json.loads(path.read_text())
    [entry] = doc["entries"]
    assert entry["variant"] == "numpy" and entry["input_shape"] == list(SHAPE)
    assert entry["layer_type"] == "conv2d" and entry["dtype"] == "float32"
    assert entry["threads"] == ck.get_num_threads()
    # a layer that had already selected its variant, and a new one, both follow the cache
    before.forward(x)
    assert before._ctx[0].name == "numpy"
    fresh = conv()
    fresh.forward(x)
    assert fresh._ctx[0].name == "numpy"
    winner, text, reasons = how(fresh)
    assert winner.name == "numpy"
    assert text.startswith("autotuned: fastest of ") and str(path) in text
    assert reasons["cython"].startswith("slower in autotuning")
    # another configuration or dtype was not tuned: priority as before
    assert ck.layers.Conv2D(3, 4, 3, stride=2, rng=0).variant(np.float32, SHAPE).name == "cython"
    assert conv().variant(np.float64, SHAPE).name == "cython"
    # tuning again finds the entry and times nothing
    again = ck.autotune(conv(), SHAPE)
    assert again[0].cached and again[0].variant == "numpy"


def test_a_new_process_reads_the_cache(monkeypatch):
    fake_timer(monkeypatch, "numpy")
    ck.autotune(conv(), SHAPE)
    autotuning.clear_memory()  # as a new process would, read it from disk
    assert conv().variant(np.float32, SHAPE).name == "numpy"


def test_other_batch_sizes_use_the_nearest_tuned_one(monkeypatch):
    fake_timer(monkeypatch, "numpy")
    ck.autotune(conv(), (8, 3, 8, 8))
    winner, text, _ = how(conv(), shape=(5, 3, 8, 8))
    assert winner.name == "numpy" and text.endswith("(tuned at batch 8)")


def test_autotune_a_model(monkeypatch):
    calls = []
    fake_timer(monkeypatch, "numpy", calls)
    model = ck.models.lenet5(rng=0)
    results = ck.autotune(model, (2, 1, 28, 28))
    tuned = {r.layer: r for r in results}
    assert "flatten" not in tuned  # computes itself: nothing to choose
    assert tuned["conv2"].input_shape == (2, 6, 14, 14)
    assert tuned["fc1"].input_shape == (2, 400)
    assert all(r.variant == "numpy" for r in results)
    model.forward(np.zeros((2, 1, 28, 28), np.float32))
    assert "cython" not in model.summary().split("Total")[0]
    with pytest.raises(ValueError, match="expects shape"):
        ck.autotune(model, (2, 3, 28, 28))
    with pytest.raises(ValueError, match="batch first"):
        ck.autotune(model, (1, 28, 28.0))
    with pytest.raises(TypeError, match="model or layer"):
        ck.autotune("lenet5", (2, 1, 28, 28))


# ------------------------------------------------------------------------------ precedence
def test_explicit_choices_win_over_the_cache(monkeypatch):
    fake_timer(monkeypatch, "numpy")
    ck.autotune(conv(), SHAPE)
    assert conv().variant(np.float32, SHAPE).name == "numpy"
    assert conv(impl="cython").variant(np.float32, SHAPE).name == "cython"
    assert how(conv(), impl="cython")[1] == "impl= argument"
    layer = conv()
    with ck.use(conv2d="cython"):
        assert layer.variant(np.float32, SHAPE).name == "cython"
        assert how(layer)[1] == "cnnkit.use()"
    assert layer.variant(np.float32, SHAPE).name == "numpy"
    monkeypatch.setenv("CNNKIT_IMPL", "conv2d=cython")
    assert layer.variant(np.float32, SHAPE).name == "cython"
    assert how(layer)[1] == "CNNKIT_IMPL"


def test_autotune_off_ignores_the_cache(monkeypatch):
    fake_timer(monkeypatch, "numpy")
    ck.autotune(conv(), SHAPE)
    layer = conv()
    assert layer.variant(np.float32, SHAPE).name == "numpy"
    monkeypatch.setenv("CNNKIT_AUTOTUNE", "0")  # read when a layer selects its variant
    assert conv().variant(np.float32, SHAPE).name == "cython"
    assert how(conv())[1].startswith("highest priority")
    monkeypatch.setenv("CNNKIT_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="CNNKIT_AUTOTUNE must be 1"):
        conv().variant(np.float32, SHAPE)


# ------------------------------------------------------------------------------ corrupt, stale
def _tuned_file(monkeypatch):
    fake_timer(monkeypatch, "numpy")
    ck.autotune(conv(), SHAPE)
    [path] = cache_files()
    return path


def _truncated(text):
    return text[: len(text) // 2]


def _wrong_schema(text):
    doc = json.loads(text)
    del doc["entries"][0]["variant"]
    return json.dumps(doc)


def _stale(text):
    doc = json.loads(text)
    doc["fingerprint"]["cnnkit"] = "0.0.1"
    return json.dumps(doc)


@pytest.mark.parametrize("damage", [
    lambda text: "\x00\xff garbage \x9c",
    _truncated,
    _wrong_schema,
    lambda text: json.dumps({"entries": "no"}),
    lambda text: json.dumps([1, 2, 3]),
    _stale,
], ids=["garbage", "truncated", "wrong-schema", "not-a-cache", "a-list", "stale"])
def test_a_corrupt_or_stale_cache_is_ignored_with_a_warning_and_rewritten(monkeypatch, damage):
    path = _tuned_file(monkeypatch)
    path.write_bytes(damage(path.read_text()).encode("utf-8", "surrogateescape"))
    autotuning.clear_memory()
    with pytest.warns(AutotuneWarning, match="ignored and rewritten") as caught:
        assert conv().variant(np.float32, SHAPE).name == "cython"
    assert str(path) in str(caught[0].message)
    doc = json.loads(path.read_text())  # rewritten: valid, empty
    assert doc["format"] == "cnnkit-autotune" and doc["entries"] == []
    with warnings.catch_warnings():
        # no second warning about the file: it is usable again
        warnings.filterwarnings("error", message=".*ignored and rewritten")
        results = ck.autotune(conv(), SHAPE)
    assert not results[0].cached
    assert [e["variant"] for e in json.loads(path.read_text())["entries"]] == ["numpy"]
    assert conv().variant(np.float32, SHAPE).name == "numpy"


def test_an_entry_for_a_variant_no_longer_registered_is_ignored(monkeypatch):
    path = _tuned_file(monkeypatch)
    doc = json.loads(path.read_text())
    entry = doc["entries"][0]
    entry["times_ms"]["gone"] = entry["times_ms"].pop("numpy")
    entry["variant"] = "gone"
    path.write_text(json.dumps(doc))
    autotuning.clear_memory()
    winner, text, _ = how(conv())
    assert winner.name == "cython"
    assert "autotuned variant 'gone' is no longer registered" in text


@pytest.mark.parametrize("load, busy", [(50.0, True), (0.0, False)])
def test_autotune_warns_when_the_machine_is_busy(monkeypatch, load, busy):
    fake_timer(monkeypatch, "numpy")
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck.autotune(conv(), SHAPE)
    said = [str(w.message) for w in caught if issubclass(w.category, AutotuneWarning)]
    assert any("the machine is busy (load average 50.00" in m for m in said) == busy, said


# ------------------------------------------------------------------------------ the key
def test_the_cache_key_follows_versions_cpu_and_threads(monkeypatch):
    reg = ck.get_registry()
    base = autotuning.cache_path(reg)
    monkeypatch.setattr(ck, "__version__", "99.0")
    assert autotuning.cache_path(reg) != base
    monkeypatch.undo()
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(Path(base).parent))
    assert autotuning.cache_path(reg) == base
    info = next(i for i in reg.plugins.values() if i.source == "builtin")
    monkeypatch.setattr(info, "version", "0.0.0-other")
    assert autotuning.cache_path(reg) != base
    monkeypatch.setattr(info, "version", None)
    assert autotuning.cache_path(reg) == base
    cpu = dict(autotuning.cpu_description())
    monkeypatch.setattr(autotuning, "cpu_description", lambda: dict(cpu, model="Another CPU"))
    assert autotuning.cache_path(reg) != base
    monkeypatch.setattr(autotuning, "cpu_description", lambda: dict(cpu, flags="0" * 16))
    assert autotuning.cache_path(reg) != base


def test_the_thread_count_is_part_of_the_entry(monkeypatch):
    fake_timer(monkeypatch, "numpy")
    layer = conv()
    with ck.num_threads(1):
        ck.autotune(conv(), SHAPE)
        assert layer.variant(np.float32, SHAPE).name == "numpy"
    with ck.num_threads(2):
        winner, text, _ = how(layer)
        assert winner.name == "cython" and text.startswith("highest priority")
        assert layer.variant(np.float32, SHAPE).name == "cython"
    [path] = cache_files()
    assert [e["threads"] for e in json.loads(path.read_text())["entries"]] == [1]


# ------------------------------------------------------------------------------ third parties
class _Flaky:
    refuse = False


class ReluThirdParty:
    @staticmethod
    def forward(x, params, config, need_backward):
        return np.maximum(x, 0), (x > 0 if need_backward else None)

    @staticmethod
    def backward(dy, mask):
        return np.where(mask, dy, 0).astype(dy.dtype), {}


class ReluBroken:
    @staticmethod
    def forward(x, params, config, need_backward):
        raise RuntimeError("no kernel for this CPU")

    @staticmethod
    def backward(dy, ctx):
        raise RuntimeError("unreachable")


class ThirdParty:
    @staticmethod
    @ck.hookimpl
    def cnnkit_register_variants(register):
        register("relu", "third", ReluThirdParty, priority=-5,
                 supports=lambda config, dtype: "switched off" if _Flaky.refuse else None)
        register("relu", "broken", ReluBroken, priority=-6)
        register("relu", "only64", ReluThirdParty, priority=-7, dtypes=("float64",))


@pytest.fixture
def third_party_registry(monkeypatch):
    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(ThirdParty, "third_party")
    monkeypatch.setattr(_Flaky, "refuse", False)
    return reg


def test_a_third_party_variant_takes_part(monkeypatch, third_party_registry):
    reg = third_party_registry
    calls = []
    fake_timer(monkeypatch, "third", calls)
    layer = ck.layers.ReLU()
    layer.registry = reg
    [result] = ck.autotune(layer, (4, 16))
    assert result.variant == "third"
    assert "broken" in result.skipped and "no kernel for this CPU" in result.skipped["broken"]
    assert "float64" in result.skipped["only64"]  # refused: not timed
    # every variant this CPU can run is timed (instruction-set builds of cython included)
    assert [[n for n in c if not n.startswith("cython-")] for c in calls] == [
        ["broken", "cython", "numpy", "third"]]
    assert layer.variant(np.float32, (4, 16)).name == "third"
    assert reg.plugins["third_party"].registered["variant"]
    # the process registry (without the plugin) has its own cache file
    assert autotuning.cache_path(reg) != autotuning.cache_path(ck.get_registry())
    # a cached variant that now refuses the request is ignored
    _Flaky.refuse = True
    winner, text, _ = how(layer, shape=(4, 16), registry=reg)
    assert winner.name == "cython"
    assert "autotuned variant 'third' ignored: switched off" in text


def test_real_timing_times_every_candidate(third_party_registry):
    layer = ck.layers.ReLU()
    layer.registry = third_party_registry
    [result] = ck.autotune(layer, (4, 16), rounds=2)
    assert {n for n in result.times_ms if not n.startswith("cython-")} == {"cython", "numpy",
                                                                              "third"}
    assert all(t > 0 for t in result.times_ms.values())
    assert result.variant == min(result.times_ms, key=result.times_ms.get)


def test_variants_restricted_from_automatic_selection_are_not_timed(monkeypatch):
    calls = []
    fake_timer(monkeypatch, "numpy", calls)
    reg = Registry()
    reg.load(entry_points=False)
    # a variant that serves float32 only when chosen explicitly (auto_dtypes)
    object.__setattr__(reg.variants["relu"]["numpy"], "auto_dtypes", ("float64",))
    layer = ck.layers.ReLU()
    layer.registry = reg
    [result] = ck.autotune(layer, (4, 16))
    assert [[n for n in c if not n.startswith("cython-")] for c in calls] == [["cython"]]
    assert result.variant.startswith("cython")
    assert "not picked automatically for float32" in result.skipped["numpy"]


# ------------------------------------------------------------------------------ lazy tuning
def test_autotune_env_tunes_on_the_first_call_of_each_shape(monkeypatch):
    calls = []
    fake_timer(monkeypatch, "numpy", calls)
    monkeypatch.setenv("CNNKIT_AUTOTUNE", "1")
    layer = conv()
    x = np.ones(SHAPE, np.float32)
    layer.forward(x)
    assert len(calls) == 1 and {"cython", "numpy"} <= set(calls[0])
    assert layer._ctx[0].name == "numpy"
    layer.forward(x)
    conv().forward(x)  # the same request in another layer: already tuned
    assert len(calls) == 1
    layer.forward(np.ones((4, 3, 6, 6), np.float32))  # a new shape
    assert len(calls) == 2
    assert len(json.loads(cache_files()[0].read_text())["entries"]) == 2
    # an explicit choice is never tuned for
    conv(impl="cython").forward(np.ones((4, 3, 5, 5), np.float32))
    assert len(calls) == 2


def test_without_the_env_nothing_is_tuned_on_call(monkeypatch):
    calls = []
    fake_timer(monkeypatch, "numpy", calls)
    conv().forward(np.ones(SHAPE, np.float32))
    assert calls == [] and cache_files() == []


# ------------------------------------------------------------------------------ the commands
def test_cnnkit_tune_writes_the_cache_and_kernels_explain_says_so(capsys):
    config = EXAMPLES / "lenet5-modern.toml"
    status = main(["tune", str(config), "--batch-size", "2", "--rounds", "1"])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    [path] = cache_files()
    assert f"cache: {path}" in out
    entries = json.loads(path.read_text())["entries"]
    assert {e["layer_type"] for e in entries} == {"conv2d", "relu", "maxpool2d", "dense"}
    assert all(e["input_shape"][0] == 2 for e in entries)
    conv1 = next(e for e in entries if e["layer_type"] == "conv2d"
                 and e["input_shape"] == [2, 1, 28, 28])
    status = main(["kernels", "conv2d", "--explain", "--shape", "2,1,28,28",
                   "--args", "out_channels=6,kernel_size=5,padding=2"])
    out, _ = capsys.readouterr()
    assert status == 0
    assert f"chosen:   {conv1['variant']} " in out
    assert "autotuned: fastest of" in out and str(path) in out
    # a second run finds everything cached
    status = main(["tune", str(config), "--batch-size", "2", "--json"])
    doc = json.loads(capsys.readouterr()[0])
    assert status == 0 and all(layer["cached"] for layer in doc["layers"])


def test_cnnkit_tune_errors(capsys, tmp_path):
    status = main(["tune", str(tmp_path / "missing.toml")])
    assert status == 1 and "missing.toml" in capsys.readouterr()[1]
