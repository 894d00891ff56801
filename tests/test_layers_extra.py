"""The training-toolkit layers: LeakyReLU, ELU, GELU, ScaledTanh, Softmax, LogSoftmax, Dropout,
BatchNorm1D/2D, GlobalAvgPool2D, Subsampling, ZeroPad2D, ConvTranspose2D, Concat.

Every variant passes a float64 finite-difference check of every input and parameter
coordinate; every layer with a PyTorch counterpart matches it in float32 (forward and
backward, relative error <= 1e-4); configs round-trip; bad hyper-parameters are named.
"""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.plugins import get_registry
from gradcheck import assert_close, numeric_grad

RNG = np.random.default_rng(20240)


def variants_of(layer_type):
    """The variants that can run here (not an instruction-set build this CPU lacks the
    features for: tests/test_isa_variants.py checks those are refused)."""
    return sorted(name for name, v in get_registry().variants[layer_type].items()
                  if v.unavailable() is None)


def away_from_zero(shape, rng=RNG):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 0.05] = 0.5  # keep finite differences off the kinks at 0
    return x


# ------------------------------------------------------------------------------ gradients
def check_variant_gradients(layer, x):
    """Finite differences of sum(y * w) w.r.t. x and every parameter, for every registered
    variant, with the layer's configuration (Dropout's mask and BatchNorm's batch statistics
    are part of the variant's function)."""
    names = variants_of(layer.layer_type)
    assert names
    for name in names:
        impl = get_registry().variants[layer.layer_type][name].impl
        params = {k: (None if p is None else p.astype(np.float64).copy())
                  for k, p in layer.params.items()}
        config = dict(layer.config)
        y, ctx = impl.forward(x, params, config, True)
        w = RNG.standard_normal(y.shape)
        dx, grads = impl.backward(w, ctx)

        def f():
            return float(np.sum(impl.forward(x, params, config, False)[0] * w))

        assert_close(dx, numeric_grad(f, x), what=f"{layer.layer_type}[{name}] dx")
        for key, p in params.items():
            if p is not None:
                assert_close(grads[key], numeric_grad(f, p),
                             what=f"{layer.layer_type}[{name}] d{key}")
            else:
                assert key not in grads


GRADIENT_CASES = [
    (lambda: L.LeakyReLU(0.1), (3, 2, 3, 4)),
    (lambda: L.LeakyReLU(-0.3), (4, 5)),
    (lambda: L.ELU(), (3, 2, 3, 4)),
    (lambda: L.ELU(0.4), (4, 5)),
    (lambda: L.GELU(), (3, 2, 3, 4)),
    (lambda: L.GELU("tanh"), (4, 5)),
    (lambda: L.ScaledTanh(), (3, 2, 3, 4)),
    (lambda: L.Softmax(), (3, 4, 2, 3)),
    (lambda: L.Softmax(axis=-1), (3, 4, 5)),
    (lambda: L.LogSoftmax(), (4, 6)),
    (lambda: L.LogSoftmax(axis=2), (2, 3, 4, 2)),
    (lambda: L.Dropout(0.3, rng=1), (3, 2, 3, 4)),
    (lambda: L.BatchNorm2D(3, dtype=np.float64), (4, 3, 2, 3)),
    (lambda: L.BatchNorm2D(2, affine=False, dtype=np.float64), (3, 2, 3, 2)),
    (lambda: L.BatchNorm1D(4, dtype=np.float64), (5, 4)),
    (lambda: L.BatchNorm1D(2, eps=1e-3, dtype=np.float64), (3, 2, 4)),
    (lambda: L.GlobalAvgPool2D(), (2, 3, 4, 5)),
    (lambda: L.Subsampling(3, dtype=np.float64, rng=0), (2, 3, 4, 5)),
    (lambda: L.Subsampling(2, (3, 2), mode="average", bias=False, dtype=np.float64), (2, 2, 7, 5)),
    (lambda: L.ZeroPad2D((1, 0, 2, 3)), (2, 2, 3, 3)),
    (lambda: L.ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                               dtype=np.float64, rng=0), (2, 4, 3, 4)),
    (lambda: L.ConvTranspose2D(3, 2, (2, 3), stride=(1, 2), dilation=(2, 1), bias=False,
                               dtype=np.float64, rng=0), (1, 3, 3, 3)),
]


