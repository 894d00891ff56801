"""Conv2D's connection tables (LeNet-5's non-full connection) and flip_kernel (true
convolution), against independent oracles: PyTorch's dense convolution of the masked (and
turned) weight, scipy.signal.convolve2d, and central finite differences in float64."""
import numpy as np
import pytest

import cnnkit as ck
import cnnkit.builtin.conv as builtin_conv
from cnnkit import config as C
from cnnkit.layers import LENET5_C3_TABLE, Conv2D, ReLU
from gradcheck import assert_close, numeric_grad

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests")

# LeCun et al. 1998, Table I, as printed: rows are S2's maps 0-5, columns C3's maps 0-15
# ("X" = connected).  Written out here, not derived, so the library's table is checked against
# the paper itself.
PAPER_TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""


def test_lenet5_c3_table_is_the_papers_table_i():
    rows = [line for line in PAPER_TABLE_I.split() if line]
    paper = np.array([[ch == "X" for ch in row] for row in rows])  # (in 6, out 16)
    assert LENET5_C3_TABLE.shape == (16, 6) and LENET5_C3_TABLE.dtype == bool
    assert np.array_equal(LENET5_C3_TABLE, paper.T)
    assert LENET5_C3_TABLE.sum() == 60
    assert not LENET5_C3_TABLE.flags.writeable


def _torch_masked(x, layer, table, dy):
    """Dense PyTorch convolution of the masked (and, for flip_kernel, turned) weight."""
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["weight"], requires_grad=True)
    w = wt * torch.tensor(np.asarray(table, dtype=bool))[:, :, None, None]
    if layer.flip_kernel:
        w = w.flip(2, 3)
    b = layer.params["bias"]
    pads = layer.resolve(x.shape)["padding"]
    xp = torch.nn.functional.pad(xt, (pads[2], pads[3], pads[0], pads[1]))
    y = torch.nn.functional.conv2d(xp, w, None if b is None else torch.tensor(b),
                                   stride=layer.stride, dilation=layer.dilation)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _random_table(rng, o, c):
    t = rng.random((o, c)) < 0.5
    t[np.arange(o), rng.integers(0, c, o)] = True  # every output reads something
    return t


GEOMETRIES = [  # (in, out, kernel, kwargs, input H, W)
    (6, 16, 5, {}, 14, 14),                                      # LeNet's C3
    (4, 5, 3, {"padding": 1, "stride": 2}, 9, 8),
    (3, 4, (2, 3), {"padding": "same", "dilation": (2, 1)}, 7, 6),
    (5, 3, 1, {}, 4, 5),                                         # 1x1: the direct path
    (8, 8, 3, {"padding": 1, "bias": False}, 6, 6),
    (6, 16, 3, {"padding": 1}, 8, 8),                            # a block table
]
BLOCKS = np.kron(np.eye(2, dtype=bool), np.ones((8, 3), dtype=bool))


# the reference, and both plans of the Cython wrapper: skipping unconnected pairs by runs, or
# one product over zeroed weights
@pytest.mark.parametrize("impl,plan", [("numpy", "dense"), ("cython", "dense"),
                                       ("cython", "runs")])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
