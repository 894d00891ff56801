"""Optimizers.

Each optimizer is a registered plugin (``cnnkit.builtin.optimizers``); ``create(name, model,
**hyperparameters)`` builds any registered one by name.  The update rules, argument names and
defaults follow ``torch.optim`` (single-tensor code path, one parameter group), so results can be
compared step by step:

=============  ==========  =====================================================================
class          name        torch equivalent
=============  ==========  =====================================================================
``SGD``        "sgd"       ``torch.optim.SGD``
``Adam``       "adam"      ``torch.optim.Adam`` (``weight_decay`` is L2 added to the gradient)
``AdamW``      "adamw"     ``torch.optim.AdamW`` (decoupled decay, default ``weight_decay=0.01``)
``RMSProp``    "rmsprop"   ``torch.optim.RMSprop``
``AdaGrad``    "adagrad"   ``torch.optim.Adagrad``
``LBFGS``      "lbfgs"     ``torch.optim.LBFGS`` (``step(closure)``, optional strong-Wolfe search)
=============  ==========  =====================================================================

Updates are computed in the parameter's own dtype and applied in place to ``layer.params[key]``.
Options of torch that only concern torch's execution (``foreach``, ``fused``, ``capturable``,
``differentiable``) and parameter groups do not exist here.

State
-----
``state_dict()`` returns a nested structure of dicts, lists, NumPy arrays, numbers, strings and
``None``: ``{"hyper": {...}, "steps": int, "param_names": [...], "state": {param name: {...}},
"global": {...}}``.  ``load_state_dict()`` restores it so the optimizer continues bit for bit.
``flatten_state(state)`` turns such a structure into a flat ``{str: numpy.ndarray}`` mapping that
``numpy.savez`` can store without pickling, and ``unflatten_state(flat)`` restores it exactly
(types included: a Python float comes back as a Python float, a tuple as a tuple).
"""
from __future__ import annotations

import math
from urllib.parse import quote, unquote

import numpy as np