@pytest.mark.parametrize("make,shape", GRADIENT_CASES,
                         ids=[f"{make().layer_type}-{i}" for i, (make, _) in
                              enumerate(GRADIENT_CASES)])
def test_float64_finite_difference_gradients(make, shape):
    layer = make()
    params = {k: (None if p is None else RNG.uniform(-1.5, 1.5, p.shape))
              for k, p in layer.params.items()}
    layer.params.update(params)
    check_variant_gradients(layer, away_from_zero(shape))


def test_concat_gradient_routes_slices_back():
    cat = L.Concat()
    a, b, c = (RNG.standard_normal((2, k, 3, 3)) for k in (1, 2, 3))
    y = cat.forward([a, b, c])
    assert y.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(y[:, 1:3], b)
    dy = RNG.standard_normal(y.shape)
    da, db, dc = cat.backward(dy)
    np.testing.assert_array_equal(db, dy[:, 1:3])
    np.testing.assert_array_equal(dc, dy[:, 3:])
    assert da.flags.c_contiguous and dc.shape == c.shape
    y = L.Concat(axis=-1).forward([a, a[..., :2]])
    assert y.shape == (2, 1, 3, 5)


# ------------------------------------------------------------------------------ against PyTorch
def rel_err(got, want):
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)),
                                                                          1e-30))


def assert_torch(got, want, what, tol=1e-4):
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def torch_pair(torch, layer, fn, x, *, params=()):
    """Forward and backward of a cnnkit layer and of ``fn`` on the same float32 data."""
    tx = torch.tensor(x, requires_grad=True)
    tparams = [torch.tensor(layer.params[k], requires_grad=True) for k in params]
    ty = fn(tx, *tparams)
    dy = RNG.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(dy))
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    return (y, dx, layer.grads), (ty, tx.grad, {k: p.grad for k, p in zip(params, tparams)})


ACTIVATIONS = [
    ("leaky_relu", lambda: L.LeakyReLU(0.2), lambda F, t: F.leaky_relu(t, 0.2)),
    ("elu", lambda: L.ELU(0.7), lambda F, t: F.elu(t, 0.7)),
    ("gelu", lambda: L.GELU(), lambda F, t: F.gelu(t)),
    ("gelu_tanh", lambda: L.GELU("tanh"), lambda F, t: F.gelu(t, approximate="tanh")),
    ("softmax", lambda: L.Softmax(), lambda F, t: F.softmax(t, dim=1)),
    ("softmax_last", lambda: L.Softmax(-1), lambda F, t: F.softmax(t, dim=-1)),
    ("log_softmax", lambda: L.LogSoftmax(), lambda F, t: F.log_softmax(t, dim=1)),
    ("scaled_tanh", lambda: L.ScaledTanh(), lambda F, t: 1.7159 * F.tanh(t * (2.0 / 3.0))),
]


