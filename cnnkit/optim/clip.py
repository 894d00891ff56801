"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` do it:
call after the backward pass and before the optimizer step (``fit`` does, given
``clip_grad_norm=`` or ``clip_grad_value=``)."""
from __future__ import annotations

import math

import numpy as np

from .base import _check_hyper, _parameters, _trainable

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _with_grads(owner, model_or_params):
    return [p for p in _parameters(owner, model_or_params)
            if p.grad is not None and _trainable(p)]


def clip_grad_norm(model_or_params, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale the gradients of a model's trainable parameters together so that their total
    norm (all gradients as one vector; ``norm_type`` 2, 1, ... or ``inf``) is at most
    ``max_norm``; returns the total norm before clipping.  The scale is
    ``max_norm / (norm + 1e-6)``, applied only when it is below 1, as in PyTorch.  A NaN or
    infinite norm raises ``FloatingPointError`` (the step would destroy the weights)."""
    owner = "clip_grad_norm"
    max_norm = _check_hyper(owner, "max_norm", max_norm, low_open=True)
    if norm_type != math.inf:
        norm_type = _check_hyper(owner, "norm_type", norm_type, low_open=True)
    params = _with_grads(owner, model_or_params)
    if not params:
        return 0.0
    grads = [np.asarray(p.grad) for p in params]
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type))
                          for g in grads) ** (1.0 / norm_type))
    if not math.isfinite(total):
        bad = next(p.name for p, g in zip(params, grads) if not np.isfinite(g).all())
        raise FloatingPointError(f"{owner}: the gradient norm is {total} (gradient of {bad} "
                                 "holds NaN/Inf); lower the learning rate")
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for p, g in zip(params, grads):
            p.layer.grads[p.key] = (g * g.dtype.type(scale)).astype(g.dtype, copy=False)
    return total


def clip_grad_value(model_or_params, clip_value: float) -> None:
    """Clamp every gradient element of a model's trainable parameters to
    ``[-clip_value, clip_value]``."""
    clip_value = _check_hyper("clip_grad_value", "clip_value", clip_value, low_open=True)
    for p in _with_grads("clip_grad_value", model_or_params):
        g = np.asarray(p.grad)
        p.layer.grads[p.key] = np.clip(g, -clip_value, clip_value).astype(g.dtype, copy=False)
