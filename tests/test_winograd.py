"""The Winograd F(4x4, 3x3) conv2d variant: forward, input and weight gradients against the
NumPy reference (float64: to rounding; float32: within its declared bound), finite differences,
PyTorch, the conformance kit at its declared tolerance, and the selection rules that keep it
to float32 and to layers where it is faster."""
import numpy as np
import pytest

try:
    from gradcheck import assert_close, numeric_grad
except ImportError:  # tests/ imported as a package
    from tests.gradcheck import assert_close, numeric_grad
import cnnkit
import cnnkit.layers as L
from cnnkit._ext import winograd as _winograd
from cnnkit.builtin import conv as Bconv
from cnnkit.plugins import PluginError, Registry, SelectionError, hookimpl
from cnnkit.testing import DEFAULT_RTOL, check_variant
from cnnkit._cpu import missing_cpu_features
from cnnkit.builtin._kernel_args import ISA_FEATURES

WINO, REF = Bconv.Conv2dWinograd, Bconv.Conv2dNumpy
BOUND = Bconv.WINOGRAD_FLOAT32_BOUND


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def config(padding=(1, 1, 1, 1)):
    return {"stride": (1, 1), "padding": tuple(padding), "dilation": (1, 1), "groups": 1}


# (x shape, out channels, padding (top, bottom, left, right), bias)
CASES = [
    ((2, 3, 8, 8), 4, (1, 1, 1, 1), True),        # whole tiles
    ((1, 2, 9, 10), 3, (1, 1, 1, 1), False),      # batch 1, partial tiles at both edges
    ((3, 5, 7, 6), 2, (0, 0, 0, 0), True),        # no padding, odd sizes
    ((2, 4, 11, 5), 6, (0, 2, 1, 0), True),       # asymmetric padding
    ((2, 3, 6, 13), 5, (2, 0, 0, 3), False),      # asymmetric the other way
    ((1, 1, 3, 3), 1, (0, 0, 0, 0), True),        # one output pixel
    ((2, 2, 1, 2), 3, (1, 1, 2, 1), True),        # input smaller than the kernel
    ((1, 2, 4, 4), 2, (5, 4, 6, 3), False),       # tiles entirely in the padding
    ((2, 17, 12, 9), 19, (1, 2, 1, 1), True),     # channels beyond one SIMD chunk
    ((1, 3, 130, 3), 2, (1, 1, 1, 1), True),      # more tiles than one vector chunk (33 x 1)
]
IDS = [f"wino{i}" for i in range(len(CASES))]


def inputs(case, dtype, seed=0):
    shape, out, padding, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((out, shape[1], 3, 3))
    b = rng.standard_normal(out) if bias else None
    params = {"weight": w.astype(dtype), "bias": None if b is None else b.astype(dtype)}
    return x.astype(dtype), params, config(padding)


def reference(x, params, cfg, dy):
    """The NumPy variant in float64 on the same (possibly float32-rounded) values."""
    p64 = {k: None if v is None else v.astype(np.float64) for k, v in params.items()}
    y, ctx = REF.forward(x.astype(np.float64), p64, cfg, True)
    dx, grads = REF.backward(dy.astype(np.float64), ctx)
    return y, dx, grads


def run_both(case, dtype, seed=0, need_input_grad=True):
    x, params, cfg = inputs(case, dtype, seed)
    y, ctx = WINO.forward(x, params, cfg, True)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    dx, grads = WINO.backward(dy, ctx, need_input_grad=need_input_grad)
    return (y, dx, grads), reference(x, params, cfg, dy), params


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, BOUND)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_the_numpy_reference(case, dtype, tol):
    (y, dx, grads), (ry, rdx, rgrads), params = run_both(case, dtype)
    assert y.dtype == dx.dtype == dtype and y.flags.c_contiguous
    assert rel_err(y, ry) <= tol
    assert rel_err(dx, rdx) <= tol
    assert sorted(grads) == sorted(k for k, v in params.items() if v is not None)
    for k in grads:
        assert grads[k].dtype == dtype and grads[k].shape == params[k].shape
        assert rel_err(grads[k], rgrads[k]) <= tol, k