def test_connections_equal_masked_dense_convolution(impl, plan, flip, geometry, monkeypatch):
    monkeypatch.setattr(builtin_conv, "RUN_PRODUCT_COST", 0 if plan == "runs" else 10**12)
    cin, cout, k, kw, h, w = GEOMETRIES[geometry]
    rng = np.random.default_rng(geometry)
    table = {0: LENET5_C3_TABLE, 5: BLOCKS}.get(geometry)
    if table is None:
        table = _random_table(rng, cout, cin)
    layer = Conv2D(cin, cout, k, connections=table, flip_kernel=flip, dtype=np.float64,
                   impl=impl, **kw)
    # garbage where the table says "unconnected": the layer must ignore it
    layer.params["weight"][...] = rng.standard_normal(layer.params["weight"].shape)
    x = rng.standard_normal((3, cin, h, w))
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    y_ref, dx_ref, dw_ref = _torch_masked(x, layer, table, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(layer.grads["weight"], dw_ref, rtol=1e-11, atol=1e-11)
    assert np.all(layer.grads["weight"][~np.asarray(table)] == 0)


def test_the_cython_plan_skips_block_tables_and_not_lenets_c3():
    cost = builtin_conv.RUN_PRODUCT_COST
    as_tuple = lambda t: tuple(map(tuple, np.asarray(t).tolist()))  # noqa: E731
    runs, mask = builtin_conv._connection_runs(as_tuple(LENET5_C3_TABLE), 25, cost)
    assert runs is None and np.array_equal(mask[:, :, 0, 0], LENET5_C3_TABLE)
    blocks = np.kron(np.eye(4, dtype=bool), np.ones((16, 16), dtype=bool))
    runs, mask = builtin_conv._connection_runs(as_tuple(blocks), 9, cost)
    assert mask is None
    # identical rows are merged: one product per block of 16 outputs
    assert runs.tolist() == [[0, 16, 0, 16], [16, 16, 16, 16], [32, 16, 32, 16],
                             [48, 16, 48, 16]]


def test_connections_gradients_match_finite_differences(monkeypatch):
    monkeypatch.setattr(builtin_conv, "RUN_PRODUCT_COST", 0)
    rng = np.random.default_rng(5)
    table = _random_table(rng, 4, 3)
    for impl in ("numpy", "cython"):
        layer = Conv2D(3, 4, 3, padding=1, connections=table, flip_kernel=True,
                       dtype=np.float64, impl=impl)
        x = rng.standard_normal((2, 3, 5, 4))
        dy = rng.standard_normal((2, 4, 5, 4))
        layer.forward(x, training=True)
        dx = layer.backward(dy)

        def f():
            return float(np.sum(layer.forward(x, training=False) * dy))

        w = layer.params["weight"]
        assert_close(dx, numeric_grad(f, x), what=f"{impl} dx")
        assert_close(layer.grads["weight"], numeric_grad(f, w), what=f"{impl} dw")
        assert_close(layer.grads["bias"], numeric_grad(f, layer.params["bias"]),
                     what=f"{impl} db")


def test_connections_are_validated():
    t = np.ones((4, 3), dtype=bool)
    with pytest.raises(ValueError, match=r"shape \(3, 4\), expected .*\(4, 3\)"):
        Conv2D(3, 4, 3, connections=t.T)
    with pytest.raises(TypeError, match="boolean or 0/1"):
        Conv2D(3, 4, 3, connections=np.full((4, 3), 2))
    with pytest.raises(TypeError, match="boolean or 0/1"):
        Conv2D(3, 4, 3, connections=[["a"] * 3] * 4)
    t[2] = False
    with pytest.raises(ValueError, match=r"output channels \[2\] have no input"):
        Conv2D(3, 4, 3, connections=t)
    with pytest.raises(ValueError, match="groups"):
        Conv2D(4, 4, 3, groups=2, connections=np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="unknown connection table 'lenet'"):
        Conv2D(6, 16, 5, connections="lenet")
    with pytest.raises(TypeError, match="flip_kernel"):
        Conv2D(3, 4, 3, flip_kernel="yes")
    # 0/1 integers are a table too, and unconnected weights start at zero
    layer = Conv2D(3, 4, 3, connections=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    assert layer.connections.dtype == bool
    assert np.all(layer.params["weight"][~layer.connections] == 0)
    assert np.any(layer.params["weight"][layer.connections] != 0)


def test_the_kernel_refuses_bad_runs():
    from cnnkit._ext import conv as kernels

    x = np.zeros((1, 3, 4, 4))
    w = np.zeros((2, 3, 1, 1))
    y = np.zeros((1, 2, 4, 4))
    ws = np.zeros((1, 1))
    for runs, message in (([[0, 1, 0, 4], [1, 1, 0, 1]], "outside"),
                          ([[0, 1, 0, 1]], "cover output channels"),
                          ([[1, 1, 0, 1], [0, 1, 0, 1]], "starts output block")):
        with pytest.raises(ValueError, match=message):
            kernels.conv2d_forward(x, w, None, y, ws, 1, 1, 0, 0, 1, 1, 1, 4, 1, None, False,
                                   np.array(runs, dtype=np.int32))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"])
def test_unconnected_weights_stay_exactly_zero_through_every_optimizer(name):
    rng = np.random.default_rng(1)
    model = ck.Sequential([Conv2D(3, 4, 3, connections=_random_table(rng, 4, 3),
                                  rng=rng, name="c"), ReLU()])
    model.build((3, 6, 6))
    kwargs = {"lr": 0.05} if name != "lbfgs" else {"lr": 0.5, "max_iter": 3}
    if name != "lbfgs":
        kwargs["weight_decay"] = 0.1
    opt = ck.get_registry().optimizer(name)(model, **kwargs)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    target = rng.standard_normal((4, 4, 4, 4)).astype(np.float32)
    loss = ck.losses.MSE()
    penalty = ck.losses.L2Penalty(0.1)
    layer = model.get_layer("c")
    before = layer.params["weight"].copy()

    def closure():
        opt.zero_grad()
        value = loss.forward(model.forward(x, training=True), target) + penalty(model)
        model.backward(loss.backward())
        penalty.backward(model)
        return value

    for _ in range(3):
        if opt.needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
    w = layer.params["weight"]
    assert np.all(w[~layer.connections] == 0)
    assert not np.array_equal(w[layer.connections], before[layer.connections])


def test_fused_conv_relu_honours_the_table():
    rng = np.random.default_rng(2)
    table = _random_table(rng, 5, 4)
    x = rng.standard_normal((2, 4, 7, 7))
    outs = []
    for impl in ("cython", "numpy"):
        conv = Conv2D(4, 5, 3, connections=table, dtype=np.float64, impl=impl,
                      rng=np.random.default_rng(0))
        conv.params["weight"][...] = np.random.default_rng(3).standard_normal((5, 4, 3, 3))
        model = ck.Sequential([conv, ReLU(impl=impl)])
        outs.append(model.forward(x, training=False))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)


def test_selection_never_ignores_the_new_features():
    """Variants that do not compute connection tables or turned kernels refuse them: Winograd
    (and any plugin variant declaring the older capability list)."""
    layer = Conv2D(16, 16, 3, padding=1, connections=np.eye(16, dtype=bool), impl="winograd")
    with pytest.raises(Exception, match="connections"):
        layer.forward(np.zeros((1, 16, 8, 8), dtype=np.float32))
    layer = Conv2D(16, 16, 3, padding=1, flip_kernel=True, impl="winograd")
    with pytest.raises(Exception, match="flip_kernel"):
        layer.forward(np.zeros((1, 16, 8, 8), dtype=np.float32))
    auto = Conv2D(16, 16, 3, padding=1, flip_kernel=True)
    assert not auto.variant(np.float32, (1, 16, 8, 8)).name.startswith("winograd")


def test_flip_kernel_is_scipy_convolve2d_summed_over_input_channels():
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 8))
    for impl in ("numpy", "cython"):
        for padding in (0, 2, (1, 3)):
            layer = Conv2D(3, 2, (3, 4), padding=padding, flip_kernel=True, dtype=np.float64,
                           impl=impl)
            w, b = layer.params["weight"], rng.standard_normal(2)
            layer.params["bias"][...] = b
            ph, pw = (padding, padding) if isinstance(padding, int) else padding
            xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            expected = np.array([[sum(signal.convolve2d(xp[n, c], w[o, c], mode="valid")
                                      for c in range(3)) + b[o] for o in range(2)]
                                 for n in range(2)])
            np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)
    # and it is not the cross-correlation (an asymmetric kernel tells them apart)
    plain = Conv2D(3, 2, (3, 4), padding=(1, 3), dtype=np.float64)
    plain.params["weight"][...] = layer.params["weight"]
    plain.params["bias"][...] = layer.params["bias"]
    assert not np.allclose(plain.forward(x), layer.forward(x))


