"""The compiled convolutions' column paths: columns kept from the forward pass for the weight
gradient (when the batch's columns fit ``COL_WORKSPACE_BYTES``) or rebuilt in backward (when
they do not), stride-1 row copies at the padding edges, and the transposed convolution whose
backward builds the columns of dy once for both gradients.

Oracles: PyTorch where it is installed, the NumPy reference variant and the plain loops of
``_reference.py`` everywhere.
"""
import numpy as np
import pytest

import cnnkit
from cnnkit._ext import conv as _conv
from cnnkit.builtin import conv as Bconv

import _reference as ref

KEPT, REBUILT, BANDS = "kept", "rebuilt", "rebuilt in bands"


def _conv_config(stride, padding, dilation=1, groups=1):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    ph, pw = pair(padding)
    return {"stride": pair(stride), "padding": (ph, ph, pw, pw), "dilation": pair(dilation),
            "groups": groups}


def _convt_config(stride, padding, output_padding=0, dilation=1, groups=1):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return {"stride": pair(stride), "padding": pair(padding),
            "output_padding": pair(output_padding), "dilation": pair(dilation), "groups": groups}


def _inputs(x_shape, w_shape, n_bias, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    params = {"weight": rng.standard_normal(w_shape).astype(dtype),
              "bias": rng.standard_normal(n_bias).astype(dtype) if n_bias else None}
    return x, params


@pytest.fixture
def column_path(monkeypatch, request):
    """Forces one column path through the workspace bound and records which was taken."""
    taken = []
    original = Bconv._kept_columns
    path = request.param

    def spy(*args):
        # REBUILT: the batch's columns "do not fit" while the bound keeps whole-image bands
        shape = None if path == REBUILT else original(*args)
        taken.append(shape is not None)
        return shape

    monkeypatch.setattr(Bconv, "_kept_columns", spy)
    if path == BANDS:
        monkeypatch.setattr(Bconv, "COL_WORKSPACE_BYTES", 64)  # one output row per band
    yield taken
    assert all(t == (path == KEPT) for t in taken), (path, taken)


PATHS = [KEPT, REBUILT, BANDS]

# (x shape, out channels, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    ((3, 6, 14, 14), 16, 5, 1, 0, 1, 1),      # LeNet's conv2, smaller batch
    ((2, 1, 28, 28), 6, 5, 1, 2, 1, 1),       # LeNet's conv1: rows clipped at both edges
    ((1, 3, 7, 9), 4, 3, 1, (2, 3), 1, 1),    # batch 1, padding wider than half the kernel
    ((2, 4, 6, 11), 6, (3, 5), 1, (1, 2), (2, 1), 2),  # odd sizes, dilation, groups
    ((2, 3, 9, 8), 5, 3, 2, 1, 1, 1),         # stride 2 (element copies)
]


def _conv_case(case, dtype, bias=True):
    x_shape, cout, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x, params = _inputs(x_shape, (cout, x_shape[1] // g, kh, kw), cout if bias else 0, dtype)
    return x, params, _conv_config(s, p, d, g)


def _torch_conv(x, params, config, dy, transposed=False):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(params["weight"], requires_grad=True)
    tb = None if params["bias"] is None else torch.tensor(params["bias"], requires_grad=True)
    if transposed:
        ty = F.conv_transpose2d(tx, tw, tb, stride=config["stride"], padding=config["padding"],
                                output_padding=config["output_padding"],
                                dilation=config["dilation"], groups=config["groups"])
    else:
        top, bottom, left, right = config["padding"]
        assert (top, left) == (bottom, right)
        ty = F.conv2d(tx, tw, tb, stride=config["stride"], padding=(top, left),
                      dilation=config["dilation"], groups=config["groups"])
    ty.backward(torch.tensor(dy))
    grads = {"weight": tw.grad.numpy()}
    if tb is not None:
        grads["bias"] = tb.grad.numpy()
    return ty.detach().numpy(), tx.grad.numpy(), grads


def _close(got, want, dtype, what):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0))
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


def _run(variant, x, params, config, dy, need_input_grad=True):
    y, ctx = variant.forward(x, params, config, True)
    dx, grads = variant.backward(dy, ctx, need_input_grad=need_input_grad)
    return y, dx, grads


@pytest.mark.parametrize("column_path", PATHS, indirect=True)
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_columns_match_torch_and_numpy(column_path, case, dtype):
    x, params, config = _conv_case(case, dtype)
    y0, ctx0 = Bconv.Conv2dNumpy.forward(x, params, config, True)
    dy = np.random.default_rng(1).standard_normal(y0.shape).astype(dtype)
    dx0, g0 = Bconv.Conv2dNumpy.backward(dy, ctx0)
    y, dx, grads = _run(Bconv.Conv2dCython, x, params, config, dy)
    assert column_path
    for got, want, what in ((y, y0, "y"), (dx, dx0, "dx"), (grads["weight"], g0["weight"], "dw"),
                            (grads["bias"], g0["bias"], "db")):
        _close(got, want, dtype, f"{what} against numpy")
    if dtype == np.float64:
        ty, tdx, tg = _torch_conv(x, params, config, dy)
        for got, want, what in ((y, ty, "y"), (dx, tdx, "dx"), (grads["weight"], tg["weight"], "dw"),
                                (grads["bias"], tg["bias"], "db")):
            _close(got, want, dtype, f"{what} against torch")