@pytest.mark.parametrize("impl", ["numpy", "cython"])
@pytest.mark.parametrize("name,make,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activations_match_torch(name, make, fn, impl):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    F = torch.nn.functional
    x = (3 * RNG.standard_normal((4, 5, 3, 2))).astype(np.float32)
    layer = make()
    layer.impl = impl
    (y, dx, _), (ty, tdx, _) = torch_pair(torch, layer, lambda t: fn(F, t), x)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert_torch(y, ty, f"{name}[{impl}] forward")
    assert_torch(dx, tdx, f"{name}[{impl}] backward")


KINKED = [
    ("relu", lambda: L.ReLU(), lambda F, t: F.relu(t)),
    ("leaky_relu", lambda: L.LeakyReLU(0.2), lambda F, t: F.leaky_relu(t, 0.2)),
    ("elu", lambda: L.ELU(0.7), lambda F, t: F.elu(t, 0.7)),
]


@pytest.mark.parametrize("impl", ["numpy", "cython"])
@pytest.mark.parametrize("name,make,fn", KINKED, ids=[a[0] for a in KINKED])
def test_kinked_activations_gradient_at_zero_matches_torch(name, make, fn, impl):
    # Random inputs never hit the kink exactly; PyTorch's one-sided choice there (x > 0 is the
    # positive branch, so 0 and -0 take the negative side's slope) is a convention that a
    # `>=` slip silently changes, and ReLU inputs of exactly 0 are common (after another ReLU).
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    F = torch.nn.functional
    x = np.array([[0.0, -0.0, 1.5, -1.5, 0.0, 2.0]], dtype=np.float32).repeat(3, axis=0)
    layer = make()
    layer.impl = impl
    (y, dx, _), (ty, tdx, _) = torch_pair(torch, layer, lambda t: fn(F, t), x)
    assert_torch(y, ty, f"{name}[{impl}] forward at 0")
    assert_torch(dx, tdx, f"{name}[{impl}] backward at 0")


@pytest.mark.parametrize("impl", ["numpy", "cython"])
@pytest.mark.parametrize("dims,momentum,affine", [(2, 0.1, True), (1, 0.3, False), (1, None, True)])
def test_batchnorm_matches_torch_train_and_eval(impl, dims, momentum, affine):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    c = 3
    shape = (4, c, 3, 5) if dims == 2 else (6, c) if affine else (4, c, 5)
    ours = (L.BatchNorm2D if dims == 2 else L.BatchNorm1D)(c, momentum=momentum, affine=affine,
                                                          impl=impl)
    theirs = (torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm1d)(
        c, momentum=momentum, affine=affine)
    if affine:
        ours.params["weight"] = RNG.uniform(0.5, 1.5, c).astype(np.float32)
        ours.params["bias"] = RNG.uniform(-1, 1, c).astype(np.float32)
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(ours.params["weight"]))
            theirs.bias.copy_(torch.tensor(ours.params["bias"]))
    for step in range(4):
        x = (RNG.standard_normal(shape) * (1 + step) + 2.0 * step).astype(np.float32)
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        dy = RNG.standard_normal(shape).astype(np.float32)
        ty.backward(torch.tensor(dy))
        y = ours.forward(x, training=True)
        dx = ours.backward(dy)
        assert_torch(y, ty, f"step {step} y")
        assert_torch(dx, tx.grad, f"step {step} dx")
        if affine:
            assert_torch(ours.grads["weight"], theirs.weight.grad, "dweight")
            assert_torch(ours.grads["bias"], theirs.bias.grad, "dbias")
            theirs.weight.grad = theirs.bias.grad = None
        else:
            assert ours.grads == {}
    assert_torch(ours.buffers["running_mean"], theirs.running_mean, "running_mean")
    assert_torch(ours.buffers["running_var"], theirs.running_var, "running_var")
    assert int(ours.buffers["num_batches_tracked"]) == int(theirs.num_batches_tracked) == 4
    ours.eval()
    theirs.eval()
    x = (RNG.standard_normal(shape) * 3 + 1).astype(np.float32)
    y = ours.forward(x)
    assert y.dtype == np.float32 and ours._ctx is None
    assert_torch(y, theirs(torch.tensor(x)), "eval forward")


def test_batchnorm_running_stats_live_in_buffers_and_state_dict():
    def build():
        return ck.Sequential([L.Conv2D(1, 2, 3, rng=0, name="conv"), L.BatchNorm2D(2, name="bn"),
                              L.ReLU(name="relu"), L.Flatten(name="flat"),
                              L.Dense(2 * 4 * 4, 3, rng=0, name="dense")], input_shape=(1, 6, 6))

    model = build()
    x = RNG.standard_normal((5, 1, 6, 6)).astype(np.float32)
    model.forward(x, training=True)
    state = model.state_dict()
    # a Sequential keys by position, as torch.nn.Sequential: the BatchNorm is entry 1
    assert {"1.weight", "1.bias", "1.running_mean", "1.running_var",
            "1.num_batches_tracked"} <= set(state)
    assert not np.allclose(state["1.running_mean"], 0)
    before = model.predict(x)
    fresh = build()
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.predict(x), before)
    bn = model.get_layer("bn")
    with pytest.raises(ValueError, match=r"bn \(BatchNorm2D\): expected more than 1 value"):
        bn.forward(np.ones((1, 2, 1, 1), np.float32), training=True)
    bn.astype(np.float64)
    assert bn.buffers["running_var"].dtype == np.float64


