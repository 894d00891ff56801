"""The model executor: checks once per input and parameter shapes, the BLAS thread limit once
per pass, and fusion of registered layer chains (bitwise for conv2d+relu, within rounding for
the batch-norm folding, never where the pre-activation is read elsewhere, open to plugins)."""
import numpy as np
import pytest
import threadpoolctl

import cnnkit as ck
from cnnkit._cpu import missing_cpu_features
from cnnkit._ext import ISA_FEATURES
from cnnkit import _threads
from cnnkit.builtin.conv import Conv2dCython
from cnnkit.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnnkit.layers.base import Layer
from cnnkit.plugins import PluginWarning, get_registry, hookimpl, reset_registry


@pytest.fixture(autouse=True)
def _fusion_default(monkeypatch):
    """Fusion at its default, and conv2d on its im2col variant (the one most of these tests are
    about; which variant automatic selection picks for small layers depends on the CPU)."""
    monkeypatch.delenv("CNNKIT_FUSION", raising=False)
    ck.set_fusion(None)
    with ck.use(conv2d="cython"):
        yield
    ck.set_fusion(None)


#: conv2d variants the conv2d+relu fusions stand in for: im2col and the direct loops (the
#: portable build; the instruction-set builds where this CPU has their features)
FUSED_CONVS = ["cython", "direct"] + [
    f"direct-{isa}" for isa in ISA_FEATURES if not missing_cpu_features(ISA_FEATURES[isa])]


def _conv_relu_fusion(conv):
    return "conv2d+relu" if conv == "cython" else f"conv2d[{conv}]+relu"


def _conv_relu_fusions(conv):
    """The chains a conv2d+relu may fuse into: the direct variants take a following 2x2 max
    pool along."""
    return {_conv_relu_fusion(conv)} | (set() if conv == "cython" else
                                        {f"conv2d[{conv}]+relu+maxpool2d"})


@pytest.fixture
def two_threads():
    with ck.num_threads(2):
        if ck.get_num_threads() < 2:
            pytest.skip("built without OpenMP: the kernels run one thread")
        yield


# ----------------------------------------------------------------------- checks once per shape
def test_a_wrong_input_after_a_good_one_is_refused():
    conv = Conv2D(3, 4, 3)
    good = np.zeros((2, 3, 8, 8), np.float32)
    conv.forward(good)
    conv.forward(good)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        conv.forward(np.zeros((2, 5, 8, 8), np.float32))
    with pytest.raises(TypeError, match="does not match the parameters' dtype"):
        conv.forward(good.astype(np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        conv.forward(good.astype(np.int32))
    with pytest.raises(ValueError, match="4-D"):
        conv.forward(good[0])
    with pytest.raises(ValueError, match="empty batch"):
        conv.forward(good[:0])
    with pytest.raises(TypeError, match="numpy.ndarray"):
        conv.forward(good.tolist())
    assert conv.forward(good).shape == (2, 4, 6, 6)


def test_checks_run_once_per_input_and_parameter_signature(monkeypatch):
    calls = []
    real = Layer._check_input
    monkeypatch.setattr(Layer, "_check_input", lambda self, x: calls.append(x.shape) or real(self, x))
    conv = Conv2D(1, 2, 3, padding=1)
    x = np.ones((2, 1, 5, 5), np.float32)
    for _ in range(3):
        conv.forward(x)
    assert calls == [x.shape]
    conv.forward(np.ones((3, 1, 5, 5), np.float32))  # another batch size: checked once more
    assert len(calls) == 2
    conv.params["weight"] = conv.params["weight"].copy()  # same shape and dtype: still known
    conv.forward(x)
    assert len(calls) == 2


@pytest.mark.parametrize("impl", ["cython", "numpy"])
def test_a_wrong_shaped_parameter_after_a_good_call_is_refused(impl):
    conv = Conv2D(1, 2, 3, padding=1, impl=impl)
    x = np.ones((2, 1, 6, 6), np.float32)
    conv.forward(x)
    conv.params["weight"] = np.zeros((2, 1, 5, 5), np.float32)
    for _ in range(2):  # refused every time, not only the first
        with pytest.raises((RuntimeError, ValueError), match="conv2d"):
            conv.forward(x)
    conv.params["weight"] = np.zeros((2, 1, 3, 3), np.float64)
    with pytest.raises(TypeError, match="parameters' dtype float64"):
        conv.forward(x)
    conv.params["weight"] = np.zeros((2, 1, 3, 3), np.float32)
    assert conv.forward(x).shape == (2, 2, 6, 6)


def test_pool_geometry_is_checked_once_per_shape_and_config(monkeypatch):
    """The compiled pooling wrapper's geometry check is cached per input shape and config
    (values compared), yet a bad config or input after a good call is still refused."""
    from cnnkit.builtin import pool as bpool

    calls = []
    real = bpool._checked_geometry.__wrapped__
    monkeypatch.setattr(bpool, "_checked_geometry",
                        bpool.checked_once(lambda x, c: calls.append(x.shape) or real(x, c)))
    config = {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0), "ceil_mode": False}
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    for _ in range(3):
        y, _ = bpool.MaxPool2dCython.forward(x, {}, config, False)
    assert calls == [x.shape]
    np.testing.assert_array_equal(y, x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))
    config["padding"] = (2, 2)  # the same dict changed in place: checked again, and refused
    for _ in range(2):
        with pytest.raises(ValueError, match="padding at most half the kernel"):
            bpool.MaxPool2dCython.forward(x, {}, config, False)
    config["padding"] = (0, 0)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        bpool.MaxPool2dCython.forward(x[:, :, :1], {}, config, False)
    assert bpool.AvgPool2dCython.forward(x, {}, config, False)[0].shape == (2, 3, 3, 3)


