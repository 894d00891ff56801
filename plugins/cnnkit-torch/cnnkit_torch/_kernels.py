"""The PyTorch computations behind the ``"torch"`` variants (imported on first use).

Arrays cross into PyTorch without copies (``torch.from_numpy``) and results come back the same
way (``Tensor.numpy()`` of a tensor PyTorch just allocated).  Forward passes run under
``torch.no_grad()``; backward passes call PyTorch's own gradient kernels (``aten.*_backward``)
on what the forward kept, so no autograd graph is built or kept alive between the two calls.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

aten = torch.ops.aten


def _apply_thread_setting():
    value = os.environ.get("CNNKIT_TORCH_THREADS", "").strip()
    if not value:
        return
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"CNNKIT_TORCH_THREADS must be a positive integer, got {value!r}")
    torch.set_num_threads(n)


_apply_thread_setting()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory.  PyTorch cannot wrap read-only memory (it warns and the
    tensor would claim to be writable), so a read-only array is copied first; nothing here
    writes to the tensors made from inputs."""
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(np.ascontiguousarray(a))


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy())


# --------------------------------------------------------------------------------------- conv2d
def conv2d_forward(x, params, config, need_backward):
    w, b = params["weight"], params.get("bias")
    top, bottom, left, right = (int(p) for p in config["padding"])
    stride = tuple(int(s) for s in config["stride"])
    dilation = tuple(int(d) for d in config["dilation"])
    groups = int(config["groups"])
    xt, wt = _tensor(x), _tensor(w)
    bt = None if b is None else _tensor(b)
    table = config.get("connections")
    mask = None if table is None else torch.tensor(table, dtype=torch.bool)[:, :, None, None]
    flip = bool(config.get("flip_kernel"))
    with torch.no_grad():
        # the kernel applied: unconnected pairs zeroed, turned 180 degrees for flip_kernel
        if mask is not None:
            wt = torch.where(mask, wt, torch.zeros((), dtype=wt.dtype))
        if flip:
            wt = wt.flip(2, 3)
        if top == bottom and left == right:
            xin, padding = xt, (top, left)
        else:  # F.conv2d pads symmetrically only: pad explicitly, undo it in backward
            xin, padding = F.pad(xt, (left, right, top, bottom)), (0, 0)
        y = F.conv2d(xin, wt, bt, stride, padding, dilation, groups)
    if not need_backward:
        return _array(y), None
    crop = None if xin is xt else (top, left, x.shape[2], x.shape[3])
    return _array(y), (xin, wt, b is not None, stride, padding, dilation, groups, crop, mask,
                       flip)


def conv2d_backward(dy, ctx, need_input_grad=True):
    xin, wt, has_bias, stride, padding, dilation, groups, crop, mask, flip = ctx
    with torch.no_grad():
        dx, dw, db = aten.convolution_backward(
            _tensor(dy), xin, wt, [wt.shape[0]] if has_bias else None, stride, padding, dilation,
            False, (0, 0), groups, [bool(need_input_grad), True, has_bias])
        # the gradient of the stored weight: turned back, exactly zero where unconnected
        if flip:
            dw = dw.flip(2, 3)
        if mask is not None:
            dw = torch.where(mask, dw, torch.zeros((), dtype=dw.dtype))
    grads = {"weight": _array(dw)}
    if has_bias:
        grads["bias"] = _array(db)
    if not need_input_grad:
        return None, grads
    if crop is not None:
        top, left, h, w = crop
        dx = dx[:, :, top:top + h, left:left + w]
    return _array(dx), grads


# --------------------------------------------------------------------------------------- pooling
def _pool_args(config):
    return ([int(k) for k in config["kernel_size"]], [int(s) for s in config["stride"]],
            [int(p) for p in config["padding"]], bool(config["ceil_mode"]))


def maxpool2d_forward(x, params, config, need_backward):
    kernel, stride, padding, ceil_mode = _pool_args(config)
    xt = _tensor(x)
    with torch.no_grad():
        if not need_backward:
            return _array(F.max_pool2d(xt, kernel, stride, padding, 1, ceil_mode)), None
        y, indices = F.max_pool2d(xt, kernel, stride, padding, 1, ceil_mode, return_indices=True)
    return _array(y), (xt, indices, kernel, stride, padding, ceil_mode)


def maxpool2d_backward(dy, ctx):
    xt, indices, kernel, stride, padding, ceil_mode = ctx
    with torch.no_grad():
        dx = aten.max_pool2d_with_indices_backward(_tensor(dy), xt, kernel, stride, padding,
                                                   [1, 1], ceil_mode, indices)
    return _array(dx), {}


def avgpool2d_forward(x, params, config, need_backward):
    kernel, stride, padding, ceil_mode = _pool_args(config)
    include = bool(config.get("count_include_pad", True))
    xt = _tensor(x)
    with torch.no_grad():
        y = F.avg_pool2d(xt, kernel, stride, padding, ceil_mode, include)
    if not need_backward:
        return _array(y), None
    return _array(y), (xt, kernel, stride, padding, ceil_mode, include)


def avgpool2d_backward(dy, ctx):
    xt, kernel, stride, padding, ceil_mode, include = ctx
    with torch.no_grad():
        dx = aten.avg_pool2d_backward(_tensor(dy), xt, kernel, stride, padding, ceil_mode,
                                      include, None)
    return _array(dx), {}


# ----------------------------------------------------------------------------------- activations
_ACTIVATIONS = {
    # kind: (forward, backward from the output y)
    "relu": (torch.relu, lambda dy, y: aten.threshold_backward(dy, y, 0)),
    "sigmoid": (torch.sigmoid, aten.sigmoid_backward),
    "tanh": (torch.tanh, aten.tanh_backward),
}


def activation_forward(kind, x, need_backward):
    forward, _ = _ACTIVATIONS[kind]
    with torch.no_grad():
        y = forward(_tensor(x))
    return _array(y), (y if need_backward else None)


def activation_backward(kind, dy, y):
    _, backward = _ACTIVATIONS[kind]
    with torch.no_grad():
        dx = backward(_tensor(dy), y)
    return _array(dx), {}


# ----------------------------------------------------------------------------------------- dense
def dense_forward(x, params, config, need_backward):
    w, b = params["weight"], params.get("bias")
    xt, wt = _tensor(x), _tensor(w)
    with torch.no_grad():
        y = F.linear(xt, wt, None if b is None else _tensor(b))
    return _array(y), ((xt, wt, b is not None) if need_backward else None)


def dense_backward(dy, ctx, need_input_grad=True):
    xt, wt, has_bias = ctx
    dyt = _tensor(dy)
    with torch.no_grad():
        grads = {"weight": _array(dyt.t().mm(xt))}
        if has_bias:
            grads["bias"] = _array(dyt.sum(dim=0))
        dx = _array(dyt.mm(wt)) if need_input_grad else None
    return dx, grads
