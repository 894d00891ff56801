"""Built-in kernels: Cython against NumPy, NumPy against loop references, both against finite
differences and (when installed) against PyTorch.  Variant classes are called directly, so
these tests do not depend on the plugin registry."""
import numpy as np
import pytest

try:
    import _reference as ref
    from gradcheck import numeric_grad
except ImportError:  # tests/ imported as a package
    from tests import _reference as ref
    from tests.gradcheck import numeric_grad
import cnnkit
from cnnkit._ext import activation as _act
from cnnkit._ext import conv as _conv
from cnnkit._ext import dropout as _dropout
from cnnkit._ext import norm as _norm
from cnnkit._ext import pool as _pool
from cnnkit._ext import winograd as _winograd
from cnnkit.builtin import activation as Bactivation
from cnnkit.builtin import conv as Bconv
from cnnkit.builtin import dense as Bdense
from cnnkit.builtin import dropout as Bdropout
from cnnkit.builtin import norm as Bnorm
from cnnkit.builtin import pool as Bpool

DTYPES = [np.float32, np.float64]


def rel_err(actual, expected):
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def tol(dtype):
    return 1e-4 if dtype == np.float32 else 1e-11


def conv_config(stride=1, padding=0, dilation=1, groups=1):
    stride = (stride, stride) if np.isscalar(stride) else tuple(stride)
    padding = (padding,) * 4 if np.isscalar(padding) else tuple(padding)
    dilation = (dilation, dilation) if np.isscalar(dilation) else tuple(dilation)
    return {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


# (x shape, out channels, kernel (kh, kw), config, bias)
CONV_CASES = [
    ((2, 3, 8, 8), 4, (3, 3), conv_config(), True),
    ((1, 1, 7, 9), 2, (3, 2), conv_config(), False),  # batch 1, odd sizes
    ((2, 4, 9, 7), 6, (3, 3), conv_config(stride=2, padding=1, groups=2), True),
    ((3, 6, 10, 11), 3, (2, 3), conv_config(stride=(3, 1), padding=(1, 2, 0, 1), groups=3), True),
    ((2, 2, 11, 10), 4, (3, 3), conv_config(dilation=2, padding=2), False),
    ((2, 3, 12, 9), 5, (3, 2), conv_config(stride=(2, 3), padding=(0, 1, 2, 0), dilation=(2, 1)), True),
    ((2, 6, 9, 9), 6, (3, 3), conv_config(padding=1, groups=6), True),  # depthwise
    ((2, 4, 6, 5), 6, (1, 1), conv_config(), True),  # 1x1: no im2col
    ((2, 6, 5, 7), 9, (1, 1), conv_config(groups=3), False),  # grouped 1x1
    ((2, 4, 7, 7), 3, (1, 1), conv_config(stride=2, padding=1), True),  # 1x1 with im2col
    ((1, 3, 5, 5), 2, (5, 5), conv_config(), True),  # kernel = input
    ((2, 2, 6, 6), 3, (4, 4), conv_config(stride=3, padding=(3, 0, 1, 2)), True),
]
CONV_IDS = [f"conv{i}" for i in range(len(CONV_CASES))]

# 3x3 stride-1 cases for the Winograd variant: whole and partial 4x4 tiles, asymmetric padding,
# batch 1, an input smaller than one tile, more channels than one vector chunk of tiles
WINOGRAD_CASES = [
    ((2, 3, 8, 8), 4, (3, 3), conv_config(padding=1), True),
    ((1, 2, 9, 7), 3, (3, 3), conv_config(padding=(0, 2, 1, 0)), False),
    ((2, 1, 2, 3), 2, (3, 3), conv_config(padding=(1, 1, 2, 0)), True),
    ((3, 17, 6, 13), 5, (3, 3), conv_config(), True),
]


def conv_inputs(case, dtype, seed=0):
    xshape, out, (kh, kw), config, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal((out, xshape[1] // config["groups"], kh, kw)).astype(dtype)
    b = rng.standard_normal(out).astype(dtype) if bias else None
    return x, {"weight": w, "bias": b}, config


POOL_CASES = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), False, True),
    ((1, 2, 7, 9), (3, 3), (2, 2), (1, 1), False, True),
    ((2, 2, 7, 9), (3, 3), (2, 2), (1, 1), True, False),
    ((2, 2, 10, 7), (3, 2), (3, 1), (1, 0), True, True),
    ((1, 3, 6, 6), (2, 2), (3, 3), (0, 0), True, True),  # ceil_mode drops a window starting past the input
    ((2, 1, 11, 8), (4, 3), (2, 3), (2, 1), True, False),
    ((2, 1, 11, 8), (4, 3), (2, 3), (2, 1), True, True),
    ((1, 1, 5, 5), (5, 5), (1, 1), (0, 0), False, True),
    ((2, 2, 9, 9), (2, 3), (1, 2), (1, 1), False, False),
]
POOL_IDS = [f"pool{i}" for i in range(len(POOL_CASES))]


