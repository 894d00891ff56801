"""Tiny loop-based references for the kernel tests: obviously correct, hopelessly slow.

They share no code with the variants they check; use them on small shapes only.
"""
import math

import numpy as np


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    top, bottom, left, right = padding
    dh, dw = dilation
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow), dtype=np.float64)
    for img in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if b is None else float(b[oc])
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                r = i * sh - top + p * dh
                                s = j * sw - left + q * dw
                                if 0 <= r < h and 0 <= s < wd:
                                    acc += float(x[img, g * cg + ci, r, s]) * float(w[oc, ci, p, q])
                    y[img, oc, i, j] = acc
    return y


def pool_output_size(size, k, s, p, ceil_mode):
    if ceil_mode:
        out = math.ceil((size + 2 * p - k) / s) + 1
        if (out - 1) * s >= size + p:
            out -= 1
    else:
        out = (size + 2 * p - k) // s + 1
    return out


def maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode):
    n, c, h, w = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    oh = pool_output_size(h, kh, sh, ph, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = -math.inf
                    for p in range(kh):
                        for q in range(kw):
                            r, s = i * sh - ph + p, j * sw - pw + q
                            if 0 <= r < h and 0 <= s < w:
                                best = max(best, float(x[a, ch, r, s]))
                    y[a, ch, i, j] = best
    return y


def avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    n, c, h, w = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    oh = pool_output_size(h, kh, sh, ph, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    total, inside, padded = 0.0, 0, 0
                    for p in range(kh):
                        for q in range(kw):
                            r, s = i * sh - ph + p, j * sw - pw + q
                            if r < h + ph and s < w + pw:
                                padded += 1  # positions within input + padding
                            if 0 <= r < h and 0 <= s < w:
                                total += float(x[a, ch, r, s])
                                inside += 1
                    y[a, ch, i, j] = total / (padded if count_include_pad else inside)
    return y


def same_padding(size, kernel, stride, dilation):
    """(before, after) padding of one axis under TensorFlow's documented "SAME" rule.

    Written from TensorFlow's formula (``pad = max(k_eff - stride, 0)`` when the size is a
    multiple of the stride, ``max(k_eff - size % stride, 0)`` otherwise; the odd extra goes
    after), not from the output-size form the library uses."""
    k_eff = dilation * (kernel - 1) + 1
    if size % stride == 0:
        total = max(k_eff - stride, 0)
    else:
        total = max(k_eff - size % stride, 0)
    return total // 2, total - total // 2


def conv2d_backward(x, w, dy, stride, padding, dilation, groups):
    """(dx, dw, db) of :func:`conv2d_forward` for the output gradient ``dy``, by the same loops."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    top, _, left, _ = padding
    dh, dw_ = dilation
    og = o // groups
    dx = np.zeros(x.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    db = np.zeros(o, dtype=np.float64)
    for img in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    gy = float(dy[img, oc, i, j])
                    db[oc] += gy
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                r = i * sh - top + p * dh
                                s = j * sw - left + q * dw_
                                if 0 <= r < h and 0 <= s < wd:
                                    dx[img, g * cg + ci, r, s] += gy * float(w[oc, ci, p, q])
                                    dw[oc, ci, p, q] += gy * float(x[img, g * cg + ci, r, s])
    return dx, dw, db


def maxpool2d_backward(x, dy, kernel_size, stride, padding, ceil_mode):
    """Input gradient of max pooling: each window's gradient goes to its FIRST maximum in
    row-major window order (PyTorch's and cnnkit's documented tie rule); a NaN beats every
    number (the first NaN of the window wins), and a window of -inf sends it to its first
    in-input position."""
    n, c, h, w = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    dx = np.zeros(x.shape, dtype=np.float64)
    for a in range(n):
        for ch in range(c):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    best, where = -math.inf, None
                    for p in range(kh):
                        for q in range(kw):
                            r, s = i * sh - ph + p, j * sw - pw + q
                            if not (0 <= r < h and 0 <= s < w):
                                continue
                            v = float(x[a, ch, r, s])
                            if (where is None or v > best
                                    or (math.isnan(v) and not math.isnan(best))):
                                best, where = v, (r, s)
                    if where is not None:
                        dx[(a, ch) + where] += float(dy[a, ch, i, j])
    return dx


def conv2d_forward_taps(x, w, b, stride, padding, dilation, groups):
    """:func:`conv2d_forward` vectorised over batch, channels and output positions, looping over
    the kernel taps only (fast enough for fuzzing; still shares nothing with the variants)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    top, bottom, left, right = padding
    dh, dw = dilation
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + top + bottom, wd + left + right), dtype=np.float64)
    xp[:, :, top:top + h, left:left + wd] = x
    og = o // groups
    y = np.zeros((n, o, oh, ow), dtype=np.float64)
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = np.asarray(w[g * og:(g + 1) * og], dtype=np.float64)
        for p in range(kh):
            for q in range(kw):
                r0, s0 = p * dh, q * dw
                patch = xg[:, :, r0:r0 + (oh - 1) * sh + 1:sh, s0:s0 + (ow - 1) * sw + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch, wg[:, :, p, q])
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return y


def pool2d_forward_taps(x, kind, kernel_size, stride, padding, ceil_mode,
                        count_include_pad=True):
    """:func:`maxpool2d_forward` / :func:`avgpool2d_forward` vectorised over batch, channels and
    output positions, looping over the window taps only."""
    n, c, h, w = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    oh = pool_output_size(h, kh, sh, ph, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, ceil_mode)
    # big enough for every window, including ceil-mode windows hanging past the padding
    H, W = max((oh - 1) * sh + kh, h + ph), max((ow - 1) * sw + kw, w + pw)
    fill = -math.inf if kind == "max" else 0.0
    xp = np.full((n, c, H, W), fill)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    inside = np.zeros((H, W))
    inside[ph:ph + h, pw:pw + w] = 1.0
    padded = np.zeros((H, W))
    padded[:h + 2 * ph, :w + 2 * pw] = 1.0  # positions within input + padding
    acc = np.full((n, c, oh, ow), fill)
    count = np.zeros((oh, ow))
    for p in range(kh):
        for q in range(kw):
            sl = (slice(p, p + (oh - 1) * sh + 1, sh), slice(q, q + (ow - 1) * sw + 1, sw))
            if kind == "max":
                acc = np.maximum(acc, xp[(..., *sl)])
            else:
                acc = acc + xp[(..., *sl)]
                count += (padded if count_include_pad else inside)[sl]
    return acc if kind == "max" else acc / count