@pytest.mark.parametrize("column_path", PATHS, indirect=True)
def test_conv2d_columns_match_loop_reference_without_input_grad(column_path):
    x, params, config = _conv_case(((2, 2, 6, 7), 3, 3, 1, 1, 1, 1), np.float64, bias=False)
    y, ctx = Bconv.Conv2dCython.forward(x, params, config, True)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx, grads = Bconv.Conv2dCython.backward(dy, ctx, need_input_grad=False)
    assert dx is None and column_path
    ty, _, (dw, _) = _loop_conv(x, params, config, dy)
    _close(y, ty, np.float64, "y")
    _close(grads["weight"], dw, np.float64, "dw")


@pytest.fixture
def team_on_tiny_convs(monkeypatch):
    """Two threads even on tiny convolutions, so a batch of one image is cut into bands of output
    rows in forward (the kept columns are then laid out band by band)."""
    monkeypatch.setattr(Bconv, "SERIAL_MACS", 0)
    with cnnkit.num_threads(2):
        if _conv.max_threads() < 2:
            pytest.skip("cnnkit was built without OpenMP: every kernel runs on one thread")
        yield


@pytest.mark.parametrize("column_path", [KEPT, REBUILT], indirect=True)
@pytest.mark.parametrize("n", [1, 3])
def test_conv2d_kept_columns_follow_the_forward_bands(team_on_tiny_convs, column_path, n):
    x, params, config = _conv_case(((n, 3, 9, 10), 4, 3, 1, 1, 1, 1), np.float64)
    y, ctx = Bconv.Conv2dCython.forward(x, params, config, True)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx, grads = Bconv.Conv2dCython.backward(dy, ctx)
    assert column_path
    ty, tdx, tg = _loop_conv(x, params, config, dy)
    for got, want, what in ((y, ty, "y"), (dx, tdx, "dx"), (grads["weight"], tg[0], "dw"),
                            (grads["bias"], tg[1], "db")):
        _close(got, want, np.float64, what)


def _loop_conv(x, params, config, dy):
    args = (config["stride"], config["padding"], config["dilation"], config["groups"])
    y = ref.conv2d_forward(x, params["weight"], params["bias"], *args)
    dx, dw, db = ref.conv2d_backward(x, params["weight"], dy, *args)
    return y, dx, (dw, db)


# (x shape, out channels, kernel, stride, padding, output padding, dilation, groups)
CONVT_CASES = [
    ((2, 8, 6, 5), 4, 4, 2, 1, 0, 1, 1),          # the k4 s2 p1 up-sampling block
    ((1, 3, 4, 5), 2, 3, 3, 1, 2, 1, 1),          # stride 3, output padding, batch 1
    ((2, 4, 3, 5), 6, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2), 2),  # all at once, odd sizes
    ((3, 2, 5, 4), 3, 2, 1, 0, 0, 2, 1),          # stride 1, dilation
]


@pytest.mark.parametrize("column_path", PATHS, indirect=True)
@pytest.mark.parametrize("case", CONVT_CASES, ids=[f"convt{i}" for i in range(len(CONVT_CASES))])
@pytest.mark.parametrize("need_input_grad", [True, False])
def test_conv_transpose2d_matches_torch_and_numpy(column_path, case, need_input_grad,
                                                  monkeypatch):
    monkeypatch.setattr(Bconv, "PACKED_KERNELS", False)  # the column path, as grouped layers
    x_shape, cout, k, s, p, op, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x, params = _inputs(x_shape, (x_shape[1], cout // g, kh, kw), cout, np.float64)
    config = _convt_config(s, p, op, d, g)
    y0, ctx0 = Bconv.ConvTranspose2dNumpy.forward(x, params, config, True)
    dy = np.random.default_rng(5).standard_normal(y0.shape)
    dx0, g0 = Bconv.ConvTranspose2dNumpy.backward(dy, ctx0)
    y, dx, grads = _run(Bconv.ConvTranspose2dCython, x, params, config, dy, need_input_grad)
    # without dx, dy's columns serve the weight gradient only: nothing to keep
    assert bool(column_path) == need_input_grad and (dx is None) == (not need_input_grad)
    for got, want, what in ((y, y0, "y"), (dx, dx0, "dx"), (grads["weight"], g0["weight"], "dw"),
                            (grads["bias"], g0["bias"], "db")):
        if got is not None:
            _close(got, want, np.float64, f"{what} against numpy")
    ty, tdx, tg = _torch_conv(x, params, config, dy, transposed=True)
    for got, want, what in ((y, ty, "y"), (dx, tdx, "dx"), (grads["weight"], tg["weight"], "dw"),
                            (grads["bias"], tg["bias"], "db")):
        if got is not None:
            _close(got, want, np.float64, f"{what} against torch")


def test_channel_sums_checks_its_output_and_sums_per_channel():
    a = np.random.default_rng(6).standard_normal((3, 4, 5, 7))
    out = np.empty(4)
    _conv.channel_sums(a, out, 2)
    np.testing.assert_allclose(out, a.sum(axis=(0, 2, 3)), rtol=1e-12)
    with pytest.raises(ValueError, match="one per channel"):
        _conv.channel_sums(a, np.empty(3), 1)


def test_kept_columns_of_the_wrong_shape_are_refused():
    x, params, config = _conv_case(((2, 2, 5, 5), 3, 3, 1, 0, 1, 1), np.float64)
    y = np.empty((2, 3, 3, 3))
    ws = np.empty((1, 2 * 9 * 9))
    with pytest.raises(ValueError, match="cols must be shaped"):
        _conv.conv2d_forward(x, params["weight"], None, y, ws, 1, 1, 0, 0, 1, 1, 1, 3, 1,
                             np.empty((2, 18, 8)))