def pool_config(case):
    _, k, s, p, ceil_mode, include = case
    return {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil_mode, "count_include_pad": include}


def distinct_values(shape, rng, dtype=np.float64):
    """Random values that are pairwise at least ~0.05 apart: no max-pool ties, no ReLU kinks."""
    n = int(np.prod(shape))
    vals = (rng.permutation(n) - n / 2 + 0.5) * (4.0 / max(n, 1))
    return (vals + rng.uniform(-0.01, 0.01, n)).reshape(shape).astype(dtype)


ACTIVATIONS = {
    "relu": (Bactivation.ReluNumpy, Bactivation.ReluCython),
    "sigmoid": (Bactivation.SigmoidNumpy, Bactivation.SigmoidCython),
    "tanh": (Bactivation.TanhNumpy, Bactivation.TanhCython),
}


# ---------------------------------------------------------------------------------------------
# Cython against NumPy
# ---------------------------------------------------------------------------------------------
def check_pair(impl, oracle, x, params, config, dtype, seed=1):
    y1, ctx1 = impl.forward(x, params, config, True)
    y0, ctx0 = oracle.forward(x, params, config, True)
    assert y1.dtype == dtype and y1.flags.c_contiguous
    assert rel_err(y1, y0) <= tol(dtype)
    dy = np.random.default_rng(seed).standard_normal(y0.shape).astype(dtype)
    dx1, g1 = impl.backward(dy, ctx1)
    dx0, g0 = oracle.backward(dy, ctx0)
    assert dx1.dtype == dtype and dx1.flags.c_contiguous and dx1.shape == x.shape
    assert rel_err(dx1, dx0) <= tol(dtype)
    assert g1.keys() == g0.keys() == {k for k, v in params.items() if v is not None}
    for k in g0:
        assert g1[k].dtype == dtype and g1[k].shape == params[k].shape and g1[k].flags.c_contiguous
        assert rel_err(g1[k], g0[k]) <= tol(dtype), k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[f"wino{i}" for i in range(len(WINOGRAD_CASES))])
def test_conv_winograd_matches_numpy(case, dtype):
    x, params, config = conv_inputs(case, dtype)
    check_pair(Bconv.Conv2dWinograd, Bconv.Conv2dNumpy, x, params, config, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_cython_matches_numpy(case, dtype):
    x, params, config = conv_inputs(case, dtype)
    check_pair(Bconv.Conv2dCython, Bconv.Conv2dNumpy, x, params, config, dtype)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 3, 5, 7)], ids=[CONV_IDS[i] for i in (0, 3, 5, 7)])
def test_conv_cython_row_bands(case, monkeypatch):
    """A tiny workspace bound splits every image into one-row bands; results must not change."""
    monkeypatch.setattr(Bconv, "COL_WORKSPACE_BYTES", 64)
    x, params, config = conv_inputs(case, np.float64)
    check_pair(Bconv.Conv2dCython, Bconv.Conv2dNumpy, x, params, config, np.float64)


@pytest.fixture
def two_threads():
    """Kernels limited to a team of two OpenMP threads (skipped for a build without OpenMP)."""
    with cnnkit.num_threads(2):
        if _conv.max_threads() < 2:
            pytest.skip("cnnkit was built without OpenMP: every kernel runs on one thread")
        yield