def test_batchnorm_without_running_stats_uses_batch_statistics_in_eval():
    bn = L.BatchNorm1D(3, track_running_stats=False).eval()
    x = RNG.standard_normal((8, 3)).astype(np.float32) * 5 + 2
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    assert bn.buffers == {}


@pytest.mark.parametrize("impl", ["numpy", "cython"])
def test_global_avg_pool_matches_adaptive_avg_pool(impl):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    x = RNG.standard_normal((3, 4, 5, 7)).astype(np.float32)
    layer = L.GlobalAvgPool2D(impl=impl)
    (y, dx, _), (ty, tdx, _) = torch_pair(
        torch, layer, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1), x)
    assert y.shape == (3, 4)
    assert_torch(y, ty, "forward")
    assert_torch(dx, tdx, "backward")


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=3, padding=2, output_padding=2, bias=False),
    dict(stride=(2, 1), padding=(0, 1), groups=2),
    dict(dilation=2, padding=1),
    dict(stride=2, dilation=3, output_padding=2),          # output_padding >= stride, < dilation
    dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2)),
])
@pytest.mark.parametrize("impl", ["numpy", "cython"])
def test_conv_transpose2d_matches_torch(kwargs, impl):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    layer = L.ConvTranspose2D(4, 6, (3, 2), impl=impl, rng=0, **kwargs)
    assert layer.params["weight"].shape == (4, 3 if "groups" in kwargs else 6, 3, 2)
    if layer.params["bias"] is not None:
        layer.params["bias"] = RNG.standard_normal(6).astype(np.float32)
    keys = ("weight", "bias") if layer.params["bias"] is not None else ("weight",)
    x = RNG.standard_normal((3, 4, 5, 4)).astype(np.float32)
    tkw = {k: v for k, v in kwargs.items() if k != "bias"}
    (y, dx, grads), (ty, tdx, tgrads) = torch_pair(
        torch, layer, lambda t, w, b=None: torch.nn.functional.conv_transpose2d(t, w, b, **tkw),
        x, params=keys)
    assert y.shape == tuple(ty.shape) == layer.output_shape((3, 4, 5, 4))
    assert_torch(y, ty, "forward")
    assert_torch(dx, tdx, "dx")
    for k in keys:
        assert_torch(grads[k], tgrads[k], f"d{k}")


def test_conv_transpose2d_cython_bands_and_input_grad_skip(monkeypatch):
    import cnnkit.builtin.conv as cv

    x = RNG.standard_normal((2, 3, 6, 5)).astype(np.float64)
    ref = L.ConvTranspose2D(3, 4, 3, stride=2, dtype=np.float64, rng=0, impl="numpy")
    want = ref.forward(x)
    monkeypatch.setattr(cv, "COL_WORKSPACE_BYTES", 512)  # forces bands of one input row
    layer = L.ConvTranspose2D(3, 4, 3, stride=2, dtype=np.float64, rng=0, impl="cython")
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12, atol=1e-12)
    assert layer.backward(np.ones_like(want), need_input_grad=False) is None
    assert layer.grads["weight"].shape == (3, 4, 3, 3)


def test_zero_pad_matches_torch_pad():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    for padding, tpad in [(2, (2, 2, 2, 2)), ((1, 3), (3, 3, 1, 1)), ((0, 1, 2, 3), (0, 1, 2, 3))]:
        layer = L.ZeroPad2D(padding)
        (y, dx, _), (ty, tdx, _) = torch_pair(torch, layer,
                                              lambda t: torch.nn.functional.pad(t, tpad), x)
        assert_torch(y, ty, f"pad {padding}")
        assert_torch(dx, tdx, f"pad {padding} backward")