def test_blocks_spanning_images_and_threads(monkeypatch):
    """Blocks of 5 tiles cut tile rows and images apart; two threads split blocks (forward)
    and images (backward)."""
    monkeypatch.setattr(Bconv, "WINOGRAD_BLOCK_TILES", 5)
    case = ((5, 6, 13, 10), 7, (1, 0, 2, 1), True)
    with cnnkit.num_threads(2):
        (y, dx, grads), (ry, rdx, rgrads), _ = run_both(case, np.float64)
    assert rel_err(y, ry) <= 1e-10 and rel_err(dx, rdx) <= 1e-10
    assert rel_err(grads["weight"], rgrads["weight"]) <= 1e-10


def test_large_calls_run_on_the_team():
    with cnnkit.num_threads(2):
        if _winograd.max_threads() < 2:
            pytest.skip("cnnkit was built without OpenMP: every kernel runs on one thread")
        x, params, cfg = inputs(((4, 16, 16, 16), 16, (1, 1, 1, 1), True), np.float32)
        y, ctx = WINO.forward(x, params, cfg, True)
        assert _winograd.last_team_size() == 2
        WINO.backward(np.ones_like(y), ctx)
        assert _winograd.last_team_size() == 2
        small = inputs(((1, 1, 4, 4), 1, (1, 1, 1, 1), True), np.float32)
        WINO.forward(*small, False)
        assert _winograd.last_team_size() == 1


def test_need_input_grad_false_skips_dx_only():
    case = CASES[3]
    (_, dx, grads), (_, _, rgrads), _ = run_both(case, np.float64, need_input_grad=False)
    assert dx is None
    assert rel_err(grads["weight"], rgrads["weight"]) <= 1e-10
    assert rel_err(grads["bias"], rgrads["bias"]) <= 1e-12


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[6]], ids=["partial", "asym", "tiny"])
def test_gradients_match_finite_differences(case):
    x, params, cfg = inputs(case, np.float64, seed=3)
    y, ctx = WINO.forward(x, params, cfg, True)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    dx, grads = WINO.backward(dy, ctx)

    def loss():
        return float(np.sum(WINO.forward(x, params, cfg, False)[0] * dy))

    assert_close(dx, numeric_grad(loss, x), what="dx")
    for k in grads:
        assert_close(grads[k], numeric_grad(loss, params[k]), what=k)


def test_float32_error_bound_over_random_shapes():
    """The documented bound holds for y, dx and dweight over fuzz-sized and wide layers."""
    rng = np.random.default_rng(2024)
    shapes = [((int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 13)),
                int(rng.integers(1, 13))), int(rng.integers(1, 7)),
               tuple(int(p) for p in rng.integers(0, 3, 4)), bool(rng.integers(0, 2)))
              for _ in range(40)]
    shapes += [((2, 64, 16, 16), 64, (1, 1, 1, 1), True), ((1, 256, 9, 9), 32, (1, 1, 1, 1), True)]
    worst = 0.0
    for i, (shape, out, pad, bias) in enumerate(shapes):
        if shape[2] + pad[0] + pad[1] < 3 or shape[3] + pad[2] + pad[3] < 3:
            continue
        (y, dx, grads), (ry, rdx, rgrads), _ = run_both((shape, out, pad, bias), np.float32, i)
        worst = max(worst, rel_err(y, ry), rel_err(dx, rdx), rel_err(grads["weight"],
                                                                      rgrads["weight"]))
    assert worst <= BOUND
    assert BOUND <= 1e-4  # what automatic selection requires of a float32 variant


def test_refuses_what_it_does_not_compute():
    x, params, cfg = inputs(CASES[0], np.float32)
    for bad in ({"stride": (2, 1)}, {"dilation": (1, 2)}):
        with pytest.raises(ValueError, match="winograd.*3x3 kernels with stride 1"):
            WINO.forward(x, params, dict(cfg, **bad), False)
    with pytest.raises(ValueError, match="kernel 5x5"):
        WINO.forward(x, {"weight": np.ones((2, 3, 5, 5), np.float32)}, cfg, False)
    with pytest.raises(ValueError, match="conv2d"):  # the shared shape checks
        WINO.forward(x, {"weight": params["weight"][:, :2]}, cfg, False)
    y, ctx = WINO.forward(x, params, cfg, True)
    with pytest.raises(ValueError, match="dy has shape"):
        WINO.backward(np.zeros((2, 4, 1, 1), np.float32), ctx)
    assert Bconv.winograd_refusal({**cfg, "kernel_size": (3, 3)}) is None
    assert "groups=2" in Bconv.winograd_refusal({**cfg, "groups": 2})