def test_conv_cython_larger_batch_multithreaded(two_threads):
    """More images than threads and more multiply-adds than ``SERIAL_MACS``, so every OpenMP
    thread contributes partial weight gradients; the kernels report the team they ran on."""
    case = ((9, 4, 16, 16), 8, (3, 3), conv_config(stride=1, padding=1, groups=2), True)
    (n, c, h, w), o, (kh, kw) = case[:3]
    assert n * o * h * w * (c // 2) * kh * kw >= Bconv.SERIAL_MACS  # same-size output, 2 groups
    for dtype in DTYPES:
        x, params, config = conv_inputs(case, dtype)
        check_pair(Bconv.Conv2dCython, Bconv.Conv2dNumpy, x, params, config, dtype)
        assert _conv.last_team_size() == 2  # the backward pass: two partial weight gradients


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_cython_matches_numpy(kind, case, dtype):
    rng = np.random.default_rng(2)
    x = distinct_values(case[0], rng, dtype)
    pair = (Bpool.MaxPool2dCython, Bpool.MaxPool2dNumpy) if kind == "max" else (Bpool.AvgPool2dCython, Bpool.AvgPool2dNumpy)
    check_pair(*pair, x, {}, pool_config(case), dtype)


def _batchnorm_builds():
    """The portable batch-norm wrapper and its instruction-set builds (skipped, with the reason,
    where this CPU or installation cannot run one)."""
    from cnnkit.builtin._kernel_args import ISA_FEATURES, isa_build

    builds = [pytest.param(Bnorm.BatchNormCython, id="cython")]
    for isa in ISA_FEATURES:
        impl = isa_build(Bnorm.BatchNormCython, "norm", isa)
        reason = impl.unavailable()
        skip = pytest.mark.skipif(reason is not None, reason=str(reason))
        builds.append(pytest.param(impl, id=f"cython-{isa}", marks=skip))
    return builds


def _misaligned(a):
    """A C-contiguous copy of ``a`` whose data starts one byte past an aligned address."""
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# (shape, offset of the values): planes shorter than, equal to and longer than the 8 lanes of
# the kernels' sums (a remainder after the lanes), (N, C) with one value per plane, a shape
# above the parallel threshold, planes longer than the page prefetched ahead, and a mean far
# above the spread (two-pass statistics)
BN_CASES = [((3, 2, 5), 0.0), ((2, 3, 8), 0.0), ((4, 3, 37), 1.0), ((9, 4, 1), 0.0),
            ((8, 16, 129), 0.5), ((3, 2, 1500), -1.0), ((6, 3, 50), 1e4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["aligned", "misaligned"])
@pytest.mark.parametrize("case", BN_CASES, ids=[f"{s}+{o:g}" for s, o in BN_CASES])
@pytest.mark.parametrize("impl", _batchnorm_builds())
def test_batchnorm_builds_match_numpy_closely(impl, case, layout, dtype):
    """Every compiled build against the NumPy reference, within a few roundings of the output
    (float32) or 1e-11 (float64): the vector loops, their remainders and the statistics."""
    shape, offset = case
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    if layout == "misaligned":
        x = _misaligned(x)
    c = shape[1]
    params = {"weight": rng.uniform(0.5, 2, c).astype(dtype),
              "bias": rng.uniform(-1, 1, c).astype(dtype)}
    bound = 2e-6 if dtype == np.float32 else 1e-11
    config = {"eps": 1e-5}
    with cnnkit.num_threads(2):
        y1, ctx1 = impl.forward(x, params, config, True)
        y0, ctx0 = Bnorm.BatchNormNumpy.forward(np.ascontiguousarray(x), params, config, True)
        assert rel_err(y1, y0) <= bound
        for got, want in zip(impl.statistics(ctx1), Bnorm.BatchNormNumpy.statistics(ctx0)):
            assert rel_err(got, want) <= 1e-12
        dy = rng.standard_normal(shape).astype(dtype)
        dx1, g1 = impl.backward(_misaligned(dy) if layout == "misaligned" else dy, ctx1)
        dx0, g0 = Bnorm.BatchNormNumpy.backward(dy, ctx0)
    assert rel_err(dx1, dx0) <= bound
    for k in ("weight", "bias"):
        assert rel_err(g1[k], g0[k]) <= bound, k


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_ties_go_to_first_maximum(dtype):
    x = np.zeros((1, 2, 4, 5), dtype=dtype)
    x[0, 1, 1:3, 1:4] = 1.0
    config = {"kernel_size": (2, 2), "stride": (1, 2), "padding": (1, 1), "ceil_mode": True}
    check_pair(Bpool.MaxPool2dCython, Bpool.MaxPool2dNumpy, x, {}, config, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3,), (2, 5, 7), (4, 3, 64, 64), (1,), (0, 3)])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_cython_matches_numpy(name, shape, dtype):
    """(4, 3, 64, 64) is above the parallel threshold, the others below (with OpenMP, the
    backward kernel, the last one run, reports the team it took)."""
    x = (np.random.default_rng(3).standard_normal(shape) * 4).astype(dtype)
    oracle, impl = ACTIVATIONS[name]
    with cnnkit.num_threads(2):
        check_pair(impl, oracle, x, {}, {}, dtype)
        if _conv.max_threads() > 1:
            assert _act.last_team_size() == (2 if x.size >= _act.PARALLEL_MIN else 1)