def test_concat_matches_torch_cat():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    a, b = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 5, 4))
    np.testing.assert_array_equal(L.Concat().forward([a, b]),
                                  torch.cat([torch.tensor(a), torch.tensor(b)], 1).numpy())


@pytest.mark.parametrize("impl", ["numpy", "cython"])
@pytest.mark.parametrize("mode", ["sum", "average"])
def test_subsampling_is_scaled_average_pooling(impl, mode):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    layer = L.Subsampling(3, 2, mode=mode, impl=impl)
    assert layer.params["weight"].tolist() == [1.0] * 3 and layer.params["bias"].tolist() == [0] * 3
    layer.params["weight"] = RNG.standard_normal(3).astype(np.float32)
    layer.params["bias"] = RNG.standard_normal(3).astype(np.float32)
    factor = 4.0 if mode == "sum" else 1.0
    x = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)   # odd height: last row dropped

    def fn(t, w, b):
        pooled = torch.nn.functional.avg_pool2d(t, 2) * factor
        return pooled * w[None, :, None, None] + b[None, :, None, None]

    (y, dx, grads), (ty, tdx, tgrads) = torch_pair(torch, layer, fn, x, params=("weight", "bias"))
    assert y.shape == (2, 3, 3, 3)
    assert_torch(y, ty, "forward")
    assert_torch(dx, tdx, "dx")
    assert_torch(grads["weight"], tgrads["weight"], "dweight")
    assert_torch(grads["bias"], tgrads["bias"], "dbias")


@pytest.mark.parametrize("cls,tfn", [("MaxPool2D", "max_pool2d"), ("AvgPool2D", "avg_pool2d")])
@pytest.mark.parametrize("impl", ["numpy", "cython"])
def test_pooling_ceil_mode_end_to_end_against_torch(cls, tfn, impl):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    x = RNG.permutation(2 * 2 * 7 * 8).reshape(2, 2, 7, 8).astype(np.float32) / 7.0
    for kw in [dict(kernel_size=2, stride=2), dict(kernel_size=3, stride=2, padding=1),
               dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1))]:
        layer = getattr(L, cls)(ceil_mode=True, impl=impl, **kw)
        (y, dx, _), (ty, tdx, _) = torch_pair(
            torch, layer, lambda t: getattr(torch.nn.functional, tfn)(t, ceil_mode=True, **kw), x)
        assert y.shape == tuple(ty.shape), kw
        assert_torch(y, ty, f"{cls} {kw}")
        assert_torch(dx, tdx, f"{cls} {kw} backward")
    model = ck.Sequential([L.MaxPool2D(2, ceil_mode=True)], input_shape=(2, 7, 8))
    assert model.output_shape == (None, 2, 4, 4)


# ------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("impl", ["numpy", "cython"])
def test_dropout_training_inference_and_reproducibility(impl):
    x = RNG.standard_normal((64, 32, 4)).astype(np.float32)
    drop = L.Dropout(0.25, rng=7, impl=impl)
    assert drop.forward(x, training=False) is x                       # inference: identity
    y1 = drop.forward(x, training=True)
    kept = y1 != 0
    np.testing.assert_allclose(y1[kept], x[kept] / 0.75, rtol=1e-6)   # inverted scaling
    assert abs(kept.mean() - 0.75) < 0.01
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(drop.backward(dy), np.where(kept, dy / 0.75, 0), rtol=1e-6)
    y2 = drop.forward(x, training=True)
    assert not np.array_equal(y1, y2)                                 # a fresh mask per call
    again = L.Dropout(0.25, rng=7, impl=impl)
    np.testing.assert_array_equal(again.forward(x, training=True), y1)   # seeded: same masks
    np.testing.assert_array_equal(again.forward(x, training=True), y2)
    ck.seed(3)
    a = L.Dropout(0.5, impl=impl).forward(x, training=True)
    ck.seed(3)
    np.testing.assert_array_equal(L.Dropout(0.5, impl=impl).forward(x, training=True), a)
    np.testing.assert_array_equal(L.Dropout(0.0, impl=impl).forward(x, training=True), x)