def test_kernel_checks_its_buffers():
    x, params, cfg = inputs(CASES[0], np.float32)
    u = np.empty((36, 4, 3), np.float32)
    _winograd.filter_transform(params["weight"], u)
    y = np.empty((2, 4, 8, 8), np.float32)
    small = np.empty((1, _winograd.workspace_size(3, 4, 8) - 1), np.float32)
    with pytest.raises(ValueError, match="workspace"):
        _winograd.winograd_forward(x, u, None, y, small, 1, 1, 8, 1)
    with pytest.raises(ValueError, match="u must be"):
        _winograd.winograd_forward(x, np.ascontiguousarray(u[:, :2]), None, y, np.empty((1, 10**5), np.float32),
                                   1, 1, 8, 1)
    with pytest.raises(ValueError, match="filter_transform"):
        _winograd.filter_transform(np.ones((4, 3, 2, 2), np.float32), u)


def test_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: peer comparison tests "
                                "need torch==2.13.0")
    for case in (CASES[3], CASES[8]):
        x, params, cfg = inputs(case, np.float32, seed=7)
        y, ctx = WINO.forward(x, params, cfg, True)
        dy = np.random.default_rng(8).standard_normal(y.shape).astype(np.float32)
        dx, grads = WINO.backward(dy, ctx)
        top, bottom, left, right = cfg["padding"]
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(params["weight"], requires_grad=True)
        tb = torch.tensor(params["bias"], requires_grad=True)
        ty = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (left, right, top, bottom)),
                                        tw, tb)
        ty.backward(torch.tensor(dy))
        assert rel_err(y, ty.detach().numpy()) <= 1e-4
        assert rel_err(dx, tx.grad.numpy()) <= 1e-4
        assert rel_err(grads["weight"], tw.grad.numpy()) <= 1e-4
        assert rel_err(grads["bias"], tb.grad.numpy()) <= 1e-4


# ------------------------------------------------------------------------------- the kit
def _registry():
    reg = Registry()
    reg.load(entry_points=False)
    return reg


def test_conformance_kit_at_the_declared_tolerance():
    reg = _registry()
    variant = reg.variants["conv2d"]["winograd"]
    assert variant.tolerance == {"float32": BOUND}
    cases = [(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 3, 9, 10)),
             (dict(in_channels=2, out_channels=3, kernel_size=3, bias=False), (1, 2, 7, 5)),
             (dict(in_channels=4, out_channels=2, kernel_size=3, padding=2), (2, 4, 5, 6)),
             (dict(in_channels=3, out_channels=2, kernel_size=3, stride=2), (1, 3, 7, 7))]
    report = check_variant("conv2d", "winograd", registry=reg, cases=cases)
    assert report.ok, str(report)
    assert report.checks_run > 50
    # the strided case is refused (selection check), not computed
    assert [s[:2] for s in report.skipped if "stride" in s[2]]
    report = check_variant("conv2d", "winograd", registry=reg)  # the built-in cases
    assert report.ok, str(report)


