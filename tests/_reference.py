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