def test_dropout_variants_draw_identical_masks():
    x = RNG.standard_normal((3, 1000)).astype(np.float64)
    ys = [L.Dropout(0.4, rng=11, impl=impl).forward(x, training=True)
          for impl in ("numpy", "cython")]
    np.testing.assert_array_equal(ys[0], ys[1])


def test_dropout_statistics_match_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    torch.manual_seed(0)
    x = np.ones((200, 500), np.float32)
    for p in (0.1, 0.5, 0.8):
        ours = L.Dropout(p, rng=0).forward(x, training=True)
        theirs = torch.nn.functional.dropout(torch.tensor(x), p, training=True).numpy()
        for y in (ours, theirs):
            assert set(np.unique(y)) <= {0.0, np.float32(1 / (1 - p))}
        # keep fractions agree within 5 standard errors of a Bernoulli mean over 1e5 draws
        se = np.sqrt(p * (1 - p) / x.size)
        assert abs((ours != 0).mean() - (theirs != 0).mean()) < 5 * np.sqrt(2) * se
        assert abs(ours.mean() - 1.0) < 5 * se / (1 - p) * 2
        # no structure: neighbouring elements are independent
        k = (ours != 0).astype(float).ravel()
        assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 0.02


# ------------------------------------------------------------------------------ models
def test_lenet1998_style_model_trains_a_step():
    model = ck.Sequential([
        L.Conv2D(1, 6, 5, padding=2, rng=0), L.ScaledTanh(), L.Subsampling(6),
        L.Conv2D(6, 16, 5, rng=0), L.ScaledTanh(), L.Subsampling(16, mode="average"),
        L.Flatten(), L.Dense(400, 84, rng=0), L.ScaledTanh(), L.Dense(84, 10, rng=0),
    ], input_shape=(1, 28, 28))
    x = RNG.standard_normal((4, 1, 28, 28)).astype(np.float32)
    labels = np.array([1, 2, 3, 4])
    loss = ck.losses.SoftmaxCrossEntropy()
    opt = ck.optim.SGD(model, lr=0.05)
    first = loss.forward(model.forward(x), labels)
    for _ in range(5):
        loss.forward(model.forward(x), labels)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
    assert loss.forward(model.forward(x), labels) < first
    assert "Subsampling" in model.summary()


def test_graph_with_concat_batchnorm_dropout_and_transposed_conv():
    inp = ck.Input((2, 6, 6))
    a = L.ReLU()(L.BatchNorm2D(4)(L.Conv2D(2, 4, 3, padding=1, rng=0)(inp)))
    b = L.ELU()(L.Conv2D(2, 3, 1, rng=0)(inp))
    h = L.Concat()([a, b])
    up = L.ConvTranspose2D(7, 2, 2, stride=2, rng=0)(L.MaxPool2D(2)(h))
    out = L.Dense(7 + 2, 3, rng=0)(L.Dropout(0.2, rng=0)(L.Concat()(
        [L.GlobalAvgPool2D()(h), L.GlobalAvgPool2D()(up)])))
    model = ck.Model(inp, out)
    assert model.output_shape == (None, 3)
    x = RNG.standard_normal((3, 2, 6, 6)).astype(np.float32)
    y = model.forward(x, training=True)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape
    model.eval()
    np.testing.assert_array_equal(model.predict(x), model.predict(x))   # no dropout in eval
    with pytest.raises(ValueError, match=r"Concat\): inputs must match on every axis but 1, "
                                         r"got \(N, 4, 6, 6\) and \(N, 3, 3, 3\)"):
        L.Concat()([a, L.MaxPool2D(2)(b)])


# ------------------------------------------------------------------------------ configs, errors
CONFIG_LAYERS = [
    L.LeakyReLU(0.3), L.ELU(0.5), L.GELU("tanh"), L.ScaledTanh(1.5, 0.5), L.Softmax(-1),
    L.LogSoftmax(2), L.Dropout(0.3), L.BatchNorm2D(4, eps=1e-3, momentum=None, affine=False),
    L.BatchNorm1D(3, track_running_stats=False), L.GlobalAvgPool2D(),
    L.Subsampling(5, (2, 3), mode="average", bias=False), L.ZeroPad2D((1, 2)),
    L.ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False,
                      dilation=(1, 2)),
    L.Concat(axis=2),
]