def test_dense_refuses_a_wrong_shaped_weight_after_a_good_call():
    dense = Dense(4, 3)
    x = np.ones((2, 4), np.float32)
    dense.forward(x)
    dense.params["weight"] = np.zeros((5, 3), np.float32)
    with pytest.raises((RuntimeError, ValueError)):
        dense.forward(x)


def test_the_conv_wrapper_check_is_cached_but_still_refuses_bad_arguments():
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    config = {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}
    assert Conv2dCython._check(x, w, None, config) is Conv2dCython._check(x, w, None, config)
    config["stride"] = (0, 1)  # the same dict, changed in place: checked again
    with pytest.raises(ValueError, match="invalid config"):
        Conv2dCython._check(x, w, None, config)
    config["stride"] = (1, 1)
    with pytest.raises(ValueError, match="does not fit input"):
        Conv2dCython._check(x, np.ones((4, 3, 3, 3), np.float32), None, config)


# ------------------------------------------------------------------------ the BLAS thread limit
@pytest.fixture
def limit_calls(monkeypatch):
    """Every BLAS-limit call made through cnnkit's threadpoolctl controller."""
    ctl = _threads.controller()
    calls = []
    real = type(ctl).limit

    def limit(self, *, limits=None, user_api=None):
        calls.append((limits, user_api))
        return real(self, limits=limits, user_api=user_api)

    monkeypatch.setattr(type(ctl), "limit", limit)
    return calls


def _blas_threads():
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


