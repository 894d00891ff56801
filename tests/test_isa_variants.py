"""The instruction-set builds of the kernels (``cython-avx2``, ``cython-avx512``): the running
CPU's features, agreement with the portable ``cython`` variant, refusal and fallback on a CPU
without the features (pretended with ``CNNKIT_CPU_FEATURES_DISABLE``), and an installation
whose instruction-set modules were not built."""
import dataclasses
import os
import pickle
import re
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _cpu
from cnnkit._ext import ISA_FEATURES, MODULES, cpuinfo
from cnnkit.cli import main as cli_main
from cnnkit.plugins import PluginError, Registry, SelectionError
from cnnkit.testing import builtin_cases
from cnnkit.testing._cases import distinct_inputs

ROOT = Path(__file__).resolve().parents[1]

_BUILTINS = Registry()
_BUILTINS.load(entry_points=False)

#: (layer type, variant name, isa) of every built-in instruction-set variant
ISA_VARIANTS = sorted((lt, name, name.rpartition("-")[2])
                      for lt, by_name in _BUILTINS.variants.items()
                      for name in by_name if name.rpartition("-")[2] in ISA_FEATURES)


def _portable(name):
    """The portable build an instruction-set variant mirrors: "cython" for "cython-avx2"."""
    return name.rpartition("-")[0]

#: float32 / float64 agreement with the portable build, relative to the output's magnitude:
#: fused multiply-add changes rounding, so the builds are close, not bitwise equal
AGREE = {"float32": 1e-5, "float64": 1e-12}


def _setup_constants():
    names = runpy.run_path(str(ROOT / "setup.py"), run_name="cnnkit_setup")
    return names["ISA_MODULES"], names["ISA_FLAGS"]


def _needs(isa):
    """Skip (with the reason) when this CPU cannot run the ``isa`` build."""
    missing = _cpu.missing_cpu_features(ISA_FEATURES[isa])
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}, needed by the {isa} build")


# ------------------------------------------------------------------------------ build and CPU
def test_build_flags_and_runtime_features_name_the_same_instruction_sets():
    modules, flags = _setup_constants()
    assert set(modules) <= set(MODULES)
    assert set(flags) == set(ISA_FEATURES)
    for isa, isa_flags in flags.items():
        assert "-ffast-math" not in isa_flags and "-march=native" not in isa_flags
        assert {f[2:] for f in isa_flags} == set(ISA_FEATURES[isa]), isa


def test_every_isa_module_has_variants_for_each_instruction_set():
    modules, _ = _setup_constants()
    families = {"conv": {"conv2d", "convtranspose2d"},
                "norm": {"batchnorm1d", "batchnorm2d"},
                "pool": {"maxpool2d", "avgpool2d", "globalavgpool2d", "subsampling"},
                "activation": {"relu", "leakyrelu", "sigmoid", "tanh", "elu", "gelu",
                               "scaledtanh", "softmax", "logsoftmax"},
                "winograd": set()}  # its builds are winograd-<isa>, below
    assert set(families) == set(modules)
    want = {(lt, f"cython-{isa}", isa) for isa in ISA_FEATURES
            for types in families.values() for lt in types}
    want |= {("conv2d", f"direct-{isa}", isa) for isa in ISA_FEATURES}
    want |= {("conv2d", f"winograd-{isa}", isa) for isa in ISA_FEATURES}
    assert set(ISA_VARIANTS) == want


def test_detected_features_agree_with_numpy():
    """The compiler's run-time check against NumPy's own CPU dispatch table."""
    from numpy._core._multiarray_umath import __cpu_features__ as numpy_features

    found = cpuinfo.supported()
    if found is None:
        pytest.skip("this build has no __builtin_cpu_supports (not x86 or not GCC/clang)")
    numpy_names = {"fma": "FMA3"}
    for name in _cpu.KNOWN_FEATURES:
        assert found[name] == bool(numpy_features[numpy_names.get(name, name.upper())]), name
    assert _cpu.detected_cpu_features() == {n for n, ok in found.items() if ok}


def test_disable_env_removes_features_and_checks_names(monkeypatch):
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "avx2, FMA")
    assert not _cpu.cpu_features() & {"avx2", "fma"}
    assert _cpu.missing_cpu_features(("fma", "avx2")) == ["fma", "avx2"]
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "all")
    assert _cpu.cpu_features() == frozenset()
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "avx512")
    with pytest.raises(ValueError, match="CNNKIT_CPU_FEATURES_DISABLE.*avx512"):
        _cpu.cpu_features()


