"""Optimizers.  Each is a registered plugin (``cnnkit.builtin.optimizers``); ``create(name,
model, **hyperparameters)`` builds any registered one by name.  Update rules follow
``torch.optim`` so results can be compared step by step."""
from __future__ import annotations

import math

import numpy as np

from .plugins import get_registry


def _parameters(owner, model_or_params):
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") \
        else model_or_params
    params = list(params)
    if not params:
        raise ValueError(f"{owner}: no parameters to optimize")
    for p in params:
        if not all(hasattr(p, a) for a in ("value", "grad", "name")):
            raise TypeError(f"{owner}: expected a model or a list of cnnkit Parameters, got "
                            f"{p!r}")
    return params


def _check_hyper(owner, name, value, *, low=0.0, high=math.inf, low_open=False):
    if (not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high != math.inf else "")
        raise ValueError(f"{owner}: {name} must be {bound}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: holds parameters, hyper-parameters and per-parameter state."""

    def __init__(self, model_or_params, **hyper):
        self.params = _parameters(type(self).__name__, model_or_params)
        self.hyper = hyper
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.steps = 0

    @property
    def lr(self):
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value):
        self.hyper["lr"] = _check_hyper(type(self).__name__, "lr", value)

    def zero_grad(self):
        for p in self.params:
            p.layer.grads.pop(p.key, None)

    def _grads(self):
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if g.shape != p.value.shape:
                raise ValueError(f"{type(self).__name__}: gradient of {p.name} has shape "
                                 f"{g.shape}, parameter has {p.value.shape}")
            yield p, g

    def step(self):
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"hyper": dict(self.hyper), "steps": self.steps,
                "state": {k: {n: np.array(v, copy=True) for n, v in s.items()}
                          for k, s in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        names = {p.name for p in self.params}
        unknown = set(state.get("state", {})) - names
        if unknown:
            raise ValueError(f"{type(self).__name__}: state for unknown parameters "
                             f"{sorted(unknown)}")
        self.hyper.update(state.get("hyper", {}))
        self.steps = int(state.get("steps", 0))
        self.state = {k: {n: np.array(v, copy=True) for n, v in s.items()}
                      for k, s in state.get("state", {}).items()}


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay
    (``torch.optim.SGD``'s rule)."""

    def __init__(self, model_or_params, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        owner = "SGD"
        super().__init__(model_or_params,
                         lr=_check_hyper(owner, "lr", lr),
                         momentum=_check_hyper(owner, "momentum", momentum),
                         dampening=_check_hyper(owner, "dampening", dampening, high=1.0),
                         weight_decay=_check_hyper(owner, "weight_decay", weight_decay),
                         nesterov=bool(nesterov))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")

    def step(self):
        h = self.hyper
        lr, mom, damp, wd = h["lr"], h["momentum"], h["dampening"], h["weight_decay"]
        for p, g in self._grads():
            w = p.value
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
            w -= (lr * g).astype(w.dtype, copy=False)
        self.steps += 1


def create(name: str, model_or_params, **hyperparameters) -> Optimizer:
    """Build a registered optimizer by name: ``create("sgd", model, lr=0.1)``."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {name!r}")
    return get_registry().optimizer(name)(model_or_params, **hyperparameters)


def available() -> list[str]:
    return sorted(get_registry().optimizers)
