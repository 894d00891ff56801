"""ConvTranspose2D's packed kernels (groups 1) in every build this CPU runs: the forward phase
by phase (each output written once by a product that reads the padded image in place; dilation
1), the backward's packed products (dy's columns built once, straight into the panels both
products read).

Oracles: plain loops over the taps written here, and PyTorch where it is installed.  The cases
cover what the packing has to get right: channel counts that are not a multiple of the 6-row
blocks or of the panel width, position counts that leave a partial last panel, bands of one
panel (forced), strides, dilation, asymmetric kernels, padding that crops, output padding.
"""
import numpy as np
import pytest

from cnnkit._cpu import missing_cpu_features
from cnnkit._ext import ISA_FEATURES
from cnnkit._ext import conv as _conv
from cnnkit._shapes import conv_transpose_output_size
from cnnkit.builtin import conv as Bconv
from cnnkit.builtin._kernel_args import isa_build, workspace

#: the builds this CPU runs whose kernels take the packed path (32-byte vectors and up; the
#: portable build keeps BLAS)
BUILDS = [isa for isa in [None, *ISA_FEATURES]
          if (isa is None or not missing_cpu_features(ISA_FEATURES[isa]))
          and (_conv if isa is None else isa_build(Bconv.ConvTranspose2dCython, "conv",
                                                   isa)._kernels).packed_available()]


ROUTING = {name: getattr(Bconv, name) for name in
           ("PHASES_MIN_OUT_CHANNELS", "PACKED_MIN_POSITIONS", "PACKED_MAX_DW_BYTES")}


@pytest.fixture(autouse=True)
def packed_everywhere(monkeypatch):
    """The packed kernels on every case, however small (the layer routes small images and
    few output channels elsewhere: test_routing checks that)."""
    monkeypatch.setattr(Bconv, "PHASES_MIN_OUT_CHANNELS", 1)
    monkeypatch.setattr(Bconv, "PACKED_MIN_POSITIONS", 0)


