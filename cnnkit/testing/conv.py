"""Conformance cases and loop references of the conv family: ``conv2d``, ``convtranspose2d``.

The loop references read the geometry from the case's constructor arguments (PyTorch's
defaults and "same" rule written out here), never from the layer, so a layer that resolves its
configuration wrongly disagrees with them.
"""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case


#: connection tables of the cases (out x in), written out: one output reading one input, one
#: reading all, runs that wrap; and a block table with a repeated row
_TABLE_4x3 = [[1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 0, 1]]
_TABLE_BLOCKS = [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                 [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1]]


def _conv(cin, cout, k, **kw):
    return dict(in_channels=cin, out_channels=cout, kernel_size=k, **kw)


CASES = {
    "conv2d": [
        Case(_conv(2, 3, 3, bias=False), (2, 2, 5, 5)),                               # nothing
        Case(_conv(3, 4, 3), (2, 3, 6, 7)),                                           # bias
        Case(_conv(3, 2, 3, stride=2, bias=False), (2, 3, 7, 7)),                     # stride, odd
        Case(_conv(3, 4, 3, stride=(2, 1), padding=(1, 2)), (1, 3, 5, 6)),            # batch 1
        Case(_conv(3, 2, (2, 4), padding="same", bias=False), (2, 3, 5, 6)),          # asymmetric
        Case(_conv(2, 3, 3, padding=2, dilation=2), (2, 2, 7, 7)),                    # dilation
        Case(_conv(2, 2, 2, dilation=(2, 1), bias=False), (1, 2, 5, 4)),
        Case(_conv(4, 6, 3, groups=2, padding=1), (2, 4, 5, 5)),                      # groups
        Case(_conv(3, 3, 3, stride=2, padding=1, groups=3, bias=False), (2, 3, 6, 5)),  # depthwise
        Case(_conv(3, 5, 1, bias=False), (2, 3, 4, 3)),                               # 1x1
        Case(_conv(1, 2, (1, 3)), (3, 1, 1, 5)),                                      # odd sizes
        Case(_conv(4, 2, 3, stride=2, padding="same", dilation=2, groups=2), (1, 4, 8, 9)),  # all
        Case(_conv(6, 16, 5), (2, 6, 14, 14)),                                        # LeNet conv2
        Case(_conv(1, 6, 5, padding=2), (2, 1, 28, 28)),                              # LeNet conv1
        Case(_conv(2, 3, 3, padding=(2, 3), bias=False), (1, 2, 4, 7)),               # pad > k/2
        Case(_conv(4, 4, (3, 2), padding=(1, 0), dilation=(1, 2), groups=2), (3, 4, 5, 6)),
        Case(_conv(3, 4, 3, padding="same"), (1, 3, 9, 10)),                          # 3x3 s1 pad
        Case(_conv(3, 4, 3, connections=_TABLE_4x3), (2, 3, 6, 6)),                   # table
        Case(_conv(3, 4, (2, 3), stride=2, padding=1, bias=False,
                   connections=_TABLE_4x3), (2, 3, 7, 6)),                            # table, s2
        Case(_conv(6, 6, 1, connections=_TABLE_BLOCKS), (2, 6, 4, 5)),                # table 1x1
        Case(_conv(2, 3, (3, 2), flip_kernel=True), (2, 2, 5, 6)),                    # true conv
        Case(_conv(2, 4, 3, padding=(1, 2), stride=(1, 2), dilation=(2, 1), groups=2,
                   flip_kernel=True), (1, 2, 6, 7)),                                  # flip + all
        Case(_conv(3, 4, 3, padding=1, connections=_TABLE_4x3, flip_kernel=True),
             (2, 3, 5, 5)),                                                           # both
    ],
    "convtranspose2d": [
        Case(_conv(2, 3, 3, bias=False), (2, 2, 4, 5)),                               # nothing
        Case(_conv(3, 2, 3), (1, 3, 3, 3)),                                           # bias, batch 1
        Case(_conv(2, 2, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 4)),    # stride, pads
        Case(_conv(2, 3, (2, 3), stride=(1, 2), padding=(0, 1), bias=False), (1, 2, 3, 3)),
        Case(_conv(2, 2, 3, dilation=2, padding=2), (2, 2, 4, 4)),                    # dilation
        Case(_conv(4, 6, 3, groups=2, stride=2, output_padding=(1, 0)), (1, 4, 3, 3)),  # groups
        Case(_conv(3, 3, 2, groups=3, bias=False), (2, 3, 2, 3)),                     # depthwise
        Case(_conv(2, 4, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                   groups=2, dilation=(1, 2)), (2, 2, 3, 3)),                         # all
        Case(_conv(4, 3, 4, stride=2, padding=1), (2, 4, 5, 6)),                      # k4 s2 p1
        Case(_conv(2, 3, 3, stride=3, padding=1, output_padding=2), (1, 2, 3, 4)),    # stride 3
        Case(_conv(4, 4, (3, 5), stride=2, padding=(2, 1), output_padding=(1, 0), dilation=(2, 1),
                   groups=2, bias=False), (2, 4, 5, 3)),                              # odd sizes
    ],
}