def _team_cases():
    """(id, kernel module, cython variant, numpy variant, big input, small input, params, config):
    ``big`` is at or above the module's parallel threshold, ``small`` below every threshold."""
    rng = np.random.default_rng(16)
    pool_cfg = pool_config(((), (3, 3), (2, 2), (1, 1), False, True))
    pool_big = distinct_values((2, 8, 32, 32), rng)
    assert pool_big.size >= _pool.PARALLEL_MIN
    n_act = _act.PARALLEL_MIN
    act_big, act_small = rng.standard_normal(n_act) * 4, rng.standard_normal(100) * 4
    bn_params = {"weight": rng.standard_normal(16), "bias": rng.standard_normal(16)}
    bn_big = rng.standard_normal((8, 16, 128)) * 3 + 1
    assert bn_big.size >= _norm.PARALLEL_MIN
    drop_cfg = {"p": 0.3, "seed": 12345}
    drop_big = rng.standard_normal(_dropout.PARALLEL_MIN)
    conv_big, conv_params, conv_cfg = conv_inputs(
        ((8, 4, 16, 16), 8, (3, 3), conv_config(padding=1, groups=2), True), np.float64)
    assert 8 * 8 * 16 * 16 * 2 * 9 >= Bconv.SERIAL_MACS  # N O H W (C/groups) kh kw
    wino_big, wino_params, wino_cfg = conv_inputs(
        ((8, 8, 16, 16), 8, (3, 3), conv_config(padding=1), True), np.float64)
    assert 8 * 16 * 36 * 8 * 8 >= Bconv.SERIAL_MACS  # tiles * 36 positions * C * O
    cases = [
        ("conv2d", _conv, Bconv.Conv2dCython, Bconv.Conv2dNumpy, conv_big, conv_big[:1, :, :5, :5],
         conv_params, conv_cfg),
        ("winograd", _winograd, Bconv.Conv2dWinograd, Bconv.Conv2dNumpy, wino_big,
         wino_big[:1, :, :5, :5], wino_params, wino_cfg),
        ("maxpool", _pool, Bpool.MaxPool2dCython, Bpool.MaxPool2dNumpy, pool_big, pool_big[:1, :1, :8, :8],
         {}, pool_cfg),
        ("avgpool", _pool, Bpool.AvgPool2dCython, Bpool.AvgPool2dNumpy, pool_big, pool_big[:1, :1, :8, :8],
         {}, pool_cfg),
        ("batchnorm", _norm, Bnorm.BatchNormCython, Bnorm.BatchNormNumpy, bn_big, bn_big[:2, :, :4],
         bn_params, {"eps": 1e-5}),
        ("dropout", _dropout, Bdropout.DropoutCython, Bdropout.DropoutNumpy, drop_big, drop_big[:100], {},
         drop_cfg),
    ]
    cases += [(name, _act, impl, oracle, act_big, act_small, {}, {})
              for name, (oracle, impl) in sorted(ACTIVATIONS.items())]
    return cases


TEAM_CASES = _team_cases()