@pytest.mark.parametrize("layer", CONFIG_LAYERS, ids=[type(la).__name__ for la in CONFIG_LAYERS])
def test_get_config_rebuilds_an_equivalent_layer(layer):
    clone = type(layer)(**layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.layer_type == layer.layer_type
    assert set(clone.params) == set(layer.params)
    for k, p in layer.params.items():
        assert (p is None) == (clone.params[k] is None)
        if p is not None:
            assert p.shape == clone.params[k].shape
    assert {k: v for k, v in clone.config.items() if k != "seed"} == \
        {k: v for k, v in layer.config.items() if k != "seed"}
    assert clone.features() == layer.features()
    assert repr(layer).startswith(type(layer).__name__ + "(")
    assert get_registry().layer_class(layer.layer_type) is type(layer)


@pytest.mark.parametrize("make,match", [
    (lambda: L.Dropout(-0.1), r"dropout_\d+ \(Dropout\): p must be >= 0.0 and < 1.0"),
    (lambda: L.Dropout(1.0), r"\(Dropout\): p must be >= 0.0 and < 1.0, got 1.0"),
    (lambda: L.Dropout(float("nan")), r"\(Dropout\): p must be"),
    (lambda: L.BatchNorm2D(3, eps=0), r"\(BatchNorm2D\): eps must be > 0.0"),
    (lambda: L.BatchNorm1D(3, momentum=1.5), r"\(BatchNorm1D\): momentum must be"),
    (lambda: L.BatchNorm2D(0), r"\(BatchNorm2D\): num_features must be a positive int"),
    (lambda: L.GELU("fast"), r"\(GELU\): approximate must be 'none' or 'tanh'"),
    (lambda: L.ZeroPad2D(-1), r"\(ZeroPad2D\): padding must be >= 0"),
    (lambda: L.Subsampling(3, mode="max"), r"\(Subsampling\): mode must be 'sum' or 'average'"),
    (lambda: L.ConvTranspose2D(2, 2, 3, stride=2, output_padding=2),
     r"\(ConvTranspose2D\): output_padding \(2, 2\) must be smaller than stride"),
    (lambda: L.ConvTranspose2D(3, 2, 3, groups=2), r"\(ConvTranspose2D\): .*divisible by groups"),
    (lambda: L.LeakyReLU(float("inf")), r"\(LeakyReLU\): negative_slope must be finite"),
])
def test_bad_hyper_parameters_name_the_layer(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_inputs_name_the_layer():
    with pytest.raises(ValueError, match=r"bn1 \(BatchNorm2D\): expected 3 channels "
                                         r"\(num_features\), got shape \(2, 4, 5, 5\)"):
        L.BatchNorm2D(3, name="bn1").forward(np.ones((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(BatchNorm1D\): expected a 2-D \(N, C\) or 3-D"):
        L.BatchNorm1D(3).forward(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(Softmax\): axis 0 is the batch axis"):
        L.Softmax(axis=0).forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(LogSoftmax\): axis 3 is out of range"):
        L.LogSoftmax(axis=3).forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(Subsampling\): expected 3 channels"):
        L.Subsampling(3).forward(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(ConvTranspose2D\): padding \(3, 3\) leaves no output"):
        L.ConvTranspose2D(1, 1, 2, padding=3).forward(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(Concat\): inputs must match on every axis but 1, got "
                                         r"\(2, 3, 4\) and \(2, 3, 5\)"):
        L.Concat().forward([np.ones((2, 3, 4)), np.ones((2, 3, 5))])
    with pytest.raises(ValueError, match=r"\(Concat\): inputs have different batch sizes"):
        L.Concat().forward([np.ones((2, 3)), np.ones((3, 3))])
    with pytest.raises(TypeError, match=r"\(Concat\): inputs have different dtypes"):
        L.Concat().forward([np.ones((2, 3)), np.ones((2, 3), np.float32)])