from .plugins import get_registry

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "RMSprop", "AdaGrad", "Adagrad",
           "LBFGS", "create", "available", "flatten_state", "unflatten_state"]


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
    """

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
        the parameter's dtype (never the stored array itself when a cast was needed)."""
        for p in self.params:
            g = p.grad
            if g is None:
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
        h["eps"] = _check_hyper(owner, "eps", h["eps"])
        h["weight_decay"] = _check_hyper(owner, "weight_decay", h["weight_decay"])
        h["amsgrad"] = _check_bool(owner, "amsgrad", h["amsgrad"])
        h["maximize"] = _check_bool(owner, "maximize", h["maximize"])
        return h

    def step(self):
        h = self.hyper
        lr, (beta1, beta2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
        init = {"step": 0, "exp_avg": _zeros, "exp_avg_sq": _zeros}
        if h["amsgrad"]:
            init["max_exp_avg_sq"] = _zeros
        for p, g in self._grads():
            w = p.value
            if h["maximize"]:
                g = -g
            st = self._param_state(p, **init)
            st["step"] += 1
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
        h["eps"] = _check_hyper(owner, "eps", h["eps"])
        h["weight_decay"] = _check_hyper(owner, "weight_decay", h["weight_decay"])
        h["momentum"] = _check_hyper(owner, "momentum", h["momentum"])
        h["centered"] = _check_bool(owner, "centered", h["centered"])
        h["maximize"] = _check_bool(owner, "maximize", h["maximize"])
        return h

    def step(self):
        h = self.hyper
        lr, alpha, eps, wd, mom = h["lr"], h["alpha"], h["eps"], h["weight_decay"], h["momentum"]
        init = {"step": 0, "square_avg": _zeros}
        if mom > 0:
            init["momentum_buffer"] = _zeros
        if h["centered"]:
            init["grad_avg"] = _zeros
        for p, g in self._grads():
            w = p.value
            if h["maximize"]:
                g = -g
            st = self._param_state(p, **init)
            st["step"] += 1
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
        for key in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            h[key] = _check_hyper(owner, key, h[key])
        h["maximize"] = _check_bool(owner, "maximize", h["maximize"])
        return h

    def step(self):
        h = self.hyper
        lr, lr_decay, wd, eps = h["lr"], h["lr_decay"], h["weight_decay"], h["eps"]
        acc0 = h["initial_accumulator_value"]
        for p, g in self._grads():
            w = p.value
            if h["maximize"]:
                g = -g
            st = self._param_state(p, step=0, sum=lambda v: np.full_like(v, acc0))
            st["step"] += 1
            if wd:
                g = g + wd * w
            clr = lr / (1.0 + (st["step"] - 1) * lr_decay)
            s = st["sum"]
            s += g * g
            w -= clr * (g / (np.sqrt(s) + eps))
        self.steps += 1


Adagrad = AdaGrad  # torch's spelling


# --------------------------------------------------------------------------- L-BFGS
def _cubic_minimum(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimiser of the cubic interpolating (x1, f1, f1'=g1) and (x2, f2, f2'=g2), clamped to
    ``bounds`` (default: the interval between x1 and x2); the interval's middle when the cubic
    has no real minimiser."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 ** 2 - g1 * g2
    if disc >= 0:
        d2 = np.sqrt(disc)
        if x1 <= x2:
            x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(x, lo), hi)
    return (lo + hi) / 2.0


def _strong_wolfe_search(evaluate, t, d, f, g, gtd, *, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                         max_ls=25):
    """Line search along ``d`` from the current point (loss ``f``, gradient ``g``, directional
    derivative ``gtd``) for a step ``t`` satisfying the strong Wolfe conditions:
    sufficient decrease ``f(t) <= f + c1 t gtd`` and curvature ``|f'(t)| <= -c2 gtd``.

    First brackets an acceptable step (extrapolating with a safeguarded cubic), then zooms into
    the bracket with cubic interpolation, as minFunc and ``torch.optim.LBFGS`` do.  ``evaluate(t)``
    returns ``(loss, flat gradient)`` at ``x + t d`` (leaving the parameters at ``x``).  Returns
    ``(loss, gradient, t, number of evaluations)``.
    """
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = evaluate(t)
    n_evals = 1
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    it = 0
    # -- bracketing phase
    while it < max_ls:
        if f_new > f + c1 * t * gtd or (it > 1 and f_new >= f_prev):
            bracket, bf = [t_prev, t], [f_prev, f_new]
            bg, bgtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bf, bg, bgtd = [t], [f_new], [g_new], [gtd_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bf = [t_prev, t], [f_prev, f_new]
            bg, bgtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        # extrapolate: a cubic step between 1.01 t and 10 t
        lo, hi = t + 0.01 * (t - t_prev), t * 10
        t_old = t
        t = _cubic_minimum(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(lo, hi))
        t_prev, f_prev, g_prev, gtd_prev = t_old, f_new, g_new.copy(), gtd_new
        f_new, g_new = evaluate(t)
        n_evals += 1
        gtd_new = g_new.dot(d)
        it += 1
    if it == max_ls:
        bracket, bf, bg = [0, t], [f, f_new], [g, g_new]
        bgtd = None  # not needed: the zoom phase has no evaluations left
    # -- zoom phase
    insufficient = False
    low, high = (0, 1) if bf[0] <= bf[-1] else (1, 0)
    while not done and it < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_minimum(bracket[0], bf[0], bgtd[0], bracket[1], bf[1], bgtd[1])
        # keep away from the bracket's ends unless the previous trial was already there
        b_max, b_min = max(bracket), min(bracket)
        margin = 0.1 * (b_max - b_min)
        if min(b_max - t, t - b_min) < margin:
            if insufficient or t >= b_max or t <= b_min:
                t = b_max - margin if abs(t - b_max) < abs(t - b_min) else b_min + margin
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        n_evals += 1
        gtd_new = g_new.dot(d)
        it += 1
        if f_new > f + c1 * t * gtd or f_new >= bf[low]:
            bracket[high], bf[high], bg[high], bgtd[high] = t, f_new, g_new.copy(), gtd_new
            low, high = (0, 1) if bf[0] <= bf[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bf[high] = bracket[low], bf[low]
                bg[high], bgtd[high] = bg[low], bgtd[low]
            bracket[low], bf[low], bg[low], bgtd[low] = t, f_new, g_new.copy(), gtd_new
    return bf[low], bg[low], bracket[low], n_evals


class LBFGS(Optimizer):
    """Limited-memory BFGS (``torch.optim.LBFGS``), for full-batch problems.

    ``step(closure)`` runs up to ``max_iter`` iterations (and ``max_eval`` evaluations);
    ``closure()`` must zero the gradients, re-evaluate the model, fill the gradients (backward)
    and return the loss.  The search direction comes from the two-loop recursion over the last
    ``history_size`` curvature pairs; the step is ``lr`` (``min(1, 1/|g|_1) * lr`` on the very
    first iteration) or, with ``line_search_fn="strong_wolfe"``, found by a strong-Wolfe line
    search with cubic interpolation.  Iterations stop when the largest gradient entry is
    ``<= tolerance_grad`` or the step / loss change is below ``tolerance_change``.

    All parameters are handled as one flat vector in their common dtype.  The history lives in
    ``global_state`` and is saved by ``state_dict()``.
    """

    def __init__(self, model_or_params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        if max_eval is None and isinstance(max_iter, (int, np.integer)) \
                and not isinstance(max_iter, bool):
            max_eval = int(max_iter) * 5 // 4
        super().__init__(model_or_params, lr=lr, max_iter=max_iter, max_eval=max_eval,
                         tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                         history_size=history_size, line_search_fn=line_search_fn)

    def _validate(self, h):
        owner = type(self).__name__
        h["lr"] = _check_hyper(owner, "lr", h["lr"])
        h["max_iter"] = _check_int(owner, "max_iter", h["max_iter"])
        h["max_eval"] = _check_int(owner, "max_eval", h["max_eval"])
        h["tolerance_grad"] = _check_hyper(owner, "tolerance_grad", h["tolerance_grad"])
        h["tolerance_change"] = _check_hyper(owner, "tolerance_change", h["tolerance_change"])
        h["history_size"] = _check_int(owner, "history_size", h["history_size"])
        if h["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(f"{owner}: line_search_fn must be None or 'strong_wolfe', got "
                             f"{h['line_search_fn']!r}")
        return h

    def _check_global_state(self, glob):
        owner = type(self).__name__
        n = sum(p.value.size for p in self.params)
        for key in ("d", "prev_flat_grad"):
            v = glob.get(key)
            if v is not None and (not isinstance(v, np.ndarray) or v.shape != (n,)):
                raise ValueError(f"{owner}: state {key!r} must be a vector of {n} values")
        dirs, stps, ro = (glob.get(k, []) for k in ("old_dirs", "old_stps", "ro"))
        if not (isinstance(dirs, list) and isinstance(stps, list) and isinstance(ro, list)
                and len(dirs) == len(stps) == len(ro)):
            raise ValueError(f"{owner}: old_dirs, old_stps and ro must be lists of one length")
        for v in dirs + stps:
            if not isinstance(v, np.ndarray) or v.shape != (n,):
                raise ValueError(f"{owner}: history vectors must have {n} values")

    # -- flat views of the parameters
    def _dtype(self):
        return np.result_type(*(p.value.dtype for p in self.params))

    def _flat_grad(self):
        dtype = self._dtype()
        parts = []
        for p in self.params:
            g = p.grad
            w = p.value
            if g is None:
                parts.append(np.zeros(w.size, dtype=dtype))
            else:
                g = np.asarray(g)
                if g.shape != w.shape:
                    raise ValueError(f"LBFGS: gradient of {p.name} has shape {g.shape}, "
                                     f"parameter has {w.shape}")
                parts.append(g.reshape(-1).astype(dtype, copy=False))
        return np.concatenate(parts)

    def _add(self, t, d):
        offset = 0
        for p in self.params:
            w = p.value
            n = w.size
            w += (t * d[offset:offset + n]).reshape(w.shape).astype(w.dtype, copy=False)
            offset += n

    def _snapshot(self):
        return [p.value.copy() for p in self.params]

    def _restore(self, values):
        for p, v in zip(self.params, values):
            p.value[...] = v

    def step(self, closure=None):
        """One L-BFGS optimisation step (up to ``max_iter`` iterations); returns the loss the
        first call of ``closure`` gave."""
        if closure is None or not callable(closure):
            raise TypeError("LBFGS: step() needs a closure that zeroes the gradients, "
                            "re-evaluates the model, fills the gradients and returns the loss")
        h = self.hyper
        lr, max_iter, max_eval = h["lr"], h["max_iter"], h["max_eval"]
        tol_grad, tol_change = h["tolerance_grad"], h["tolerance_change"]
        history_size = h["history_size"]
        st = self.global_state
        st.setdefault("func_evals", 0)
        st.setdefault("n_iter", 0)
        self.steps += 1

        orig_loss = closure()
        loss = float(orig_loss)
        evals = 1
        st["func_evals"] += 1
        flat_grad = self._flat_grad()
        if np.abs(flat_grad).max() <= tol_grad:
            return orig_loss

        d, t = st.get("d"), st.get("t")
        old_dirs, old_stps, ro = st.get("old_dirs"), st.get("old_stps"), st.get("ro")
        h_diag = st.get("H_diag")
        prev_flat_grad, prev_loss = st.get("prev_flat_grad"), st.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            st["n_iter"] += 1
            # -- search direction
            if st["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                h_diag = 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = y.dot(s)
                if ys > 1e-10:  # keep only pairs with positive curvature
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                # two-loop recursion: d = -H g
                k = len(old_dirs)
                al = [None] * k
                q = -flat_grad
                for i in range(k - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q += -al[i] * old_dirs[i]
                d = q * h_diag
                for i in range(k):
                    be_i = old_dirs[i].dot(d) * ro[i]
                    d += (al[i] - be_i) * old_stps[i]
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss
            # -- step length
            if st["n_iter"] == 1:
                t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr
            else:
                t = lr
            gtd = flat_grad.dot(d)
            if gtd > -tol_change:  # not a descent direction
                break
            ls_evals = 0
            if h["line_search_fn"] == "strong_wolfe":
                x0 = self._snapshot()

                def evaluate(step_len, x0=x0, d=d):
                    self._add(step_len, d)
                    value = float(closure())
                    grad = self._flat_grad()
                    self._restore(x0)
                    return value, grad

                loss, flat_grad, t, ls_evals = _strong_wolfe_search(
                    evaluate, t, d, loss, flat_grad, gtd, tolerance_change=1e-9,
                    max_ls=max_eval - evals)
                self._add(t, d)
                converged = np.abs(flat_grad).max() <= tol_grad
            else:
                self._add(t, d)
                converged = False
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._flat_grad()
                    converged = np.abs(flat_grad).max() <= tol_grad
                    ls_evals = 1
            evals += ls_evals
            st["func_evals"] += ls_evals
            # -- stopping tests
            if n_iter == max_iter or evals >= max_eval or converged:
                break
            if np.abs(d * t).max() <= tol_change:
                break
            if abs(loss - prev_loss) < tol_change:
                break

        st.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                  prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss


# --------------------------------------------------------------------------- factory
def create(name: str, model_or_params, **hyperparameters) -> Optimizer:
    """Build a registered optimizer by name: ``create("sgd", model, lr=0.1)``."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {name!r}")
    return get_registry().optimizer(name)(model_or_params, **hyperparameters)


def available() -> list[str]:
    return sorted(get_registry().optimizers)


# --------------------------------------------------------------------------- flat state
# Key grammar: components joined by "/", the last one followed by "@" and a type tag.  Dict keys
# are percent-encoded (so "/", "@", "#" and "%" never appear raw); int dict keys are "#<int>";
# the empty string is "%%"; list/tuple items are their decimal index.
_TAGS = {"a": "array", "g": "numpy scalar", "f": "float", "i": "int", "b": "bool", "s": "str",
         "n": "None", "d": "dict", "l": "list", "t": "tuple"}


def _encode_key(key, where):
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"flatten_state: dict key {key!r} at {where or '<root>'} is a bool; only "
                        f"str and int keys are supported")
    if isinstance(key, (int, np.integer)):
        return f"#{int(key)}"
    if isinstance(key, str):
        return quote(key, safe="") if key else "%%"
    raise TypeError(f"flatten_state: dict key {key!r} at {where or '<root>'} must be a str or "
                    f"an int")


def _decode_key(comp):
    if comp.startswith("#"):
        return int(comp[1:])
    if comp == "%%":
        return ""
    return unquote(comp)


def flatten_state(state: dict) -> dict[str, np.ndarray]:
    """Flatten a state structure (nested dicts with str/int keys, lists, tuples, NumPy arrays and
    scalars, Python numbers, strings, ``None``) into ``{key: numpy.ndarray}`` with no object
    arrays, so it can go into an ``.npz`` file without pickling.  ``unflatten_state`` inverts it
    exactly (values, dtypes and Python types)."""
    if not isinstance(state, dict):
        raise TypeError(f"flatten_state: expected a dict, got {type(state).__name__}")
    out: dict[str, np.ndarray] = {}

    def put(path, tag, arr):
        out[f"{path}@{tag}"] = arr

    def walk(x, path):
        if isinstance(x, dict):
            if path is not None:
                put(path, "d", np.zeros(0, dtype=np.int8))
            for k, v in x.items():
                comp = _encode_key(k, path)
                walk(v, comp if path is None else f"{path}/{comp}")
        elif isinstance(x, (list, tuple)):
            put(path, "l" if isinstance(x, list) else "t", np.array(len(x), dtype=np.int64))
            for i, v in enumerate(x):
                walk(v, f"{path}/{i}")
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise TypeError(f"flatten_state: object array at {path} cannot be stored "
                                f"without pickling")
            put(path, "a", np.array(x, copy=True))
        elif isinstance(x, np.generic):
            if x.dtype.hasobject:
                raise TypeError(f"flatten_state: object scalar at {path}")
            put(path, "g", np.array(x))
        elif isinstance(x, bool):
            put(path, "b", np.array(x, dtype=np.bool_))
        elif isinstance(x, int):
            if not -2 ** 63 <= x < 2 ** 63:
                raise OverflowError(f"flatten_state: int at {path} does not fit in 64 bits")
            put(path, "i", np.array(x, dtype=np.int64))
        elif isinstance(x, float):
            put(path, "f", np.array(x, dtype=np.float64))
        elif isinstance(x, str):
            put(path, "s", np.array(x, dtype=np.str_))
        elif x is None:
            put(path, "n", np.zeros(0, dtype=np.int8))
        else:
            raise TypeError(f"flatten_state: cannot store {type(x).__name__} at {path}")

    walk(state, None)
    return out


def unflatten_state(flat) -> dict:
    """Inverse of ``flatten_state``: accepts its output (or an ``np.load``-ed ``.npz`` with the
    same keys, in any order)."""
    root = {"tag": "d", "value": None, "children": {}}
    for key in flat.keys():
        if not isinstance(key, str) or "@" not in key:
            raise ValueError(f"unflatten_state: malformed key {key!r}")
        path, tag = key.rsplit("@", 1)
        if tag not in _TAGS or not path:
            raise ValueError(f"unflatten_state: malformed key {key!r}")
        node = root
        for comp in path.split("/"):
            node = node["children"].setdefault(comp, {"tag": None, "value": None,
                                                      "children": {}})
        if node["tag"] is not None:
            raise ValueError(f"unflatten_state: two entries for {path!r}")
        node["tag"], node["value"] = tag, np.asarray(flat[key])

    def build(node, path):
        tag, arr, children = node["tag"], node["value"], node["children"]
        if tag is None:
            raise ValueError(f"unflatten_state: no type entry for {path!r}")
        if tag not in ("d", "l", "t") and children:
            raise ValueError(f"unflatten_state: {path!r} is a {_TAGS[tag]} but has children")
        if tag == "d":
            return {_decode_key(c): build(n, f"{path}/{c}" if path else c)
                    for c, n in children.items()}
        if tag in ("l", "t"):
            length = int(arr)
            if set(children) != {str(i) for i in range(length)}:
                raise ValueError(f"unflatten_state: {path!r} should have items 0..{length - 1}")
            items = [build(children[str(i)], f"{path}/{i}") for i in range(length)]
            return items if tag == "l" else tuple(items)
        if tag == "a":
            return np.array(arr, copy=True)
        if tag == "g":
            return arr[()]
        if tag == "f":
            return float(arr)
        if tag == "i":
            return int(arr)
        if tag == "b":
            return bool(arr)
        if tag == "s":
            return str(arr[()])
        return None

    return build(root, "")