@pytest.mark.parametrize("name,module,impl,oracle,big,small,params,config", TEAM_CASES,
                         ids=[c[0] for c in TEAM_CASES])
def test_kernels_use_the_team_above_their_threshold(two_threads, name, module, impl, oracle, big,
                                                    small, params, config):
    """Each kernel family takes the multi-threaded path above its threshold and the serial one
    below it, forward and backward (big and small alternate, so every reading is fresh), and
    gives the reference's results on the team."""
    small = np.ascontiguousarray(small)
    y_big, ctx_big = impl.forward(big, params, config, True)
    assert module.last_team_size() == 2, f"{name} forward"
    y_small, ctx_small = impl.forward(small, params, config, True)
    assert module.last_team_size() == 1, f"{name} forward, small input"
    impl.backward(np.ones_like(y_big), ctx_big)
    assert module.last_team_size() == 2, f"{name} backward"
    impl.backward(np.ones_like(y_small), ctx_small)
    assert module.last_team_size() == 1, f"{name} backward, small input"
    check_pair(impl, oracle, big, params, config, big.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [Bactivation.SigmoidNumpy, Bactivation.SigmoidCython], ids=["numpy", "cython"])
def test_sigmoid_is_stable_for_large_inputs(variant, dtype):
    x = np.array([-1e4, -800.0, -100.0, 0.0, 100.0, 800.0, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, ctx = variant.forward(x, {}, {}, True)
        dx, _ = variant.backward(np.ones_like(x), ctx)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y, [0, 0, 0, 0.5, 1, 1, 1], atol=1e-30 if dtype == np.float64 else 1e-37)


@pytest.mark.parametrize("variant", [Bactivation.ReluNumpy, Bactivation.ReluCython], ids=["numpy", "cython"])
def test_relu_nan_and_zero(variant):
    x = np.array([np.nan, -0.0, 0.0, -1.0, 2.0])
    y, ctx = variant.forward(x, {}, {}, True)
    assert np.isnan(y[0]) and list(y[1:]) == [0, 0, 0, 2]
    dx, _ = variant.backward(np.ones_like(x), ctx)
    assert list(dx[1:]) == [0, 0, 0, 1]


# ---------------------------------------------------------------------------------------------
# NumPy against the loop references
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_numpy_matches_loop_reference(case):
    x, params, config = conv_inputs(case, np.float64)
    y, _ = Bconv.Conv2dNumpy.forward(x, params, config, False)
    expected = ref.conv2d_forward(x, params["weight"], params["bias"], config["stride"], config["padding"],
                                  config["dilation"], config["groups"])
    assert rel_err(y, expected) <= 1e-12


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_pools_numpy_match_loop_reference(case):
    x = np.random.default_rng(4).standard_normal(case[0])
    config = pool_config(case)
    y, _ = Bpool.MaxPool2dNumpy.forward(x, {}, config, False)
    assert rel_err(y, ref.maxpool2d_forward(x, case[1], case[2], case[3], case[4])) == 0
    y, _ = Bpool.AvgPool2dNumpy.forward(x, {}, config, False)
    assert rel_err(y, ref.avgpool2d_forward(x, *case[1:])) <= 1e-12


# ---------------------------------------------------------------------------------------------
# finite differences (float64)
# ---------------------------------------------------------------------------------------------
def check_gradients(variant, x, params, config, seed=5):
    x = x.copy()
    params = {k: (None if v is None else v.copy()) for k, v in params.items()}
    y, ctx = variant.forward(x, params, config, True)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    dx, grads = variant.backward(dy, ctx)

    def loss():
        return float(np.sum(variant.forward(x, params, config, False)[0] * dy))

    assert rel_err(dx, numeric_grad(loss, x)) <= 1e-6
    for k, v in params.items():
        if v is not None:
            assert rel_err(grads[k], numeric_grad(loss, v)) <= 1e-6, k


CONV_VARIANTS = [Bconv.Conv2dNumpy, Bconv.Conv2dCython]
VARIANT_IDS = ["numpy", "cython"]


@pytest.mark.parametrize("variant", CONV_VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (2, 3, 5, 8)], ids=[CONV_IDS[i] for i in (2, 3, 5, 8)])
def test_conv_gradients_finite_differences(variant, case):
    x, params, config = conv_inputs(case, np.float64, seed=6)
    check_gradients(variant, x[:1], params, config)