# ------------------------------------------------------------------------------ registration
@pytest.mark.parametrize(("layer_type", "name", "isa"), ISA_VARIANTS,
                         ids=[f"{lt}/{n}" for lt, n, _ in ISA_VARIANTS])
def test_isa_variants_declare_their_build_and_mirror_cython(layer_type, name, isa):
    v = _BUILTINS.variants[layer_type][name]
    portable = _BUILTINS.variants[layer_type][_portable(name)]
    assert v.cpu_features == ISA_FEATURES[isa]
    assert v.describe()["cpu_features"] == list(ISA_FEATURES[isa])
    assert (v.dtypes, v.capabilities) == (portable.dtypes, portable.capabilities)
    assert isinstance(v.impl, portable.impl)  # the same wrapper code
    assert v.impl._kernels is not portable.impl._kernels


def test_a_layer_on_an_isa_variant_pickles():
    _needs("avx2")
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    conv = ck.layers.Conv2D(3, 4, 3, impl="cython-avx2")
    y = conv.forward(x, training=True)
    again = pickle.loads(pickle.dumps(conv))
    assert again._variant.impl is conv._variant.impl
    np.testing.assert_array_equal(again.forward(x), y)


def test_register_validates_cpu_features():
    from cnnkit.builtin.activation import ReluCython
    from cnnkit.plugins import _make_variant

    v = _make_variant("p", "relu", "mine", ReluCython, cpu_features=("AVX2", "fma", "avx2"))
    assert v.cpu_features == ("avx2", "fma")
    assert _make_variant("p", "relu", "mine", ReluCython, cpu_features="fma").cpu_features \
        == ("fma",)
    with pytest.raises(PluginError, match=r"plugin 'p'.*relu/mine.*unknown CPU feature.*'avx3'"):
        _make_variant("p", "relu", "mine", ReluCython, cpu_features=("avx3",))
    with pytest.raises(PluginError, match="cpu_features must be feature names"):
        _make_variant("p", "relu", "mine", ReluCython, cpu_features=(2,))


def test_any_plugin_variant_may_declare_cpu_features(monkeypatch):
    """The registry's own check, for a variant with no ``unavailable()`` of its own."""
    from cnnkit.builtin.activation import ReluNumpy
    from cnnkit.plugins import hookimpl

    class Plugin:
        @hookimpl
        def cnnkit_register_variants(self, register):
            register("relu", "fast", ReluNumpy, priority=500, cpu_features=("avx2", "fma"))

    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(Plugin(), "isa-demo", strict=True)
    v = reg.variants["relu"]["fast"]
    assert v.describe()["cpu_features"] == ["avx2", "fma"]
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "fma")
    assert v.refusal(np.float32, (), {}) == "needs CPU features avx2, fma (this CPU lacks fma)"
    assert reg.select("relu", dtype=np.float32).name == "cython"
    with pytest.raises(SelectionError, match=r"plugin 'isa-demo'\) cannot serve this request: "
                                             r"needs CPU features avx2, fma \(this CPU lacks "
                                             r"fma\)"):
        reg.select("relu", dtype=np.float32, impl="fast")
    monkeypatch.delenv("CNNKIT_CPU_FEATURES_DISABLE")
    if not _cpu.missing_cpu_features(("avx2", "fma")):
        assert reg.select("relu", dtype=np.float32).name == "fast"


# ------------------------------------------------------------------------------ agreement
def _case_data(layer_type, case, dtype, rng):
    cls = _BUILTINS.layer_class(layer_type)
    kwargs = dict(case.kwargs)
    layer = cls(**kwargs)
    res = layer.resolution(tuple(case.input_shape))
    make_input = case.make_input or distinct_inputs
    x = np.ascontiguousarray(make_input(rng, tuple(case.input_shape)), dtype=dtype)
    params = {k: (None if p is None else rng.uniform(-1, 1, p.shape).astype(dtype))
              for k, p in layer.params.items()}
    dy = rng.standard_normal((case.input_shape[0],) + tuple(res.output_shape)).astype(dtype)
    return x, params, dy, dict(res.config), tuple(res.features)