class _Rounded:
    """The NumPy reference with a relative error of 1e-7 added to its output (float64)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        y, ctx = REF.forward(x, params, config, need_backward)
        return y * (1 + 1e-7), ctx

    backward = staticmethod(REF.backward)


def _register_rounded(**options):
    class Plugin:
        @staticmethod
        @hookimpl
        def cnnkit_register_variants(register):
            register("conv2d", "rounded", _Rounded, capabilities=("padding", "bias"), **options)

    reg = _registry()
    assert reg.register_plugin(Plugin, "rounded-plugin", strict=True)
    return reg


def test_the_kit_reads_the_declared_tolerance():
    cases = [(dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (2, 2, 5, 5))]
    strict = check_variant("conv2d", "rounded", registry=_register_rounded(), cases=cases,
                           dtypes=["float64"])
    assert not strict.ok and {f.tol for f in strict.failures} == {DEFAULT_RTOL["float64"]}
    loose = check_variant("conv2d", "rounded", cases=cases, dtypes=["float64"],
                          registry=_register_rounded(tolerance={"float64": 1e-6}))
    assert loose.ok, str(loose)
    # an explicit rtol= still wins over the declared tolerance
    forced = check_variant("conv2d", "rounded", cases=cases, dtypes=["float64"], rtol=1e-9,
                           registry=_register_rounded(tolerance=1e-6))
    assert not forced.ok


@pytest.mark.parametrize("options, message", [
    ({"auto_dtypes": ("float16",)}, "auto_dtypes float16 not among its dtypes"),
    ({"tolerance": -1.0}, "tolerance must be a positive number"),
    ({"tolerance": {"float32": "big"}}, "tolerance must be a positive number"),
    ({"auto_supports": 3}, "auto_supports must be callable"),
])
def test_bad_registration_options_are_refused(options, message):
    with pytest.raises(PluginError, match=message):
        _register_rounded(**options)


# ------------------------------------------------------------------------------- selection
def _best_winograd_build():
    """The Winograd build selection should rank first on this CPU: the widest instruction set
    it has (the ISA builds rank by width), else the portable one."""
    runnable = [isa for isa in ISA_FEATURES if not missing_cpu_features(ISA_FEATURES[isa])
                and not Bconv.isa_build(Bconv.Conv2dWinograd, "winograd", isa).unavailable()]
    ranked = sorted(runnable, key=lambda isa: Bconv.WINOGRAD_PRIORITY[isa])
    return f"winograd-{ranked[-1]}" if ranked else "winograd"


def test_automatic_selection_float32_3x3_wide_layers_only():
    wide = L.Conv2D(16, 16, 3, padding=1)
    assert wide.variant(np.float32, (2, 16, 8, 8)).name == _best_winograd_build()
    # never automatic in float64; the others go to im2col or, for few taps, a direct build
    not_winograd = ("cython", "direct-avx2", "direct-avx512")
    assert wide.variant(np.float64, (2, 16, 8, 8)).name in not_winograd
    narrow = L.Conv2D(3, 16, 3, padding=1)
    assert narrow.variant(np.float32, (2, 3, 8, 8)).name in not_winograd
    for other in (L.Conv2D(16, 16, 5, padding=2), L.Conv2D(16, 16, 3, stride=2),
                  L.Conv2D(16, 16, 3, dilation=2), L.Conv2D(16, 16, 3, groups=2)):
        assert other.variant(np.float32, (2, 16, 12, 12)).name in not_winograd


def test_explicit_choice_serves_float64_and_narrow_layers():
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7))
    layer = L.Conv2D(3, 2, 3, padding="same", dtype=np.float64, impl="winograd", rng=0)
    assert layer.variant(np.float64, x.shape).name == "winograd"
    twin = L.Conv2D(3, 2, 3, padding="same", dtype=np.float64, impl="numpy", rng=0)
    assert rel_err(layer.forward(x), twin.forward(x)) <= 1e-12
    with cnnkit.use(conv2d="winograd"):
        assert L.Conv2D(16, 16, 3).variant(np.float64, (1, 16, 5, 5)).name == "winograd"
    with pytest.raises(SelectionError, match="winograd.*not kernel 5x5"):
        L.Conv2D(3, 2, 5, impl="winograd").variant(np.float32, (1, 3, 8, 8))


def test_explain_says_why_float64_is_not_automatic():
    reg = cnnkit.get_registry()
    layer = L.Conv2D(32, 32, 3, padding=1)
    res = layer.resolution((1, 32, 8, 8))
    winner, _, reasons = reg.explain("conv2d", dtype="float64", features=res.features,
                                     config=res.config)
    assert not winner.name.startswith("winograd")
    assert "not picked automatically for float64" in reasons["winograd"]
    assert "float32 5e-05" in reasons["winograd"] and "impl=" in reasons["winograd"]
    narrow = L.Conv2D(3, 32, 3, padding=1).resolution((1, 3, 8, 8))
    _, _, reasons = reg.explain("conv2d", dtype="float32", features=narrow.features,
                                config=narrow.config)
    assert "below 16 input or output channels" in reasons["winograd"]