def test_blas_limit_is_set_once_per_pass(two_threads, limit_calls, monkeypatch):
    seen = []
    real = Conv2dCython.forward

    def forward(*args, **kwargs):  # what BLAS runs with while the kernel does
        seen.append(_blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(Conv2dCython, "forward", staticmethod(forward))
    model = ck.models.lenet5(rng=0, impl={"conv2d": "cython"})  # the BLAS-calling variant
    before = _blas_threads()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    y = model.forward(x, training=True)
    assert [c for c in limit_calls if c[1] == "blas"] == [(1, "blas")]
    model.backward(np.ones_like(y))
    assert [c for c in limit_calls if c[1] == "blas"] == [(1, "blas")] * 2
    assert seen and all(set(s) == {1} for s in seen)
    assert _blas_threads() == before  # restored after the pass


def test_a_lone_layer_still_limits_blas(two_threads, limit_calls):
    conv = Conv2D(1, 2, 3)
    x = np.ones((2, 1, 6, 6), np.float32)
    conv.backward(conv.forward(x))
    assert [c for c in limit_calls if c[1] == "blas"] == [(1, "blas")] * 2


def test_nested_passes_and_threads_share_one_limit(two_threads, limit_calls):
    import threading

    before = _blas_threads()
    with _threads.blas_pass():
        with _threads.blas_pass(), _threads.single_threaded_blas():
            assert set(_blas_threads()) == {1}
        errors = []

        def other():  # another thread holds the same limit; leaving must not lift it
            try:
                with _threads.single_threaded_blas():
                    assert set(_blas_threads()) == {1}
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert not errors and set(_blas_threads()) == {1}
    assert [c for c in limit_calls if c[1] == "blas"] == [(1, "blas")]
    assert _blas_threads() == before


def test_a_large_dense_product_inside_a_pass_gets_blas_threads_back(two_threads, limit_calls):
    with _threads.blas_pass():
        with _threads.dense_blas_threads(_threads.SMALL_PRODUCT_MACS):
            inner = _blas_threads()
        assert set(_blas_threads()) == {1}
    original = _threads._one_blas_thread.original_threads()
    assert original is None  # nothing held any more
    if max(_blas_threads()) > 1:
        assert inner == _blas_threads()


# ------------------------------------------------------------------------------------ fusion
def _lenet_parts(dtype):
    rng = np.random.default_rng(3)
    conv = Conv2D(1, 4, 3, padding=1, dtype=dtype, rng=rng, name="conv")
    # one output channel all zero: its pre-activation is exactly 0 where ReLU's rule at 0 counts
    conv.params["weight"][1] = 0
    conv.params["bias"][1] = 0
    return [conv, ReLU(name="relu"), MaxPool2D(2, name="pool"), Flatten(name="flat"),
            Dense(4 * 4 * 4, 3, dtype=dtype, rng=rng, name="fc")]


def _sequential(dtype):
    return ck.Sequential(_lenet_parts(dtype), input_shape=(1, 8, 8))


def _dag(dtype):
    """Two branches after a shared input; the conv+relu chain of each can fuse."""
    rng = np.random.default_rng(4)
    x = ck.Input((2, 6, 6))
    a = ReLU(name="ra")(Conv2D(2, 3, 3, padding=1, dtype=dtype, rng=rng, name="ca")(x))
    b = ReLU(name="rb")(Conv2D(2, 3, 3, padding=1, dtype=dtype, rng=rng, name="cb")(x))
    y = ck.layers.Add(name="add")([a, b])
    return ck.Model(x, Dense(3 * 36, 2, dtype=dtype, rng=rng, name="fc")(Flatten(name="f")(y)))


def _run(build, dtype, training, fused):
    ck.set_fusion(fused)
    model = build(dtype)
    model.train(training)
    shape = model.input_shape[1:]
    x = np.random.default_rng(1).standard_normal((3,) + shape).astype(dtype)
    plan = model.execution_plan(dtype)
    y = model.forward(x)
    out = {"y": y}
    if training:
        out["dx"] = model.backward(np.random.default_rng(2).standard_normal(y.shape).astype(dtype))
        out.update({p.name: p.grad for p in model.parameters()})
    return out, plan


def _bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def _fused_names(plan):
    return [tuple(n.name for n in s.nodes) for s in plan if s.fusion is not None]


@pytest.mark.parametrize("conv", FUSED_CONVS)
@pytest.mark.parametrize("build", [_sequential, _dag], ids=["sequential", "dag"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_conv_relu_is_bitwise_the_unfused_pair(build, training, dtype, conv):
    with ck.use(conv2d=conv):
        fused, plan = _run(build, dtype, training, True)
        plain, plain_plan = _run(build, dtype, training, False)
    assert _fused_names(plan)  # the fused run really fused
    assert all(s.fusion.name in _conv_relu_fusions(conv) for s in plan if s.fusion)
    assert not _fused_names(plain_plan)
    _bitwise_equal(fused, plain)


DIRECT_CONVS = [c for c in FUSED_CONVS if c != "cython"]


def _conv_relu_pool_model(dtype, bias, size, padding, seed, ties):
    rng = np.random.default_rng(seed)
    conv = Conv2D(3, 5, 3, padding=padding, bias=bias, dtype=dtype, rng=rng, name="conv")
    if ties:
        # channel 1: all weights equal, on an input of repeated values below: windows of
        # equal positive maxima (the first one takes the gradient) and of equal zeros
        conv.params["weight"][1] = 0.25
        if bias:
            conv.params["bias"][1] = 0
    parts = [conv, ReLU(name="relu"), MaxPool2D(2, name="pool"), Flatten(name="flat")]
    model = ck.Sequential(parts, input_shape=(3, size, size))
    return model


@pytest.mark.parametrize("conv", DIRECT_CONVS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["odd-bias", "even-nobias", "ties", "nan", "eval"])
def test_fused_conv_relu_maxpool_is_bitwise_the_unfused_chain(conv, dtype, case):
    """The three layers run one by one and as the direct convolution's fused chain give the
    same bits: output, input gradient, weight and bias gradients."""
    size, padding = {"odd-bias": (9, 0), "even-nobias": (10, 1)}.get(case, (8, 1))
    bias = case != "even-nobias"
    training = case != "eval"
    x = np.random.default_rng(1).standard_normal((5, 3, size, size)).astype(dtype)
    if case == "ties":
        x = np.round(x)  # many equal values, and whole windows <= 0
        x[:, :, ::2, :] = x[:, :, 1::2, :]  # rows repeated: ties inside each window
    if case == "nan":
        x[0, 1, 3, 4] = np.nan  # non-finite input: the slow path of the direct backward
        x[1, 0, 2, 2] = np.inf
    runs = []
    for fused in (True, False):
        ck.set_fusion(fused)
        try:
            model = _conv_relu_pool_model(dtype, bias, size, padding, 4, case == "ties")
            model.train(training)
            with ck.use(conv2d=conv):
                names = _fused_names(model.execution_plan(dtype))
                y = model.forward(x)
                out = {"y": y}
                if training:
                    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
                    out["dx"] = model.backward(dy)
                    out.update({p.name: p.grad for p in model.parameters()})
        finally:
            ck.set_fusion(None)
        assert names == ([("conv", "relu", "pool")] if fused else []), names
        runs.append(out)
    if case == "ties":
        assert (runs[0]["y"] == 0).any() and (runs[0]["y"] > 0).any()
    _bitwise_equal(*runs)


@pytest.mark.parametrize("pool", [MaxPool2D(2, padding=1), MaxPool2D(3, 2), MaxPool2D(2, 1),
                                  MaxPool2D(2, ceil_mode=True)],
                         ids=["padded", "3x3", "stride1", "ceil"])
def test_only_a_2x2_stride_2_unpadded_pool_is_fused_into_the_convolution(pool):
    model = ck.Sequential([Conv2D(1, 2, 3, rng=0, name="conv"), ReLU(name="relu"), pool],
                          input_shape=(1, 9, 9))
    with ck.use(conv2d="direct"):
        plan = model.execution_plan()
    assert all(s.fusion is None or s.fusion.name == "conv2d[direct]+relu" for s in plan)
    assert _fused_names(plan) == [("conv", "relu")]


def test_relu_gradient_at_exactly_zero_matches_through_the_fusion():
    conv = Conv2D(1, 1, 1, bias=False, name="c0")
    conv.params["weight"][...] = 1
    model = ck.Sequential([conv, ReLU(name="r0")], input_shape=(1, 1, 4))
    x = np.array([[[[0.0, -0.0, 1.0, -1.0]]]], np.float32)
    dy = np.ones((1, 1, 1, 4), np.float32)
    res = []
    for on in (True, False):
        ck.set_fusion(on)
        assert bool(_fused_names(model.execution_plan())) == on
        y = model.forward(x, training=True)
        res.append((y.tobytes(), model.backward(dy).tobytes(), conv.grads["weight"].tobytes()))
    assert res[0] == res[1]
    assert conv.grads["weight"][0, 0, 0, 0] == 1.0  # only x = 1 passes the ReLU


def test_a_pre_activation_read_elsewhere_is_not_fused():
    rng = np.random.default_rng(5)
    x = ck.Input((1, 6, 6))
    pre = Conv2D(1, 2, 3, rng=rng, name="conv")(x)
    act = ReLU(name="relu")(pre)
    as_output = ck.Model(x, [act, pre])
    assert not _fused_names(as_output.execution_plan())
    y = ck.Input((1, 6, 6))
    pre2 = Conv2D(1, 2, 3, rng=rng, name="conv2")(y)
    branch = ck.Model(y, ck.layers.Add(name="add")([ReLU(name="relu2")(pre2), pre2]))
    assert not _fused_names(branch.execution_plan())
    xs = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    out = branch.forward(xs, training=True)
    branch.backward(np.ones_like(out))  # still trains, unfused


def test_fusion_leaves_the_model_unchanged(tmp_path):
    model = _sequential(np.float32)
    names = [layer.name for layer in model.layers]
    keys = list(model.state_dict())
    assert _fused_names(model.execution_plan()) == [("conv", "relu")]
    model.forward(np.ones((2, 1, 8, 8), np.float32))
    assert [layer.name for layer in model.layers] == names and list(model.state_dict()) == keys
    model.save_weights(tmp_path / "w.npz")
    other = _sequential(np.float32)
    other.load_weights(tmp_path / "w.npz")
    x = np.ones((2, 1, 8, 8), np.float32)
    assert np.array_equal(other.forward(x, training=False), model.forward(x, training=False))


def test_the_switch_and_check_finite_turn_fusion_off(monkeypatch):
    model = _sequential(np.float32)
    assert _fused_names(model.execution_plan())
    monkeypatch.setenv("CNNKIT_FUSION", "0")
    assert not ck.fusion_enabled() and not _fused_names(model.execution_plan())
    ck.set_fusion(True)  # the explicit switch wins over the environment
    assert _fused_names(model.execution_plan())
    ck.set_fusion(None)
    assert not _fused_names(model.execution_plan())
    monkeypatch.delenv("CNNKIT_FUSION")
    model.check_finite = True  # every layer's output is checked, so none is hidden
    assert not _fused_names(model.execution_plan())
    with pytest.raises(TypeError):
        ck.set_fusion("yes")


def test_fusion_only_stands_in_for_the_variants_it_declares():
    model = _sequential(np.float32)
    with ck.use(relu="numpy"):
        assert not _fused_names(model.execution_plan())
    assert _fused_names(model.execution_plan())


def _conv_bn(relu, track=True):
    rng = np.random.default_rng(6)
    conv = Conv2D(2, 3, 3, padding=1, rng=rng, name="conv")
    bn = BatchNorm2D(3, track_running_stats=track, name="bn")
    if track:
        bn.buffers["running_mean"][...] = rng.standard_normal(3)
        bn.buffers["running_var"][...] = rng.random(3) + 0.5
    bn.params["weight"][...] = rng.standard_normal(3)
    bn.params["bias"][...] = rng.standard_normal(3)
    layers = [conv, bn] + ([ReLU(name="relu")] if relu else [])
    return ck.Sequential(layers, input_shape=(2, 7, 7))


@pytest.mark.parametrize("conv", FUSED_CONVS)
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_is_folded_in_inference_within_rounding(relu, conv):
    x = np.random.default_rng(7).standard_normal((4, 2, 7, 7)).astype(np.float32)
    model = _conv_bn(relu).eval()
    with ck.use(conv2d=conv):
        plan = model.execution_plan()
        name = "conv2d" if conv == "cython" else f"conv2d[{conv}]"
        assert [s.fusion.name for s in plan if s.fusion] == [
            f"{name}+batchnorm2d+relu" if relu else f"{name}+batchnorm2d"]
        folded = model.forward(x)
        ck.set_fusion(False)
        plain = model.forward(x)
    np.testing.assert_allclose(folded, plain, rtol=1e-5, atol=1e-5)
    # and the float64 reference of the same maths
    m64 = _conv_bn(relu).astype(np.float64).eval()
    ref = m64.forward(x.astype(np.float64))
    np.testing.assert_allclose(folded, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_is_not_folded_in_training_or_with_batch_statistics():
    model = _conv_bn(False)
    assert not _fused_names(model.execution_plan(training=True))
    model.forward(np.ones((2, 2, 7, 7), np.float32), training=True)  # updates running stats
    assert _fused_names(model.execution_plan(training=False))
    assert not _fused_names(_conv_bn(False, track=False).execution_plan(training=False))


@pytest.fixture
def fresh_registry():
    reset_registry()
    yield get_registry()
    reset_registry()


def test_a_plugin_registered_fusion_is_used(fresh_registry):
    calls = []

    class DenseRelu:
        @staticmethod
        def forward(x, layers, configs, need_backward):
            calls.append("forward")
            pre = x @ layers[0].params["weight"].T + layers[0].params["bias"]  # (out, in)
            y = np.maximum(pre, 0)
            return y, ((x, layers[0].params["weight"], y) if need_backward else None)

        @staticmethod
        def backward(dy, ctx, need_input_grad=True):
            calls.append("backward")
            x, w, y = ctx
            g = np.where(y > 0, dy, 0).astype(dy.dtype)
            return g @ w, [{"weight": g.T @ x, "bias": g.sum(axis=0)}, {}]

    class Plugin:
        @staticmethod
        @hookimpl
        def cnnkit_register_fusions(register):
            register("dense+relu", ("dense", "relu"), DenseRelu, modes=("training", "inference"),
                     description="test")

    assert fresh_registry.register_plugin(Plugin, "test-fusion")
    assert "dense+relu" in fresh_registry.plugins["test-fusion"].registered["fusion"]
    rng = np.random.default_rng(8)
    model = ck.Sequential([Dense(5, 4, rng=rng, name="d"), ReLU(name="r"),
                           Dense(4, 2, rng=rng, name="o")], input_shape=(5,))
    assert _fused_names(model.execution_plan()) == [("d", "r")]
    x = rng.standard_normal((3, 5)).astype(np.float32)
    y = model.forward(x, training=True)
    dx = model.backward(np.ones_like(y))
    assert calls == ["forward", "backward"]
    gw = model.layers[0].grads["weight"]
    ck.set_fusion(False)
    np.testing.assert_allclose(model.forward(x, training=True), y, rtol=1e-6)
    np.testing.assert_allclose(model.backward(np.ones_like(y)), dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.layers[0].grads["weight"], gw, rtol=1e-5, atol=1e-6)
    assert calls == ["forward", "backward"]


def test_bad_fusion_registrations_are_refused(fresh_registry):
    class Impl:
        forward = backward = staticmethod(lambda *a, **k: None)

    def plugin(args, kwargs):
        class Plugin:
            @staticmethod
            @hookimpl
            def cnnkit_register_fusions(register):
                register(*args, **kwargs)

        return Plugin

    cases = [(("x", ("conv2d",), Impl), {}, "pattern must be"),
             (("x", ("conv2d", "relu"), Impl), {"variants": ("cython",)}, "variants must"),
             (("x", ("conv2d", "relu"), Impl), {"modes": ("sometimes",)}, "modes must"),
             (("x", ("conv2d", "relu"), object()), {}, "no callable forward"),
             (("conv2d+relu", ("conv2d", "relu"), Impl), {}, "registered twice")]
    for i, (args, kwargs, message) in enumerate(cases):
        with pytest.warns(PluginWarning, match=message):
            assert not fresh_registry.register_plugin(plugin(args, kwargs), f"bad{i}",
                                                      strict=False)
    assert fresh_registry.fusions["conv2d+relu"].plugin == "cnnkit.builtin.fusions"


# ------------------------------------------------------------------ the OpenMP wait policy
def test_openmp_spin_is_set_only_while_the_kernels_load(monkeypatch):
    from cnnkit import _runtime

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CNNKIT_OMP_TUNING"):
        monkeypatch.delenv(var, raising=False)
    with _runtime.openmp_wait_policy():
        import os

        assert os.environ["GOMP_SPINCOUNT"] == _runtime.SPIN_COUNT
    assert "GOMP_SPINCOUNT" not in os.environ  # not inherited by children or other runtimes


@pytest.mark.parametrize("var, value", [("OMP_WAIT_POLICY", "active"),
                                        ("GOMP_SPINCOUNT", "infinite"),
                                        ("CNNKIT_OMP_TUNING", "0")])
def test_the_users_openmp_choice_is_kept(monkeypatch, var, value):
    import os

    from cnnkit import _runtime

    for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CNNKIT_OMP_TUNING"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, value)
    before = dict(os.environ)
    with _runtime.openmp_wait_policy():
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_importing_cnnkit_leaves_no_openmp_setting_behind(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CNNKIT_OMP_TUNING")}
    root = str(Path(__file__).parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", "import os, cnnkit; "
                          "print(cnnkit.__file__); print(os.environ.get('GOMP_SPINCOUNT'))"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    path, value = out.stdout.split()
    assert Path(path).resolve().is_relative_to(Path(root).resolve()) and value == "None"