def _run(layer_type, name, dtype, x, params, dy, config, features):
    v = _BUILTINS.select(layer_type, dtype=dtype, features=features, config=config, impl=name)
    assert v.name == name
    y, ctx = v.impl.forward(x, params, dict(config), True)
    dx, grads = v.impl.backward(dy, ctx)
    return {"y": y, "dx": dx, **{f"d{k}": g for k, g in grads.items()}}


@pytest.mark.parametrize(("layer_type", "name", "isa"), ISA_VARIANTS,
                         ids=[f"{lt}/{n}" for lt, n, _ in ISA_VARIANTS])
def test_isa_variant_agrees_with_the_portable_build(layer_type, name, isa):
    _needs(isa)
    rng = np.random.default_rng(7)
    checked = 0
    registry = ck.get_registry()
    served = registry.variants[layer_type]["cython"].capabilities
    for case in builtin_cases(layer_type):
        # cases of features only the NumPy reference serves (pool padding per side, dilation)
        layer = registry.layer_class(layer_type)(**case.kwargs)
        if not set(layer.resolution(case.input_shape).features) <= served:
            continue
        for dtype in ("float32", "float64"):
            data = _case_data(layer_type, case, dtype, rng)
            x, params, dy, config, features = data
            refusal = _BUILTINS.variants[layer_type][_portable(name)].refusal(
                dtype, features, config)
            if refusal:  # a case outside the variant's domain (direct: stride 1 only)
                continue
            want = _run(layer_type, _portable(name), dtype, *data)
            got = _run(layer_type, name, dtype, *data)
            assert set(got) == set(want)
            for key, ref in want.items():
                out = got[key]
                assert out.shape == ref.shape and out.dtype == ref.dtype == np.dtype(dtype)
                # NaN where the portable build gives NaN (the NaN cases of the pool kit)
                np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
                finite = np.isfinite(ref)
                np.testing.assert_array_equal(out[~finite & ~np.isnan(ref)],
                                              ref[~finite & ~np.isnan(ref)])
                scale = float(np.max(np.abs(ref[finite]), initial=0.0))
                err = float(np.max(np.abs(out[finite].astype(np.float64) - ref[finite]),
                                   initial=0.0))
                assert err <= AGREE[dtype] * scale, (case.label(layer_type), dtype, key, err,
                                                     scale)
                checked += 1
    assert checked >= 8


# ------------------------------------------------------------------------------ a CPU without
def _registry_preferring(layer_type, name):
    """The built-ins with ``name`` above every other variant of ``layer_type``."""
    reg = Registry()
    reg.load(entry_points=False)
    v = reg.variants[layer_type][name]
    reg.variants[layer_type][name] = dataclasses.replace(v, priority=10_000)
    return reg


def test_cpu_without_the_features_refuses_and_falls_back(monkeypatch):
    _needs("avx2")
    reg = _registry_preferring("conv2d", "cython-avx2")
    request = dict(dtype=np.float32, features=("bias",),
                   config={"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1),
                           "groups": 1})
    assert reg.select("conv2d", **request).name == "cython-avx2"
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "avx2")
    winner, _, reasons = reg.explain("conv2d", **request)
    assert winner.name == "cython"
    assert reasons["cython-avx2"] == "needs CPU features avx2, fma (this CPU lacks avx2)"
    assert re.search(r"this CPU lacks (.*, )?avx2\)$", reasons["cython-avx512"])
    with pytest.raises(SelectionError, match=r"'cython-avx2' of conv2d .*needs CPU features "
                                             r"avx2, fma \(this CPU lacks avx2\)"):
        reg.select("conv2d", impl="cython-avx2", **request)


def test_explicit_choice_through_a_layer_names_the_missing_features(monkeypatch):
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "fma")
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(SelectionError, match=r"needs CPU features avx2, fma \(this CPU lacks "
                                             r"fma\)"):
        ck.layers.ReLU(impl="cython-avx2").forward(x)
    assert ck.layers.ReLU().forward(x).shape == x.shape  # automatic selection still works


def test_kernels_explain_says_why_an_isa_variant_was_skipped(monkeypatch, capsys):
    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "avx2")
    assert cli_main(["kernels", "maxpool2d", "--explain", "--shape", "2,3,8,8",
                     "--args", "kernel_size=2"]) == 0
    out = capsys.readouterr().out
    # an entry continues on the indented lines under it (the output folds at 100 columns)
    entries = re.split(r"\n(?=\S|  \S)", out)
    entry = " ".join(next(e for e in entries if e.strip().startswith("cython-avx2 ")).split())
    assert "needs CPU features avx2, fma (this CPU lacks avx2)" in entry
    assert "chosen:   cython " in out


