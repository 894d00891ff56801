"""Conformance cases and loop references of the pool family: ``maxpool2d``, ``avgpool2d``,
``globalavgpool2d``, ``globalmaxpool2d``, ``subsampling``.

Windows are walked one output position at a time with PyTorch's rules written out here
(stride defaults to the kernel, ceil_mode windows must start inside the input or the left
padding, count_include_pad), read from the case's constructor arguments.  Max pooling also has
a loop backward: the gradient goes to the FIRST maximum of each window in row-major order
(PyTorch's rule; a NaN beats every number), checked on cases full of ties, NaN and -inf.

2x2 and 3x3 windows at stride 2 have dedicated loops in the compiled kernels, so they get cases
of their own: odd sizes, padding, ceil mode, batch 1, and rows wide enough for the vectorised
loop bodies, not only their remainders.
"""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case, distinct_inputs


def tied_inputs(rng, shape):
    """Few distinct values (multiples of 0.5 in [-2, 2], none 0), so most pooling windows hold
    their maximum more than once."""
    values = np.array([-2.0, -1.5, -1.0, -0.5, 0.5, 1.0])
    return rng.choice(values, size=shape)


def nan_inputs(rng, shape):
    """Distinct values with a NaN in half of the 4x4 blocks, at a random place of the block's
    top-left 2x2: NaNs stay 3 apart, so no window of up to 3x3 holds two (PyTorch's CPU
    kernel keeps the last of several, cnnkit the first)."""
    x = distinct_inputs(rng, shape)
    for i in range(0, shape[2], 4):
        for j in range(0, shape[3], 4):
            r, c = min(i + rng.integers(2), shape[2] - 1), min(j + rng.integers(2), shape[3] - 1)
            x[..., r, c] = np.where(rng.random(shape[:2]) < 0.5, np.nan, x[..., r, c])
    return x


def neg_inf_inputs(rng, shape):
    """Distinct values, a third of them -inf; every 2x2 block keeps one finite value, so the
    outputs stay finite while many windows compare -inf with -inf."""
    x = distinct_inputs(rng, shape)
    drop = rng.random(shape) < 1 / 3
    drop[..., ::2, ::2] = False
    x[drop] = -np.inf
    return x


# 2x2 and 3x3 windows at stride 2 (dedicated loops): odd sizes, padding, ceil mode, batch 1
_FAST = [
    Case(dict(kernel_size=2), (1, 2, 7, 9)),
    Case(dict(kernel_size=2), (2, 1, 4, 70)),  # a row of 35 windows: the vectorised body
    Case(dict(kernel_size=2, padding=1), (2, 2, 7, 8)),
    Case(dict(kernel_size=2, ceil_mode=True), (1, 3, 9, 7)),
    Case(dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), (1, 2, 8, 37)),
    Case(dict(kernel_size=3, stride=2), (1, 2, 9, 11)),
    Case(dict(kernel_size=3, stride=2, padding=1), (1, 1, 7, 69)),
    Case(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 2, 10, 9)),
    Case(dict(kernel_size=3, stride=2, ceil_mode=True), (1, 1, 8, 40)),
]
_FAST_SPECIAL = [
    Case(dict(kernel_size=2), (2, 3, 7, 41), tied_inputs, gradcheck=False),
    Case(dict(kernel_size=3, stride=2, padding=1), (1, 3, 9, 41), tied_inputs, gradcheck=False),
    Case(dict(kernel_size=2, padding=1, ceil_mode=True), (1, 2, 9, 41), nan_inputs,
         gradcheck=False),
    Case(dict(kernel_size=3, stride=2, padding=1), (2, 2, 9, 40), nan_inputs, gradcheck=False),
]

# padding that differs between the sides and dilation (ONNX's pads, TensorFlow's "SAME"):
# served by the NumPy variants only
_ASYMMETRIC_DILATED = [
    Case(dict(kernel_size=3, stride=2, padding=((0, 1), (1, 0))), (2, 2, 7, 6)),
    Case(dict(kernel_size=2, stride=1, padding=((0, 1), (0, 1))), (1, 2, 5, 4)),
    Case(dict(kernel_size=3, stride=2, padding=((1, 0), (0, 1)), ceil_mode=True), (1, 2, 8, 9)),
    Case(dict(kernel_size=3, stride=1, dilation=2), (2, 1, 7, 8)),
    Case(dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), padding=1, ceil_mode=True),
         (1, 2, 6, 7)),
    Case(dict(kernel_size=3, stride=2, dilation=2, padding=((2, 1), (0, 2))), (1, 1, 9, 8)),
]