@pytest.mark.parametrize("variant", [Bpool.MaxPool2dNumpy, Bpool.MaxPool2dCython, Bpool.AvgPool2dNumpy, Bpool.AvgPool2dCython],
                         ids=["max-numpy", "max-cython", "avg-numpy", "avg-cython"])
@pytest.mark.parametrize("case", [POOL_CASES[i] for i in (1, 2, 3, 5)], ids=[POOL_IDS[i] for i in (1, 2, 3, 5)])
def test_pool_gradients_finite_differences(variant, case):
    x = distinct_values(case[0], np.random.default_rng(7))
    check_gradients(variant, x, {}, pool_config(case))


@pytest.mark.parametrize("variant", [v for pair in ACTIVATIONS.values() for v in pair],
                         ids=[f"{n}-{i}" for n in ACTIVATIONS for i in VARIANT_IDS])
def test_activation_gradients_finite_differences(variant):
    x = distinct_values((2, 3, 4), np.random.default_rng(8)) * 2
    check_gradients(variant, x, {}, {})


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients_finite_differences(bias):
    rng = np.random.default_rng(9)
    params = {"weight": rng.standard_normal((4, 5)), "bias": rng.standard_normal(4) if bias else None}
    check_gradients(Bdense.DenseNumpy, rng.standard_normal((3, 5)), params, {})


# ---------------------------------------------------------------------------------------------
# contract: no mutation, ctx None in inference, read-only inputs
# ---------------------------------------------------------------------------------------------
def _contract_cases():
    conv = conv_inputs(CONV_CASES[3], np.float64)
    pool = pool_config(POOL_CASES[2])
    rng = np.random.default_rng(10)
    act_x = rng.standard_normal((2, 3, 4))
    dense = (rng.standard_normal((3, 5)), {"weight": rng.standard_normal((4, 5)), "bias": rng.standard_normal(4)}, {})
    pool_x = rng.standard_normal(POOL_CASES[2][0])
    cases = [
        ("conv2d-numpy", Bconv.Conv2dNumpy, conv), ("conv2d-cython", Bconv.Conv2dCython, conv),
        ("maxpool-numpy", Bpool.MaxPool2dNumpy, (pool_x, {}, pool)), ("maxpool-cython", Bpool.MaxPool2dCython, (pool_x, {}, pool)),
        ("avgpool-numpy", Bpool.AvgPool2dNumpy, (pool_x, {}, pool)), ("avgpool-cython", Bpool.AvgPool2dCython, (pool_x, {}, pool)),
        ("dense-numpy", Bdense.DenseNumpy, dense),
    ]
    for name, (a, b) in ACTIVATIONS.items():
        cases += [(f"{name}-numpy", a, (act_x, {}, {})), (f"{name}-cython", b, (act_x, {}, {}))]
    return cases


CONTRACT = _contract_cases()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,variant,inputs", CONTRACT, ids=[c[0] for c in CONTRACT])
def test_contract_no_mutation_readonly_ctx(name, variant, inputs, dtype):
    x, params, config = inputs
    x = x.astype(dtype)
    params = {k: (None if v is None else v.astype(dtype)) for k, v in params.items()}
    for a in [x, *params.values()]:
        if a is not None:
            a.flags.writeable = False
    saved = (x.copy(), {k: (None if v is None else v.copy()) for k, v in params.items()})

    y, ctx = variant.forward(x, params, config, False)
    assert ctx is None
    y2, ctx = variant.forward(x, params, config, True)
    assert ctx is not None and y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_array_equal(y, y2)
    dy = np.random.default_rng(11).standard_normal(y.shape).astype(dtype)
    dy.flags.writeable = False
    dy_saved = dy.copy()
    dx, grads = variant.backward(dy, ctx)
    assert dx.dtype == dtype and dx.shape == x.shape and dx.flags.c_contiguous
    for g in grads.values():
        assert g.dtype == dtype and g.flags.c_contiguous

    np.testing.assert_array_equal(x, saved[0])
    np.testing.assert_array_equal(dy, dy_saved)
    for k, v in params.items():
        if v is not None:
            np.testing.assert_array_equal(v, saved[1][k])