def test_avx512_build_is_refused_and_never_imported_on_this_cpu():
    missing = _cpu.missing_cpu_features(ISA_FEATURES["avx512"])
    if not missing:
        pytest.skip("this CPU has AVX-512: the refusal path cannot be observed here")
    v = _BUILTINS.variants["conv2d"]["cython-avx512"]
    assert v.unavailable() == (f"needs CPU features {', '.join(ISA_FEATURES['avx512'])} "
                               f"(this CPU lacks {', '.join(missing)})")
    with pytest.raises(SelectionError, match="this CPU lacks avx512f"):
        ck.layers.MaxPool2D(2, impl="cython-avx512").forward(np.ones((1, 1, 4, 4)))
    # calling the class directly is refused before the module is touched: its code may use
    # AVX-512 instructions anywhere, its import included
    with pytest.raises(RuntimeError, match="conv_avx512 cannot run here.*lacks avx512f"):
        v.impl.forward(np.ones((1, 1, 3, 3)), {"weight": np.ones((1, 1, 1, 1)), "bias": None},
                       {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1),
                        "groups": 1}, False)
    assert not any(m.endswith("_avx512") for m in sys.modules)


# ------------------------------------------------------------------------------ not built
def test_installation_without_isa_modules_imports_and_uses_cython(tmp_path):
    """What ``CNNKIT_NO_ISA=1`` (or a non-x86 machine) installs: the portable modules only."""
    isa_suffixes = tuple(f"_{isa}" for isa in ISA_FEATURES)

    def ignore(folder, names):
        return [n for n in names if n.endswith((".c", ".html")) or n == "__pycache__"
                or n.split(".")[0].endswith(isa_suffixes)]

    shutil.copytree(ROOT / "cnnkit", tmp_path / "cnnkit", ignore=ignore)
    assert not list((tmp_path / "cnnkit" / "_ext").glob("*_avx2*"))
    script = textwrap.dedent("""
        import numpy as np
        import cnnkit as ck
        from cnnkit.cli import main
        from cnnkit.plugins import SelectionError
        reg = ck.get_registry()
        v = reg.variants["conv2d"]["cython-avx2"]
        print("REASON", v.unavailable())
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        conv = ck.layers.Conv2D(3, 4, 3)
        conv.forward(x)
        print("AUTO", conv._variant.name, ck.layers.ReLU().forward(x).shape)
        try:
            ck.layers.ReLU(impl="cython-avx2").forward(x)
        except SelectionError as exc:
            print("EXPLICIT", exc)
        main(["kernels", "relu", "--explain", "--shape", "2,3,8,8"])
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CNNKIT_LOAD_PLUGINS="")
    env.pop("CNNKIT_CPU_FEATURES_DISABLE", None)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert str(tmp_path / "cnnkit") in subprocess.run(
        [sys.executable, "-c", "import cnnkit; print(cnnkit.__file__)"], capture_output=True,
        text=True, cwd=tmp_path, env=env).stdout
    if _cpu.missing_cpu_features(ISA_FEATURES["avx2"]):
        assert "REASON needs CPU features avx2, fma" in out
    else:
        assert "REASON not built: cnnkit._ext.conv_avx2 is not installed" in out
        assert "EXPLICIT" in out and "not built: cnnkit._ext.activation_avx2" in out
        line = next(ln for ln in out.splitlines() if ln.strip().startswith("cython-avx2 "))
        assert "not built" in line
    assert "AUTO cython (2, 3, 8, 8)" in out


def test_conformance_kit_reports_an_unavailable_variant_as_not_run(monkeypatch):
    from cnnkit.testing import assert_conforms, check_variant

    monkeypatch.setenv("CNNKIT_CPU_FEATURES_DISABLE", "avx2")
    report = check_variant("relu", "cython-avx2", registry=_BUILTINS)
    assert report.ok and report.checks_run == 0
    assert report.unavailable == "needs CPU features avx2, fma (this CPU lacks avx2)"
    assert "not run: needs CPU features" in str(report)
    import unittest

    with pytest.raises(unittest.SkipTest, match="this CPU lacks avx2"):
        assert_conforms("relu", "cython-avx2", registry=_BUILTINS)
