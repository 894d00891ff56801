"""Conformance cases and loop references of the reshape family: ``zeropad2d``, ``pad2d``,
``upsample2d`` (``flatten`` has no variants to check)."""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case

CASES = {
    "zeropad2d": [Case({"padding": 1}, (2, 3, 4, 5)), Case({"padding": (2, 1)}, (1, 2, 3, 3)),
                  Case({"padding": (0, 3, 1, 2)}, (2, 1, 2, 4))],
    "pad2d": [Case({"padding": (1, 2, 0, 3), "value": 0.5}, (2, 2, 3, 4)),
              Case({"padding": (2, 1, 3, 1), "mode": "reflect"}, (1, 2, 5, 4)),
              Case({"padding": (3, 0, 1, 2), "mode": "replicate"}, (2, 1, 3, 3)),
              Case({"padding": (-1, 2, 1, -2), "mode": "reflect"}, (1, 2, 6, 5)),
              Case({"padding": (1, -2, -1, 0)}, (2, 1, 4, 5)),
              Case({"padding": 1, "mode": "replicate"}, (1, 1, 1, 1))],
    "upsample2d": [Case({}, (2, 3, 4, 5)), Case({"scale_factor": (3, 1)}, (1, 2, 2, 3)),
                   Case({"scale_factor": 1}, (1, 1, 3, 2))],
}


def _lrtb(p):
    """``padding``: an int, (h, w), or PyTorch's (left, right, top, bottom)."""
    if isinstance(p, (int, np.integer)):
        left = right = top = bottom = p
    elif len(p) == 2:
        top = bottom = p[0]
        left = right = p[1]
    else:
        left, right, top, bottom = p
    return left, right, top, bottom


def loop_zeropad2d(x, params, kwargs, config):
    left, right, top, bottom = _lrtb(kwargs["padding"])
    n, c, h, w = x.shape
    y = np.zeros((n, c, h + top + bottom, w + left + right))
    y[:, :, top:top + h, left:left + w] = x
    return y


def _source(i, size, mode):
    """The input position padded position ``i`` (input coordinates) copies, None for a
    constant."""
    if 0 <= i < size:
        return i
    if mode == "constant":
        return None
    if mode == "replicate":
        return min(max(i, 0), size - 1)
    return -i if i < 0 else 2 * (size - 1) - i  # reflect, without repeating the edge


def loop_pad2d(x, params, kwargs, config):
    left, right, top, bottom = _lrtb(kwargs["padding"])
    mode, value = kwargs.get("mode", "constant"), kwargs.get("value", 0.0)
    n, c, h, w = x.shape
    # crop first: the kept input is rows [max(-top, 0), h - max(-bottom, 0))
    r0, c0 = max(-top, 0), max(-left, 0)
    kh, kw = h - r0 - max(-bottom, 0), w - c0 - max(-right, 0)
    y = np.empty((n, c, h + top + bottom, w + left + right))
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            si, sj = _source(i - max(top, 0), kh, mode), _source(j - max(left, 0), kw, mode)
            y[:, :, i, j] = value if si is None or sj is None else x[:, :, r0 + si, c0 + sj]
    return y


def loop_upsample2d(x, params, kwargs, config):
    s = kwargs.get("scale_factor", 2)
    sh, sw = (s, s) if isinstance(s, (int, np.integer)) else s
    n, c, h, w = x.shape
    y = np.empty((n, c, h * sh, w * sw))
    for i in range(h * sh):
        for j in range(w * sw):
            y[:, :, i, j] = x[:, :, i // sh, j // sw]
    return y


LOOP_REFERENCES = {"zeropad2d": loop_zeropad2d, "pad2d": loop_pad2d,
                   "upsample2d": loop_upsample2d}