_POOL = [
    Case(dict(kernel_size=2), (2, 3, 6, 6)),
    Case(dict(kernel_size=3, stride=1), (1, 2, 5, 6)),
    Case(dict(kernel_size=3, stride=2), (2, 2, 7, 7)),
    Case(dict(kernel_size=3, stride=2, padding=1), (1, 2, 6, 5)),
    Case(dict(kernel_size=2, ceil_mode=True), (2, 2, 5, 7)),
    Case(dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True), (2, 1, 6, 5)),
]

CASES = {
    "maxpool2d": _POOL + _FAST + _FAST_SPECIAL + _ASYMMETRIC_DILATED + [
        # ties: the gradient must reach the first maximum (no finite differences at a tie)
        Case(dict(kernel_size=3, stride=2, padding=1), (2, 3, 7, 6), tied_inputs,
             gradcheck=False),
        Case(dict(kernel_size=2), (1, 2, 8, 42), neg_inf_inputs, gradcheck=False),
        Case(dict(kernel_size=3, stride=2, padding=1), (1, 2, 9, 41), neg_inf_inputs,
             gradcheck=False),
    ],
    "avgpool2d": _POOL + _FAST + _FAST_SPECIAL + _ASYMMETRIC_DILATED + [
        Case(dict(kernel_size=3, stride=2, padding=((0, 1), (1, 1)), ceil_mode=True,
                  count_include_pad=False), (2, 1, 8, 7)),
        Case(dict(kernel_size=2, stride=2, dilation=2, padding=((1, 0), (0, 1)), ceil_mode=True),
             (1, 2, 7, 8)),
        Case(dict(kernel_size=2, padding=1, count_include_pad=False), (1, 2, 7, 38)),
        Case(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
             (2, 1, 8, 41)),
        Case(dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 6)),
        Case(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
             (1, 2, 6, 6)),
    ],
    "globalavgpool2d": [Case({}, (2, 3, 4, 5)), Case({}, (1, 1, 1, 1)), Case({}, (3, 2, 1, 7))],
    "globalmaxpool2d": [Case({}, (2, 3, 4, 5)), Case({}, (1, 1, 1, 1)), Case({}, (3, 2, 1, 7)),
                        Case({}, (2, 3, 5, 4), tied_inputs, gradcheck=False),
                        Case({}, (2, 2, 4, 4), nan_inputs, gradcheck=False)],
    "subsampling": [
        Case({"channels": 3}, (2, 3, 4, 6)),
        Case({"channels": 2, "mode": "average", "bias": False}, (2, 2, 5, 7)),
        Case({"channels": 1, "kernel_size": (3, 2), "mode": "average"}, (1, 1, 7, 5)),
    ],
}


def _two(v):
    return (v, v) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _padding(kwargs):
    """((top, bottom), (left, right)) from the case's ``padding`` argument."""
    p = kwargs.get("padding", 0)
    if isinstance(p, (tuple, list)) and all(isinstance(v, (tuple, list)) for v in p):
        return tuple(_two(v) for v in p)
    ph, pw = _two(p)
    return (ph, ph), (pw, pw)


def _windows(size, kernel, stride, pads, dilation, ceil_mode):
    """The input positions of every window's taps along one axis (the left padding is
    negative), and the end of the padded input.  A window whose last tap lies beyond the
    padding is kept only in ceil mode, only if it starts inside the input or the left padding
    and the previous window did not reach the end of the padded input."""
    before, after = pads
    end = size + after
    span = dilation * (kernel - 1) + 1
    windows, start = [], -before
    while start + span <= end or (ceil_mode and start < size and start - stride + span < end):
        windows.append([start + t * dilation for t in range(kernel)])
        start += stride
    return windows, end


