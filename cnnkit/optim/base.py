"""The optimizer base class and the hyper-parameter checks every optimizer shares."""
from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------- validation helpers
def _parameters(owner, model_or_params):
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") \
        else model_or_params
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{owner}: expected a model or a list of cnnkit Parameters, got "
                        f"{model_or_params!r}") from None
    if not params:
        raise ValueError(f"{owner}: no parameters to optimize")
    for p in params:
        if not all(hasattr(p, a) for a in ("value", "grad", "name")):
            raise TypeError(f"{owner}: expected a model or a list of cnnkit Parameters, got "
                            f"{p!r}")
    seen = set()
    for p in params:
        if p.name in seen:
            raise ValueError(f"{owner}: parameter {p.name} is listed twice")
        seen.add(p.name)
    return params


def _trainable(p) -> bool:
    """Whether parameter ``p`` belongs to a layer that is not frozen."""
    return getattr(p.layer, "trainable", True)


def _is_number(value):
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_))


def _check_hyper(owner, name, value, *, low=0.0, high=math.inf, low_open=False,
                 high_open=False):
    """A finite real number in [low, high] (ends open when asked); returned as a float."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    if (value < low or (low_open and value == low) or value > high
            or (high_open and value == high)):
        bound = f"{'>' if low_open else '>='} {low}"
        if high != math.inf:
            bound += f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"{owner}: {name} must be {bound}, got {value!r}")
    return float(value)


def _check_int(owner, name, value, *, low=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_bool(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def _copy_tree(x):
    """Deep copy of a state structure (arrays copied, scalars kept as they are)."""
    if isinstance(x, dict):
        return {k: _copy_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy_tree(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_copy_tree(v) for v in x)
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True)
    return x


# --------------------------------------------------------------------------- base class
class Optimizer:
    """Base class: holds the parameters, the hyper-parameters (``hyper``), per-parameter state
    (``state``, keyed by parameter name), optimizer-wide state (``global_state``) and the number
    of ``step()`` calls (``steps``).

    Subclasses validate their hyper-parameters in ``_validate(hyper) -> hyper`` (also applied to
    hyper-parameters restored by ``load_state_dict``) and implement ``step()``.

    ``needs_closure`` is a class trait: False means :func:`cnnkit.train.fit` runs forward and
    backward itself and then calls ``step()``; True means ``fit`` calls ``step(closure)`` and the
    optimizer evaluates ``closure()`` (zero the gradients, forward, backward, return the loss)
    as often as it needs, as :class:`~cnnkit.optim.LBFGS` does.
    """

    needs_closure = False

    def __init__(self, model_or_params, **hyper):
        self.params = _parameters(type(self).__name__, model_or_params)
        self.hyper = self._validate(dict(hyper))
        self.state: dict[str, dict] = {}
        self.global_state: dict = {}
        self.steps = 0

    def _validate(self, hyper: dict) -> dict:
        return hyper

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
        """(parameter, gradient) for every parameter that has a gradient; the gradient is in
        the parameter's dtype (never the stored array itself when a cast was needed).  Frozen
        layers' parameters (``layer.trainable = False``) are left out, so no update and no
        weight decay touches them."""
        for p in self.params:
            g = p.grad
            if g is None or not _trainable(p):
                continue
            w = p.value
            g = np.asarray(g)
            if g.shape != w.shape:
                raise ValueError(f"{type(self).__name__}: gradient of {p.name} has shape "
                                 f"{g.shape}, parameter has {w.shape}")
            if g.dtype != w.dtype:
                g = g.astype(w.dtype)
            yield p, g

    def _param_state(self, p, **init):
        """The state dict of parameter ``p``, created with ``init`` (callables are called with
        the parameter's value) on first use; missing entries are filled the same way."""
        st = self.state.get(p.name)
        if st is None:
            st = self.state[p.name] = {}
        for key, make in init.items():
            if key not in st:
                st[key] = make(p.value) if callable(make) else make
        return st

    def step(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """A copy of everything needed to continue exactly where this optimizer is."""
        return {"hyper": _copy_tree(self.hyper), "steps": self.steps,
                "param_names": [p.name for p in self.params],
                "state": _copy_tree(self.state), "global": _copy_tree(self.global_state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output (possibly from another process: per-parameter state
        is matched by name, or by position when the saved names differ but the saved
        ``param_names`` list has as many entries as this optimizer has parameters)."""
        owner = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"{owner}: load_state_dict expects a dict, got {type(state).__name__}")
        unknown_keys = set(state) - {"hyper", "steps", "param_names", "state", "global"}
        if unknown_keys:
            raise ValueError(f"{owner}: unexpected entries in the state: {sorted(unknown_keys)}")
        hyper = state.get("hyper", {})
        extra = set(hyper) - set(self.hyper)
        if extra:
            raise ValueError(f"{owner}: state has unknown hyper-parameters {sorted(extra)}")
        new_hyper = self._validate({**self.hyper, **_copy_tree(hyper)})
        steps = state.get("steps", 0)
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"{owner}: steps must be a non-negative int, got {steps!r}")
        per_param = state.get("state", {})
        if not isinstance(per_param, dict):
            raise TypeError(f"{owner}: state['state'] must be a dict")
        by_name = {p.name: p for p in self.params}
        unknown = [k for k in per_param if k not in by_name]
        if unknown:
            saved = list(state.get("param_names") or [])
            if len(saved) == len(self.params) and all(k in saved for k in per_param):
                rename = dict(zip(saved, (p.name for p in self.params)))
                per_param = {rename[k]: v for k, v in per_param.items()}
            else:
                raise ValueError(f"{owner}: state for unknown parameters {sorted(unknown)}")
        for name, st in per_param.items():
            if not isinstance(st, dict):
                raise TypeError(f"{owner}: state of {name} must be a dict")
            shape = by_name[name].value.shape
            for key, v in st.items():
                if isinstance(v, np.ndarray) and v.ndim and v.shape != shape:
                    raise ValueError(f"{owner}: state {key!r} of {name} has shape {v.shape}, the "
                                     f"parameter has {shape}")
        glob = state.get("global", {})
        if not isinstance(glob, dict):
            raise TypeError(f"{owner}: state['global'] must be a dict")
        self._check_global_state(glob)
        self.hyper = new_hyper
        self.steps = int(steps)
        self.state = _copy_tree(per_param)
        self.global_state = _copy_tree(glob)

    def _check_global_state(self, glob: dict) -> None:
        """Validate a restored ``global_state`` (subclasses that use it override this)."""

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


def _zeros(w):
    return np.zeros_like(w)
