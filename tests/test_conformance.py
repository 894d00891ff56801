"""The conformance kit (cnnkit.testing) and its pytest plugin (cnnkit.pytest_plugin).

Deliberately wrong variants (tests/plugin_pkgs/cnnkit_bad_variants.py) must fail with a report
that names the case and the output; the built-in variants and the demo plugin must pass.
"""
import importlib
import importlib.metadata
import sys

import pytest

from conftest import PLUGIN_DIR, write_dist_infos

import cnnkit
from cnnkit._ext import ISA_FEATURES
from cnnkit.plugins import Registry, reset_registry
from cnnkit.testing import (Case, Failure, Report, assert_conforms, builtin_cases,
                            check_variant, plugin_variants)

pytest_plugins = ["pytester"]

_BUILTINS = Registry()
_BUILTINS.load(entry_points=False)
BUILTIN_VARIANTS = sorted((lt, name) for lt, by_name in _BUILTINS.variants.items()
                          for name in by_name)


@pytest.fixture(scope="module")
def registry():
    """Built-ins plus the bad variants and the demo plugin, registered at run time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGIN_DIR))
        bad = importlib.import_module("cnnkit_bad_variants")
        demo = importlib.import_module("cnnkit_demo_plugin")
    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(bad, "bad", strict=False)
    assert reg.register_plugin(demo, "demo", strict=False)
    return reg


def test_builtin_variants_cover_every_builtin_layer_type():
    assert {lt for lt, _ in BUILTIN_VARIANTS} == {
        "conv2d", "maxpool2d", "avgpool2d", "relu", "sigmoid", "tanh", "dense",
        "leakyrelu", "elu", "gelu", "scaledtanh", "softmax", "logsoftmax", "dropout",
        "batchnorm1d", "batchnorm2d", "globalavgpool2d", "subsampling", "zeropad2d",
        "convtranspose2d", "globalmaxpool2d", "clip", "relu6", "pad2d", "upsample2d",
        "rbfoutput"}
    assert ("conv2d", "cython") in BUILTIN_VARIANTS and ("conv2d", "numpy") in BUILTIN_VARIANTS


@pytest.mark.parametrize(("layer_type", "variant"), BUILTIN_VARIANTS,
                         ids=[f"{lt}/{v}" for lt, v in BUILTIN_VARIANTS])
def test_builtin_variants_conform(layer_type, variant):
    report = check_variant(layer_type, variant, registry=_BUILTINS)
    assert report.ok, str(report)
    if report.unavailable is not None:  # an instruction-set build this CPU cannot run
        assert variant.rpartition("-")[2] in ISA_FEATURES, str(report)
        pytest.skip(str(report))
    assert report.checks_run > 50
    if variant == "numpy":  # the reference is checked against the independent loop version
        assert "loop reference" in report.reference
    else:
        assert report.reference == "reference 'numpy'"


def test_builtin_cases_use_every_feature_of_their_layer_type():
    """Each capability of a built-in layer type is exercised by some built-in case (otherwise a
    variant declaring it could never be checked)."""
    for layer_type in ("conv2d", "maxpool2d", "avgpool2d", "dense", "gelu", "subsampling",
                       "convtranspose2d"):
        cls = _BUILTINS.layer_class(layer_type)
        used = set()
        for case in builtin_cases(layer_type):
            layer = cls(**case.kwargs)
            layer.config = dict(layer.resolve(case.input_shape))
            used.update(layer.features())
        assert used == set(cls.FEATURES), layer_type


# ------------------------------------------------------------------------------- wrong variants
def failures(report, check=None, output=None):
    return [f for f in report.failures
            if (check is None or f.check == check) and (output is None or f.output == output)]


def test_off_by_one_padding_fails_on_padded_cases(registry):
    report = check_variant("conv2d", "bad_padding", registry=registry)
    assert not report.ok
    bad_y = failures(report, "forward", "y")
    assert bad_y
    for f in report.failures:  # every failing case has vertical padding
        layer = cnnkit.layers.Conv2D(**f.layer_kwargs)
        assert layer.padding == "same" or layer.padding[0] > 0, f
    f = bad_y[0]
    assert f.max_rel_err > f.tol and f.max_abs_err > 0
    assert f.input_shape == (1, 3, 5, 6) and f.layer_kwargs["padding"] == (1, 2)
    text = str(report)
    assert f.case in text and "forward" in text and " y " in text
    assert "conv2d/bad_padding" in text and "plugin 'bad'" in text
    # unpadded cases pass
    assert not [f for f in report.failures if f.layer_kwargs.get("padding", 0) == 0]


def test_missing_bias_gradient_is_caught(registry):
    report = check_variant("conv2d", "bad_bias_grad", registry=registry)
    assert not report.ok
    assert {f.output for f in report.failures} == {"dbias"}
    assert {f.check for f in report.failures} == {"backward", "gradcheck"}
    assert all(f.layer_kwargs.get("bias", True) for f in report.failures)
    grad = failures(report, "gradcheck", "dbias")[0]
    assert grad.dtype == "float64" and "finite differences" in grad.message


def test_input_gradient_missing_a_group_is_caught(registry):
    report = check_variant("conv2d", "bad_group_dx", registry=registry)
    assert not report.ok
    assert {f.output for f in report.failures} == {"dx"}
    assert all(f.layer_kwargs.get("groups", 1) > 1 for f in report.failures)
    assert {f.check for f in report.failures} == {"backward", "gradcheck"}


def test_ignored_dilation_is_caught(registry):
    report = check_variant("conv2d", "ignores_dilation", registry=registry)
    assert not report.ok
    assert {(f.check, f.output) for f in report.failures} == {("shape", "y")}
    assert all(f.layer_kwargs.get("dilation", 1) != 1 for f in report.failures)
    assert "expected (2, 3, 7, 7)" in str(report)


def test_input_mutation_is_caught(registry):
    report = check_variant("relu", "mutates_input", registry=registry)
    assert not report.ok
    mutated = failures(report, "mutation", "x")
    assert mutated and all("forward modified its input 'x'" in f.message for f in mutated)
    assert failures(report, "read-only")  # writing into a read-only input raises
    assert "mutation" in str(report) and "relu() x(4, 7)" in str(report)


def test_false_float64_claim_is_caught(registry):
    report = check_variant("relu", "fake_float64", registry=registry)
    assert not report.ok
    wrong = failures(report, "dtype", "y")
    assert wrong and {f.dtype for f in wrong} == {"float64"}
    assert "has dtype float32, expected float64" in wrong[0].message
    # float32 itself is fine: only float64 failures
    assert {f.dtype for f in report.failures} == {"float64"}


def test_assert_conforms_raises_with_the_report(registry):
    with pytest.raises(AssertionError) as info:
        assert_conforms("conv2d", "bad_bias_grad", registry=registry)
    assert "conv2d/bad_bias_grad" in str(info.value) and "dbias" in str(info.value)
    report = assert_conforms("relu", "cython", registry=registry)
    assert isinstance(report, Report) and report.ok and bool(report)


# ------------------------------------------------------------------------------- the demo plugin
@pytest.mark.parametrize("layer_type,variant",
                         [("relu", "demo"), ("conv2d", "demo_fast"), ("scale2", "numpy")])
def test_demo_plugin_variants_conform(registry, layer_type, variant):
    report = check_variant(layer_type, variant, registry=registry)
    assert report.ok, str(report)
    assert report.plugin == "demo"


def test_undeclared_features_and_dtypes_are_refused(registry):
    """demo_fast declares float32 and stride/padding/bias only: every other case must be refused
    by explicit selection (and is listed as skipped with the reason)."""
    report = check_variant("conv2d", "demo_fast", registry=registry)
    reasons = {reason for _, _, reason in report.skipped}
    assert "dtype float64 not supported (supports float32)" in reasons
    assert any("does not support" in r and "dilation" in r for r in reasons)
    assert any("does not support" in r and "groups" in r for r in reasons)
    refused_float32 = {case for case, dtype, _ in report.skipped if dtype == "float32"}
    assert refused_float32 and all(("dilation" in c or "groups" in c or "same" in c
                                    or "connections" in c or "flip_kernel" in c)
                                   for c in refused_float32)


def test_new_layer_type_without_reference_runs_self_consistency_checks(registry):
    report = check_variant("scale2", "numpy", registry=registry,
                           cases=[({}, (2, 3)), Case({}, (1, 2, 3, 4))])
    assert report.ok and report.reference is None
    assert "self-consistency" in str(report)
    assert not [f for f in report.failures if f.check == "forward"]


def test_plugin_cases_dtypes_and_rtol_are_used(registry):
    one = [(dict(in_channels=1, out_channels=1, kernel_size=1), (1, 1, 2, 2))]
    both = check_variant("conv2d", "cython", registry=registry, cases=one)
    only32 = check_variant("conv2d", "cython", registry=registry, cases=one, dtypes=["float32"])
    # the single case exercises bias only: the other declared capabilities are reported
    for report in (both, only32):
        assert {f.check for f in report.failures} == {"capabilities"}
        assert {f.output for f in report.failures} == {
            "stride", "padding", "asymmetric_padding", "dilation", "groups", "connections",
            "flip_kernel"}
    # a tolerance of zero makes float32 results fail against the float64 reference
    strict = check_variant("conv2d", "cython", registry=registry, rtol={"float32": 0.0})
    assert {(f.check, f.dtype) for f in strict.failures} <= {("forward", "float32"),
                                                            ("backward", "float32")}
    assert failures(strict, "forward") and all(f.tol == 0.0 for f in strict.failures)


def test_only_the_requested_dtypes_are_run():
    from cnnkit.builtin.activation import ReluNumpy

    seen = set()

    class Recording:
        @staticmethod
        def forward(x, params, config, need_backward):
            seen.add(x.dtype.name)
            return ReluNumpy.forward(x, params, config, need_backward)

        backward = staticmethod(ReluNumpy.backward)

    class Plugin:
        @cnnkit.hookimpl
        def cnnkit_register_variants(register):
            register("relu", "recording", Recording)

    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(Plugin, "recording")
    assert check_variant("relu", "recording", registry=reg, dtypes=["float32"]).ok
    assert seen == {"float32"}
    assert check_variant("relu", "recording", registry=reg).ok
    assert seen == {"float32", "float64"}


def test_unknown_capability_and_uncovered_cases_are_reported():
    from cnnkit.builtin.activation import ReluNumpy

    class Claims:
        @cnnkit.hookimpl
        def cnnkit_register_variants(register):
            register("relu", "claims_groups", ReluNumpy, capabilities=("groups",))

    reg = Registry()
    reg.load(entry_points=False)
    assert reg.register_plugin(Claims, "claims")
    report = check_variant("relu", "claims_groups", registry=reg)
    (f,) = report.failures
    assert (f.check, f.output) == ("capabilities", "groups")
    assert "does not define" in f.message


def test_unregistered_variant_and_bad_cases_are_reported(registry):
    report = check_variant("conv2d", "nope", registry=registry)
    assert not report.ok and "not registered" in report.failures[0].message
    wrong_channels = (dict(in_channels=2, out_channels=2, kernel_size=5), (1, 3, 4, 4))
    report = check_variant("conv2d", "numpy", registry=registry, cases=[wrong_channels])
    assert failures(report, "setup") and "invalid" in failures(report, "setup")[0].message
    with pytest.raises(TypeError, match="case"):
        check_variant("conv2d", "numpy", registry=registry, cases=["not a case"])


def test_report_table_and_failure_fields(registry):
    report = check_variant("conv2d", "bad_bias_grad", registry=registry, dtypes=["float64"])
    f = report.failures[0]
    assert isinstance(f, Failure)
    assert set(vars(f)) == {"check", "message", "case", "layer_kwargs", "input_shape", "dtype",
                            "output", "max_abs_err", "max_rel_err", "tol"}
    lines = str(report).splitlines()
    assert "failed of" in lines[0]
    assert lines[1].split() == ["#", "check", "case", "dtype", "output", "max", "abs", "err",
                                "max", "rel", "err", "tol"]
    assert f"{f.max_abs_err:.3g}" in lines[2] and f.case in lines[2]


def test_check_is_reproducible(registry):
    a = check_variant("conv2d", "bad_group_dx", registry=registry, seed=3)
    b = check_variant("conv2d", "bad_group_dx", registry=registry, seed=3)
    assert [vars(f) for f in a.failures] == [vars(f) for f in b.failures]


def test_plugin_variants_by_plugin_name(registry):
    assert plugin_variants("demo", registry=registry) == [
        ("conv2d", "demo_fast"), ("relu", "demo"), ("scale2", "numpy")]
    assert ("relu", "fake_float64") in plugin_variants(registry=registry)
    assert plugin_variants("nope", registry=registry) == []


# ------------------------------------------------------------------------------- pytest plugin
def _pytest_plugin_args():
    """Load the pytest plugin explicitly unless its pytest11 entry point is installed."""
    installed = any(ep.value.startswith("cnnkit.pytest_plugin")
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "cnnkit.pytest_plugin"]


@pytest.fixture
def installed_test_plugins(plugin_env, tmp_path, monkeypatch):
    """The demo and bad plugins installed with real entry points, nothing else loaded."""
    site = write_dist_infos(tmp_path / "bad_site",
                            [("cnnkit-bad-variants", "0.1", "bad", "cnnkit_bad_variants")])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CNNKIT_LOAD_PLUGINS", "demo,bad")
    sys.modules.pop("cnnkit_bad_variants", None)
    reset_registry()
    yield
    reset_registry()
    sys.modules.pop("cnnkit_bad_variants", None)


def test_conformance_tests_one_liner(pytester, installed_test_plugins):
    pytester.makepyfile(test_mine="""
        from cnnkit.testing import conformance_tests

        test_demo = conformance_tests(plugin="cnnkit-demo")
        test_bad = conformance_tests(plugin="bad", variants=None)
        test_missing = conformance_tests(plugin="not-installed")
    """)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider", *_pytest_plugin_args())
    result.assert_outcomes(passed=3, failed=6 + 1)
    result.stdout.fnmatch_lines([
        "*test_demo[[]conv2d/demo_fast[]] PASSED*",
        "*test_demo[[]relu/demo[]] PASSED*",
        "*test_demo[[]scale2/numpy[]] PASSED*",
        "*test_bad[[]conv2d/bad_padding[]] FAILED*",
        "*test_bad[[]relu/fake_float64[]] FAILED*",
        "*test_missing[[]no-variants[]] FAILED*",
    ])
    out = result.stdout.str()
    assert "no cnnkit plugin named 'not-installed' is loaded" in out
    assert "has dtype float32, expected float64" in out   # the report is shown


def test_marker_and_cnnkit_variant_parameter(pytester, installed_test_plugins):
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.cnnkit_conformance(plugin="demo", dtypes=["float32"])
        def test_demo(cnnkit_variant):
            report = cnnkit_variant.assert_conforms()
            assert report.ok and report.plugin == "demo"

        @pytest.mark.cnnkit_conformance(variants=["relu/mutates_input"])
        def test_named(cnnkit_variant):
            cnnkit_variant.assert_conforms()

        def test_every_third_party_variant(cnnkit_variant):
            assert cnnkit_variant.layer_type in ("conv2d", "relu", "scale2")
    """)
    result = pytester.runpytest("-v", "--strict-markers", "-p", "no:cacheprovider",
                                *_pytest_plugin_args())
    result.assert_outcomes(passed=3 + 9, failed=1)
    result.stdout.fnmatch_lines([
        "*test_demo[[]relu/demo[]] PASSED*",
        "*test_named[[]relu/mutates_input[]] FAILED*",
        "*test_every_third_party_variant[[]conv2d/bad_padding[]] PASSED*",
    ])
    assert "forward modified its input 'x'" in result.stdout.str()