def _geometry(kwargs, h, w):
    kh, kw = _two(kwargs["kernel_size"])
    stride = kwargs.get("stride")
    sh, sw = (kh, kw) if stride is None else _two(stride)
    dh, dw = _two(kwargs.get("dilation", 1))
    pads_h, pads_w = _padding(kwargs)
    ceil_mode = kwargs.get("ceil_mode", False)
    return (_windows(h, kh, sh, pads_h, dh, ceil_mode), _windows(w, kw, sw, pads_w, dw, ceil_mode))


def _loop_pool(x, kwargs, kind):
    n, c, h, w = x.shape
    (rows, end_h), (cols, end_w) = _geometry(kwargs, h, w)
    (top, _), (left, _) = _padding(kwargs)
    include = kwargs.get("count_include_pad", True)
    y = np.empty((n, c, len(rows), len(cols)))
    for i, row_taps in enumerate(rows):
        for j, col_taps in enumerate(cols):
            r_in = [r for r in row_taps if 0 <= r < h]
            c_in = [q for q in col_taps if 0 <= q < w]
            win = x[:, :, r_in][:, :, :, c_in]
            if kind == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                if include:
                    count = (sum(-top <= r < end_h for r in row_taps)
                             * sum(-left <= q < end_w for q in col_taps))
                else:
                    count = len(r_in) * len(c_in)
                y[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return y


def loop_maxpool2d_backward(x, params, kwargs, config, dy):
    """Each output's gradient added to the first maximum of its window (row-major scan); a
    NaN beats every number, the first NaN of the window winning."""
    n, c, h, w = x.shape
    (rows, _), (cols, _) = _geometry(kwargs, h, w)
    dx = np.zeros_like(x, dtype=np.float64)
    for b in range(n):
        for ch in range(c):
            for i, row_taps in enumerate(rows):
                for j, col_taps in enumerate(cols):
                    best = None
                    for r in (r for r in row_taps if 0 <= r < h):
                        for q in (q for q in col_taps if 0 <= q < w):
                            v, top = x[b, ch, r, q], (None if best is None
                                                      else x[b, ch, best[0], best[1]])
                            if (best is None or v > top
                                    or (np.isnan(v) and not np.isnan(top))):
                                best = (r, q)
                    dx[b, ch, best[0], best[1]] += dy[b, ch, i, j]
    return dx


def loop_globalmaxpool2d_backward(x, params, kwargs, config, dy):
    """The gradient of each plane goes to its first maximum (row-major), a NaN winning."""
    dx = np.zeros_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        for ch in range(x.shape[1]):
            plane = x[b, ch]
            nan = np.argwhere(np.isnan(plane))
            r, q = nan[0] if len(nan) else np.argwhere(plane == plane.max())[0]
            dx[b, ch, r, q] = dy[b, ch]
    return dx


def loop_subsampling(x, params, kwargs, config):
    kh, kw = _two(kwargs.get("kernel_size", 2))
    n, c, h, w = x.shape
    y = np.empty((n, c, h // kh, w // kw))
    for i in range(h // kh):
        for j in range(w // kw):
            s = x[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].sum(axis=(2, 3))
            if kwargs.get("mode", "sum") == "average":
                s = s / (kh * kw)
            y[:, :, i, j] = s * params["weight"] + (0.0 if params.get("bias") is None
                                                   else params["bias"])
    return y


LOOP_REFERENCES = {
    "maxpool2d": lambda x, params, kwargs, config: _loop_pool(x, kwargs, "max"),
    "avgpool2d": lambda x, params, kwargs, config: _loop_pool(x, kwargs, "avg"),
    "globalavgpool2d": lambda x, params, kwargs, config: np.array(
        [[x[i, ch].sum() / x[i, ch].size for ch in range(x.shape[1])] for i in range(x.shape[0])]),
    "globalmaxpool2d": lambda x, params, kwargs, config: np.array(
        [[np.nan if np.isnan(x[i, ch]).any() else max(x[i, ch].ravel())
          for ch in range(x.shape[1])] for i in range(x.shape[0])]),
    "subsampling": loop_subsampling,
}

LOOP_BACKWARD = {"maxpool2d": loop_maxpool2d_backward,
                 "globalmaxpool2d": loop_globalmaxpool2d_backward}