def test_connections_and_flip_round_trip_through_configs_and_model_files(tmp_path):
    table = [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]]
    model = ck.Sequential([Conv2D(3, 4, 3, connections=table, flip_kernel=True, name="a"),
                           Conv2D(4, 4, 1, connections=np.eye(4, dtype=bool), name="b"),
                           ReLU()])
    model.build((3, 6, 6))
    cfg = C.model_to_config(model)
    assert cfg["layers"][0]["connections"] == table and cfg["layers"][0]["flip_kernel"] is True
    again = C.model_from_config(C.loads(C.dumps(cfg, "toml"), "toml"))
    assert np.array_equal(again.get_layer("a").connections, np.array(table, dtype=bool))
    assert again.get_layer("a").flip_kernel
    named = C.model_from_config({"input_shape": [6, 14, 14], "layers": [
        {"type": "conv2d", "in_channels": 6, "out_channels": 16, "kernel_size": 5,
         "connections": "lenet5_c3"}]})
    assert C.model_to_config(named)["layers"][0]["connections"] == "lenet5_c3"
    assert np.array_equal(named.layers[0].connections, LENET5_C3_TABLE)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = ck.load_model(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert loaded.get_layer("a").flip_kernel
    assert np.array_equal(loaded.get_layer("b").connections, np.eye(4, dtype=bool))
