"""Stochastic gradient descent (``torch.optim.SGD``'s rule)."""
from __future__ import annotations

import numpy as np

from .base import Optimizer, _check_bool, _check_hyper


# --------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay
    (``torch.optim.SGD``'s rule)::

        g = grad + weight_decay * w
        buf = g (first step)  |  momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov)  |  buf
        w -= lr * g
    """

    def __init__(self, model_or_params, lr=0.001, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov=False, *, maximize=False):
        super().__init__(model_or_params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)

    def _validate(self, h):
        owner = type(self).__name__
        h["lr"] = _check_hyper(owner, "lr", h["lr"])
        h["momentum"] = _check_hyper(owner, "momentum", h["momentum"])
        h["dampening"] = _check_hyper(owner, "dampening", h["dampening"], high=1.0)
        h["weight_decay"] = _check_hyper(owner, "weight_decay", h["weight_decay"])
        h["nesterov"] = _check_bool(owner, "nesterov", h["nesterov"])
        h["maximize"] = _check_bool(owner, "maximize", h["maximize"])
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"{owner}: Nesterov momentum needs momentum > 0 and dampening 0")
        return h

    def step(self):
        h = self.hyper
        lr, mom, damp, wd = h["lr"], h["momentum"], h["dampening"], h["weight_decay"]
        for p, g in self._grads():
            w = p.value
            if h["maximize"]:
                g = -g
            if wd:
                g = g + wd * w
            if mom:
                st = self.state.setdefault(p.name, {})
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = np.array(g, dtype=w.dtype, copy=True)
                else:
                    buf *= mom
                    buf += (1.0 - damp) * g
                g = g + mom * buf if h["nesterov"] else buf
            w -= lr * g
        self.steps += 1