def _variant(isa):
    return Bconv.ConvTranspose2dCython if isa is None else type(
        isa_build(Bconv.ConvTranspose2dCython, "conv", isa))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _loops(x, w, b, stride, padding, output_padding, dilation, dy):
    """y = conv_transpose2d(x, w) + b and its gradients, tap by tap: y[o*s - p + k*d] +=
    x[o] w[k] on the uncropped output, then cropped."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = map(_pair, (stride, padding, output_padding,
                                                           dilation))
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    oh = conv_transpose_output_size(h, kh, sh, ph, oph, dh)
    ow = conv_transpose_output_size(wd, kw, sw, pw, opw, dw)
    fh, fw = max(ph + oh, (h - 1) * sh + (kh - 1) * dh + 1), max(pw + ow, (wd - 1) * sw + (kw - 1) * dw + 1)
    full = np.zeros((n, o, fh, fw))
    dyf = np.zeros((n, o, fh, fw))
    dyf[:, :, ph:ph + oh, pw:pw + ow] = dy
    dx = np.zeros(x.shape)
    dwt = np.zeros(w.shape)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (h - 1) * sh + 1, sh)
            cols = slice(j * dw, j * dw + (wd - 1) * sw + 1, sw)
            full[:, :, rows, cols] += np.einsum("nchw,co->nohw", x, w[:, :, i, j])
            dx += np.einsum("nohw,co->nchw", dyf[:, :, rows, cols], w[:, :, i, j])
            dwt[:, :, i, j] = np.einsum("nchw,nohw->co", x, dyf[:, :, rows, cols])
    y = full[:, :, ph:ph + oh, pw:pw + ow] + b.reshape(1, -1, 1, 1)
    return y, dx, dwt, dy.sum(axis=(0, 2, 3))


# (x shape, out channels, kernel, stride, padding, output padding, dilation)
CASES = [
    ((3, 64, 6, 7), 32, 4, 2, 1, 0, 1),        # the up-sampling block, partial last panel
    ((2, 13, 5, 9), 7, 4, 2, 1, 1, 1),         # 13 channels: neither 6-row blocks nor panels
    ((1, 5, 4, 5), 17, 3, 3, 1, 2, 1),         # stride 3, output padding, batch 1
    ((2, 7, 6, 5), 9, (3, 2), (2, 3), (1, 0), (1, 2), (2, 1)),  # all at once, dilation
    ((3, 6, 5, 4), 4, 5, 1, 2, 0, 1),          # stride 1
    ((2, 3, 3, 3), 2, 2, 3, 0, 0, 1),          # kernel smaller than the stride
    ((2, 4, 4, 4), 3, 3, 2, 2, 1, 1),          # padding that crops whole tap rows
    # rows of whole panels (16 floats / 8 doubles with AVX2): dy's columns by tap offsets
    ((2, 10, 3, 16), 5, 4, 2, 1, 0, 1),
    ((2, 6, 5, 8), 7, 3, 1, 1, 0, 1),          # stride 1: copies
    ((1, 4, 2, 16), 3, 3, 3, 0, 1, 1),         # stride 3
]


@pytest.mark.parametrize("isa", BUILDS, ids=lambda i: i or "portable")
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("one_panel_bands", [False, True],
                         ids=["bands", "one-panel-bands-one-copy"])
def test_packed_backward_matches_loops(isa, case, dtype, one_panel_bands, monkeypatch):
    if one_panel_bands:
        monkeypatch.setattr(Bconv, "PACKED_BAND_BYTES", 1)
        monkeypatch.setattr(Bconv, "PHASES_BAND_BYTES", 1)
        monkeypatch.setattr(Bconv, "PHASES_MAX_COPIES", 1)  # one padded copy, every shift
    x_shape, cout, k, s, p, op, d = case
    kh, kw = _pair(k)
    rng = np.random.default_rng(sum(x_shape) + cout)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((x_shape[1], cout, kh, kw)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    config = {"stride": _pair(s), "padding": _pair(p), "output_padding": _pair(op),
              "dilation": _pair(d), "groups": 1}
    variant = _variant(isa)
    phase_plans = []
    monkeypatch.setattr(Bconv, "_phase_plan",
                        lambda *a, plan=Bconv._phase_plan: phase_plans.append(a) or plan(*a))
    workspace((1 << 20,), dtype)[...] = np.nan  # what the kernels must not read stays NaN
    y, ctx = variant.forward(x, {"weight": w, "bias": b}, config, True)
    assert bool(phase_plans) == (_pair(d) == (1, 1))  # by phases unless dilated
    dy = rng.standard_normal(y.shape).astype(dtype)
    ry, rdx, rdw, rdb = _loops(x.astype(np.float64), w.astype(np.float64), b, s, p, op, d,
                               dy.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for need_dx in (True, False):
        dx, grads = variant.backward(dy, ctx, need_input_grad=need_dx)
        assert (dx is None) != need_dx
        for got, want, what in ((y, ry, "y"), (dx, rdx, "dx"), (grads["weight"], rdw, "dw"),
                                (grads["bias"], rdb, "db")):
            if got is None:
                continue
            assert got.dtype == dtype and got.shape == want.shape, what
            scale = max(float(np.abs(want).max()), 1.0)
            err = float(np.abs(got - want).max())
            assert err <= tol * scale, f"{what}: error {err:.3g} > {tol * scale:.3g}"


@pytest.mark.parametrize("isa", BUILDS, ids=lambda i: i or "portable")
def test_packed_backward_matches_torch(isa):
    torch = pytest.importorskip("torch", reason="PyTorch is the second oracle")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 20, 9, 11))
    w = rng.standard_normal((20, 11, 4, 3))
    config = {"stride": (2, 3), "padding": (1, 1), "output_padding": (1, 0),
              "dilation": (1, 1), "groups": 1}
    variant = _variant(isa)
    y, ctx = variant.forward(x, {"weight": w}, config, True)
    dy = rng.standard_normal(y.shape)
    dx, grads = variant.backward(dy, ctx)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv_transpose2d(tx, tw, None, (2, 3), (1, 1), (1, 0))
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("isa", BUILDS, ids=lambda i: i or "portable")
@pytest.mark.parametrize("cout", [8, 12], ids=["4-row-blocks", "6-row-blocks"])
def test_forward_puts_nan_and_inf_of_x_where_the_loops_do(isa, cout):
    # the phase products also compute the padded columns past each row, reading the next
    # row's values: none of that may reach the output
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 6, 7))
    x[0, 1, 2, 6] = np.nan
    x[1, 3, 5, 0] = np.inf
    w = rng.standard_normal((5, cout, 4, 3))
    b = rng.standard_normal(cout)
    config = {"stride": (2, 2), "padding": (1, 1), "output_padding": (1, 0),
              "dilation": (1, 1), "groups": 1}
    y, _ = _variant(isa).forward(x, {"weight": w, "bias": b}, config, False)
    with np.errstate(invalid="ignore"):
        want, *_ = _loops(x, w, b, 2, 1, (1, 0), 1, np.zeros(y.shape))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    finite = np.isfinite(want)
    assert np.isnan(want).any() and np.isinf(want).any() and finite.any()
    np.testing.assert_allclose(y[finite], want[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("isa", BUILDS, ids=lambda i: i or "portable")
def test_nan_in_dy_reaches_the_input_gradient_where_the_loops_put_it(isa):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 5, 5))
    w = rng.standard_normal((8, 3, 4, 4))
    config = {"stride": (2, 2), "padding": (1, 1), "output_padding": (0, 0),
              "dilation": (1, 1), "groups": 1}
    variant = _variant(isa)
    y, ctx = variant.forward(x, {"weight": w}, config, True)
    dy = rng.standard_normal(y.shape)
    dy[1, 2, 4, 7] = np.nan
    dx, grads = variant.backward(dy, ctx)
    _, rdx, rdw, _ = _loops(x, w, np.zeros(3), 2, 1, 0, 1, dy)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(rdx))
    assert np.isnan(rdx).any() and not np.isnan(dx[0]).any()
    np.testing.assert_array_equal(np.isnan(grads["weight"]), np.isnan(rdw))


def test_packed_backward_refuses_inconsistent_buffers():
    x = np.zeros((2, 3, 4, 4))
    dy = np.zeros((2, 2, 8, 8))
    mr, nr = _conv.packed_layout(8)
    kp = -(-2 * 16 // mr) * mr
    wpk = np.zeros((1, kp, mr))
    dwt = np.zeros((1, kp, nr))
    args = (4, 4, 2, 2, 1, 1, 1, 1, 5, 5, 1, 1)  # dy's phase planes (5, 5): 4 + 3 // 2
    ws = np.zeros((1, _conv.packed_backward_size(3, kp, 1, 2 * 2 * 2 * 5 * 5, 8)))
    _conv.conv_transpose2d_backward(x, wpk, dy, None, dwt, ws, *args)  # consistent: runs
    bad = [
        dict(ws=np.zeros((1, ws.shape[1] - 1))),                      # workspace too small
        dict(wpk=np.zeros((1, kp - mr, mr))),                         # weight rows
        dict(dwt=np.zeros((1, kp, nr - 1))),                          # gradient width
        dict(args=(4, 4, 2, 2, 1, 1, 1, 1, 4, 5, 1, 1)),              # phase planes too short
        dict(args=(4, 4, 2, 2, 1, 1, 1, 1, 5, 5, 1, 2)),              # more threads than rows
    ]
    for change in bad:
        given = dict(ws=ws, wpk=wpk, dwt=dwt, args=args) | change
        with pytest.raises(ValueError, match="inconsistent"):
            _conv.conv_transpose2d_backward(x, given["wpk"], dy, None, given["dwt"],
                                            given["ws"], *given["args"])


@pytest.mark.parametrize("isa", BUILDS, ids=lambda i: i or "portable")
@pytest.mark.parametrize("x_shape, cout, forward_by_phases, packed_backward", [
    ((2, 64, 16, 16), 32, True, True),      # the up-sampling block
    ((2, 64, 16, 16), 3, False, True),      # 3 output channels: GEMM + scatter forward
    ((2, 256, 8, 8), 128, False, False),    # 8x8 with a 2 MiB weight gradient: BLAS paths
    ((2, 32, 8, 8), 16, False, True),       # 8x8 with a small weight gradient
])
def test_routing(isa, x_shape, cout, forward_by_phases, packed_backward, monkeypatch):
    for name, value in ROUTING.items():
        monkeypatch.setattr(Bconv, name, value)
    taken = []
    monkeypatch.setattr(Bconv, "_phase_plan",
                        lambda *a, plan=Bconv._phase_plan: taken.append("phases") or plan(*a))
    variant = _variant(isa)
    monkeypatch.setattr(variant, "_packed_backward",
                        lambda *a, run=variant._packed_backward: taken.append("packed") or run(*a))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((x_shape[1], cout, 4, 4)).astype(np.float32)
    config = {"stride": (2, 2), "padding": (1, 1), "output_padding": (0, 0),
              "dilation": (1, 1), "groups": 1}
    y, ctx = variant.forward(x, {"weight": w}, config, True)
    dx, grads = variant.backward(np.ones_like(y), ctx)
    assert ("phases" in taken, "packed" in taken) == (forward_by_phases, packed_backward)
    want, rdx, rdw, _ = _loops(x.astype(np.float64), w.astype(np.float64), np.zeros(cout),
                               2, 1, 0, 1, np.ones(y.shape))
    for got, ref in ((y, want), (dx, rdx), (grads["weight"], rdw)):
        assert np.abs(got - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0)


@pytest.mark.parametrize("isa", BUILDS, ids=lambda i: i or "portable")
def test_phases_forward_refuses_inconsistent_tables(isa, monkeypatch):
    variant = _variant(isa)
    calls = []
    kernels = variant._kernels
    real = kernels.conv_transpose2d_forward_phases

    class Spy:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def conv_transpose2d_forward_phases(self, *args):
            calls.append(args)
            return real(*args)

    monkeypatch.setattr(variant, "_kernels", Spy())
    x = np.random.default_rng(1).standard_normal((2, 5, 6, 7))
    w = np.random.default_rng(2).standard_normal((5, 4, 4, 3))
    config = {"stride": (2, 2), "padding": (1, 1), "output_padding": (0, 0),
              "dilation": (1, 1), "groups": 1}
    variant.forward(x, {"weight": w}, config, False)
    (args,) = calls
    x_, wph, table, bias, y, ws, sh, sw, top, left, hp, pitch, copies, band, threads = args
    real(*args)  # as the layer called it: runs
    table = np.array(table)

    def row(f, col, value):
        t = table.copy()
        t[f, col] = value
        return t

    bad = [
        dict(table=row(0, 5, table[0, 5] + 1)),      # one row of positions too many
        dict(table=row(1, 7, pitch + 1)),            # wider than the copies' rows
        dict(table=row(2, 3, wph.size)),             # weight past the packed weights
        dict(table=row(3, 2, table[3, 2] + 1)),      # K that is not C * th * tw
        dict(table=row(0, 8, y.shape[2])),           # outputs below y
        dict(table=table[:-1]),                      # the phases do not tile y
        dict(ws=ws[:, :-64]),                        # workspace too small
        dict(hp=hp - 1),                             # copies too short for the taps
        dict(band=band + 1),                         # not whole register blocks
    ]
    for change in bad:
        given = dict(table=table, ws=ws, hp=hp, band=band) | change
        with pytest.raises(ValueError, match="inconsistent"):
            real(x_, wph, given["table"], bias, y, given["ws"], sh, sw, top, left,
                 given["hp"], pitch, copies, given["band"], threads)