def _two(v):
    return (v, v) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _same_sides(size, kernel, stride, dilation):
    """TensorFlow's "same": ceil(size / stride) outputs; an odd total pads one more row or
    column at the END (bottom/right)."""
    wanted = -(-size // stride)
    needed = (wanted - 1) * stride + dilation * (kernel - 1) + 1
    total = needed - size if needed > size else 0
    before = total // 2
    return before, total - before


def loop_conv2d(x, params, kwargs, config):
    """Cross-correlation as a sum over kernel offsets, one group at a time (no im2col); a
    connection table zeroes the weight of unconnected pairs, ``flip_kernel`` reads kernel
    offset (p, q) from (kh-1-p, kw-1-q)."""
    w, b = params["weight"], params.get("bias")
    if kwargs.get("connections") is not None:
        w = w * (np.asarray(kwargs["connections"]) != 0)[:, :, None, None]
    if kwargs.get("flip_kernel"):
        w = w[:, :, ::-1, ::-1]
    sh, sw = _two(kwargs.get("stride", 1))
    dh, dw = _two(kwargs.get("dilation", 1))
    groups = kwargs.get("groups", 1)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    padding = kwargs.get("padding", 0)
    if padding == "valid":
        top = bottom = left = right = 0
    elif padding == "same":
        top, bottom = _same_sides(h, kh, sh, dh)
        left, right = _same_sides(wd, kw, sw, dw)
    else:
        (top, left) = (bottom, right) = _two(padding)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, p * dh:p * dh + (oh - 1) * sh + 1:sh,
                           q * dw:q * dw + (ow - 1) * sw + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch,
                                                       w[g * og:(g + 1) * og, :, p, q])
    if b is not None:
        y += b[None, :, None, None]
    return y


def loop_convtranspose2d(x, params, kwargs, config):
    """Scatter form: every input pixel adds weight * value into the (uncropped) output."""
    w, b = params["weight"], params.get("bias")
    sh, sw = _two(kwargs.get("stride", 1))
    ph, pw = _two(kwargs.get("padding", 0))
    oph, opw = _two(kwargs.get("output_padding", 0))
    dh, dw = _two(kwargs.get("dilation", 1))
    groups = kwargs.get("groups", 1)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // groups
    fh = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    fw = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, og * groups, fh, fw))
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                contrib = np.einsum("ncij,co->noij", x[:, g * cg:(g + 1) * cg],
                                    w[g * cg:(g + 1) * cg, :, p, q])
                full[:, g * og:(g + 1) * og, p * dh:p * dh + (h - 1) * sh + 1:sh,
                     q * dw:q * dw + (wd - 1) * sw + 1:sw] += contrib
    y = full[:, :, ph:fh - ph, pw:fw - pw]
    return y if b is None else y + b[None, :, None, None]


LOOP_REFERENCES = {"conv2d": loop_conv2d, "convtranspose2d": loop_convtranspose2d}
