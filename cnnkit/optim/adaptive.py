"""Optimizers with per-parameter adaptive step sizes: Adam, AdamW, RMSProp, AdaGrad
(``torch.optim``'s rules)."""
from __future__ import annotations

import numpy as np

from .base import Optimizer, _check_bool, _check_hyper, _zeros


def _check_hypers(h, owner, reals=(), bools=()):
    """Check the named non-negative reals, then the named flags, of the hyper-parameters
    ``h`` in place."""
    for key in reals:
        h[key] = _check_hyper(owner, key, h[key])
    for key in bools:
        h[key] = _check_bool(owner, key, h[key])
    return h


def _param_steps(opt, init):
    """(value, gradient, state) for every parameter with a gradient: the gradient negated when
    maximizing, the state created from ``init`` on first use and its step counter advanced."""
    maximize = opt.hyper["maximize"]
    for p, g in opt._grads():
        if maximize:
            g = -g
        st = opt._param_state(p, **init)
        st["step"] += 1
        yield p.value, g, st


# --------------------------------------------------------------------------- Adam / AdamW
class Adam(Optimizer):
    """Adam (``torch.optim.Adam``): ``weight_decay`` is L2 added to the gradient; ``amsgrad``
    normalises by the running maximum of the second moment::

        g = grad + weight_decay * w
        m = beta1 * m + (1 - beta1) * g ;  v = beta2 * v + (1 - beta2) * g**2
        w -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    _decoupled = False

    def __init__(self, model_or_params, lr=0.001, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False, *, maximize=False):
        super().__init__(model_or_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)

    def _validate(self, h):
        owner = type(self).__name__
        h["lr"] = _check_hyper(owner, "lr", h["lr"])
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        h["betas"] = tuple(_check_hyper(owner, f"betas[{i}]", b, high=1.0, high_open=True)
                           for i, b in enumerate(betas))
        return _check_hypers(h, owner, ("eps", "weight_decay"), ("amsgrad", "maximize"))

    def step(self):
        h = self.hyper
        lr, (beta1, beta2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
        init = {"step": 0, "exp_avg": _zeros, "exp_avg_sq": _zeros}
        if h["amsgrad"]:
            init["max_exp_avg_sq"] = _zeros
        for w, g, st in _param_steps(self, init):
            t = st["step"]
            if wd:
                if self._decoupled:
                    w *= 1.0 - lr * wd
                else:
                    g = g + wd * w
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m += (1.0 - beta1) * (g - m)
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            step_size = lr / (1.0 - beta1 ** t)
            bc2_sqrt = (1.0 - beta2 ** t) ** 0.5
            if h["amsgrad"]:
                vmax = st["max_exp_avg_sq"]
                np.maximum(vmax, v, out=vmax)
                denom = np.sqrt(vmax) / bc2_sqrt + eps
            else:
                denom = np.sqrt(v) / bc2_sqrt + eps
            w -= step_size * (m / denom)
        self.steps += 1


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay, ``w *= 1 - lr *
    weight_decay`` before the Adam update; ``weight_decay`` defaults to 0.01 as in torch."""

    _decoupled = True

    def __init__(self, model_or_params, lr=0.001, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.01, amsgrad=False, *, maximize=False):
        super().__init__(model_or_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)


# --------------------------------------------------------------------------- RMSProp
class RMSProp(Optimizer):
    """RMSProp (``torch.optim.RMSprop``)::

        g = grad + weight_decay * w
        s = alpha * s + (1 - alpha) * g**2
        centered: a = alpha * a + (1 - alpha) * g ;  denom = sqrt(s - a**2) + eps
        otherwise denom = sqrt(s) + eps
        momentum > 0: buf = momentum * buf + g / denom ;  w -= lr * buf
        otherwise w -= lr * g / denom
    """

    def __init__(self, model_or_params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, *, maximize=False):
        super().__init__(model_or_params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize)

    def _validate(self, h):
        owner = type(self).__name__
        h["lr"] = _check_hyper(owner, "lr", h["lr"])
        h["alpha"] = _check_hyper(owner, "alpha", h["alpha"], high=1.0)
        return _check_hypers(h, owner, ("eps", "weight_decay", "momentum"),
                             ("centered", "maximize"))

    def step(self):
        h = self.hyper
        lr, alpha, eps, wd, mom = h["lr"], h["alpha"], h["eps"], h["weight_decay"], h["momentum"]
        init = {"step": 0, "square_avg": _zeros}
        if mom > 0:
            init["momentum_buffer"] = _zeros
        if h["centered"]:
            init["grad_avg"] = _zeros
        for w, g, st in _param_steps(self, init):
            if wd:
                g = g + wd * w
            sq = st["square_avg"]
            sq *= alpha
            sq += (1.0 - alpha) * (g * g)
            if h["centered"]:
                ga = st["grad_avg"]
                ga += (1.0 - alpha) * (g - ga)
                avg = np.sqrt(sq - ga * ga)
            else:
                avg = np.sqrt(sq)
            avg += eps
            if mom > 0:
                buf = st["momentum_buffer"]
                buf *= mom
                buf += g / avg
                w -= lr * buf
            else:
                w -= lr * (g / avg)
        self.steps += 1


RMSprop = RMSProp  # torch's spelling


# --------------------------------------------------------------------------- AdaGrad
class AdaGrad(Optimizer):
    """AdaGrad (``torch.optim.Adagrad``)::

        g = grad + weight_decay * w
        clr = lr / (1 + (t - 1) * lr_decay)
        s += g**2      (s starts at initial_accumulator_value)
        w -= clr * g / (sqrt(s) + eps)
    """

    def __init__(self, model_or_params, lr=0.01, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False):
        super().__init__(model_or_params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         maximize=maximize)

    def _validate(self, h):
        owner = type(self).__name__
        return _check_hypers(h, owner, ("lr", "lr_decay", "weight_decay",
                                         "initial_accumulator_value", "eps"), ("maximize",))

    def step(self):
        h = self.hyper
        lr, lr_decay, wd, eps = h["lr"], h["lr_decay"], h["weight_decay"], h["eps"]
        acc0 = h["initial_accumulator_value"]
        init = {"step": 0, "sum": lambda v: np.full_like(v, acc0)}
        for w, g, st in _param_steps(self, init):
            if wd:
                g = g + wd * w
            clr = lr / (1.0 + (st["step"] - 1) * lr_decay)
            s = st["sum"]
            s += g * g
            w -= clr * (g / (np.sqrt(s) + eps))
        self.steps += 1


Adagrad = AdaGrad  # torch's spelling