def test_cython_conv_rejects_mismatched_shapes():
    x, params, config = conv_inputs(CONV_CASES[0], np.float32)
    with pytest.raises(ValueError):
        Bconv.Conv2dCython.forward(x, {"weight": params["weight"][:, :2], "bias": None}, config, False)
    with pytest.raises(ValueError):
        Bconv.Conv2dCython.forward(x, {"weight": params["weight"], "bias": params["bias"][:2]}, config, False)
    with pytest.raises(ValueError):
        Bconv.Conv2dCython.forward(x, {"weight": params["weight"].astype(np.float64), "bias": None}, config, False)
    y, ctx = Bconv.Conv2dCython.forward(x, params, config, True)
    with pytest.raises(ValueError):
        Bconv.Conv2dCython.backward(np.zeros((y.shape[0], y.shape[1], 1, 1), np.float32), ctx)


# ---------------------------------------------------------------------------------------------
# PyTorch as the peer reference
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: peer comparison tests need torch==2.13.0")
    return torch


ALL_CONV = [Bconv.Conv2dNumpy, Bconv.Conv2dCython]


def check_against_torch(torch, variant, torch_fn, x, params, config):
    """Forward and every gradient of ``variant`` against ``torch_fn`` under torch autograd (float32)."""
    y, ctx = variant.forward(x, params, config, True)
    dy = np.random.default_rng(12).standard_normal(y.shape).astype(x.dtype)
    dx, grads = variant.backward(dy, ctx)
    tx = torch.tensor(x, requires_grad=True)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items() if v is not None}
    ty = torch_fn(tx, tparams)
    ty.backward(torch.tensor(dy))
    assert rel_err(y, ty.detach().numpy()) <= 1e-4
    assert rel_err(dx, tx.grad.numpy()) <= 1e-4
    for k, t in tparams.items():
        assert rel_err(grads[k], t.grad.numpy()) <= 1e-4, k


@pytest.mark.parametrize("variant", ALL_CONV, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_torch(torch, variant, case):
    x, params, config = conv_inputs(case, np.float32)
    top, bottom, left, right = config["padding"]

    def fn(tx, p):
        tx = torch.nn.functional.pad(tx, (left, right, top, bottom))
        return torch.nn.functional.conv2d(tx, p["weight"], p.get("bias"), stride=config["stride"],
                                          dilation=config["dilation"], groups=config["groups"])

    check_against_torch(torch, variant, fn, x, params, config)


@pytest.mark.parametrize("variant", [Bpool.MaxPool2dNumpy, Bpool.MaxPool2dCython, Bpool.AvgPool2dNumpy, Bpool.AvgPool2dCython],
                         ids=["max-numpy", "max-cython", "avg-numpy", "avg-cython"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_pools_match_torch(torch, variant, case):
    x = distinct_values(case[0], np.random.default_rng(13), np.float32)
    config = pool_config(case)
    F = torch.nn.functional
    if "Max" in variant.__name__:
        fn = lambda tx, p: F.max_pool2d(tx, case[1], case[2], case[3], ceil_mode=case[4])  # noqa: E731
    else:
        fn = lambda tx, p: F.avg_pool2d(tx, case[1], case[2], case[3], ceil_mode=case[4],  # noqa: E731
                                        count_include_pad=case[5])
    check_against_torch(torch, variant, fn, x, {}, config)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("which", [0, 1], ids=VARIANT_IDS)
def test_activations_match_torch(torch, name, which):
    x = (np.random.default_rng(14).standard_normal((3, 4, 40, 40)) * 5).astype(np.float32)
    fn = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]
    check_against_torch(torch, ACTIVATIONS[name][which], lambda tx, p: fn(tx), x, {}, {})


@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_torch(torch, bias):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((8, 30)).astype(np.float32)
    params = {"weight": rng.standard_normal((10, 30)).astype(np.float32),
              "bias": rng.standard_normal(10).astype(np.float32) if bias else None}
    check_against_torch(torch, Bdense.DenseNumpy, lambda tx, p: torch.nn.functional.linear(tx, p["weight"], p.get("bias")),
                        x, params, {})
