"""The cnnkit plugin of cnnkit-example: everything it registers, and the hooks that do it.

cnnkit imports this module when it loads its registry (entry point ``example`` in the
``cnnkit`` group, see pyproject.toml), in every program that uses cnnkit.  So it stays light:
NumPy and cnnkit only; the compiled kernel is imported the first time it computes.

Registered here:

- layer type ``"mish"`` (:class:`Mish`), y = x * tanh(softplus(x)), with two variants:
  ``"numpy"``, the plain reference every other variant of the type is checked against, and
  ``"cython"``, the compiled kernel (priority 100, so it is picked automatically);
- optimizer ``"lion"`` (:class:`Lion`), the sign-momentum optimizer of Chen et al. (2023);
- initializer ``"trunc_normal"`` (:func:`trunc_normal`), a normal distribution truncated at
  two standard deviations.
"""
from __future__ import annotations

import numpy as np

import cnnkit
from cnnkit.layers import Layer
from cnnkit.optim import Optimizer

__all__ = ["Mish", "MishNumpy", "MishCython", "Lion", "trunc_normal"]


# --------------------------------------------------------------------------------- layer type
class Mish(Layer):
    """Mish activation (Misra, 2019): y = x * tanh(softplus(x)), element-wise, any rank.

    A layer class holds parameters and hyper-parameters (Mish has none) and shape inference;
    the maths lives in the variants below.
    """

    layer_type = "mish"
    input_rank = None  # any rank, batch first

    def __init__(self, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)

    def check_input_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"{self.name} (Mish): expected an input with a batch axis, got "
                             f"shape {tuple(shape)}")


# ----------------------------------------------------------------------------------- variants
def _tanh_softplus(x):
    """tanh(softplus(x)) and sigmoid(x) in NumPy, without overflow (see _mish.pyx)."""
    e = np.exp(np.minimum(x, 20.0))
    n = e * (e + 2.0)
    t = np.where(x > 20.0, 1.0, n / (n + 2.0))
    s = np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), e / (1.0 + e))
    return t.astype(x.dtype, copy=False), s.astype(x.dtype, copy=False)


class MishNumpy:
    """The reference: obviously correct NumPy, the yardstick of the conformance kit."""

    @staticmethod
    def forward(x, params, config, need_backward):
        t, _ = _tanh_softplus(x)
        return x * t, (x if need_backward else None)  # keep x only when backward will follow

    @staticmethod
    def backward(dy, x):
        t, s = _tanh_softplus(x)
        return dy * (t + x * s * (1.0 - t * t)), {}  # (dx, no parameter gradients)


_kernel = None


def _mish_kernel():
    """The compiled module, imported on first use (keeps `import cnnkit` fast)."""
    global _kernel
    if _kernel is None:
        from cnnkit_example import _mish

        _kernel = _mish
    return _kernel


class MishCython:
    """The Cython kernel: flat views in, a new array out; inputs are never written."""

    @staticmethod
    def forward(x, params, config, need_backward):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        _mish_kernel().mish_forward(x.reshape(-1), y.reshape(-1))
        return y, (x if need_backward else None)

    @staticmethod
    def backward(dy, x):
        dy = np.ascontiguousarray(dy, dtype=x.dtype)
        dx = np.empty_like(x)
        _mish_kernel().mish_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
        return dx, {}


# ---------------------------------------------------------------------------------- optimizer
def _number(owner, name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or value < low or (high is not None and value >= high):
        bound = f">= {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


class Lion(Optimizer):
    """Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023)::

        c = beta1 * m + (1 - beta1) * g          # interpolation used for the update
        w = w - lr * (sign(c) + weight_decay * w)  # decoupled weight decay
        m = beta2 * m + (1 - beta2) * g          # momentum tracked with beta2

    Every coordinate moves by exactly ``lr`` (plus decay), so Lion wants a learning rate 3-10x
    smaller than AdamW's and a weight decay 3-10x larger.  State: ``exp_avg`` (m) per parameter.
    """

    def __init__(self, model_or_params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(model_or_params, lr=lr, betas=betas, weight_decay=weight_decay)

    def _validate(self, h):
        owner = type(self).__name__
        h["lr"] = _number(owner, "lr", h["lr"], 0.0)
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        h["betas"] = tuple(_number(owner, f"betas[{i}]", b, 0.0, 1.0)
                           for i, b in enumerate(betas))
        h["weight_decay"] = _number(owner, "weight_decay", h["weight_decay"], 0.0)
        return h

    def step(self):
        lr, (beta1, beta2), wd = self.hyper["lr"], self.hyper["betas"], self.hyper["weight_decay"]
        for p, g in self._grads():
            w = p.value
            m = self._param_state(p, exp_avg=np.zeros_like)["exp_avg"]
            update = np.sign(beta1 * m + (1.0 - beta1) * g)
            if wd:
                w *= 1.0 - lr * wd
            w -= lr * update
            m *= beta2
            m += (1.0 - beta2) * g
        self.steps += 1


# -------------------------------------------------------------------------------- initializer
def trunc_normal(shape, *, fan_in, fan_out, rng, dtype, std=0.02, mean=0.0, a=-2.0, b=2.0):
    """Normal(mean, std) truncated to [mean + a*std, mean + b*std] by redrawing the values that
    fall outside (the ViT/timm default: std 0.02, two standard deviations)."""
    if not std > 0 or not a < b:
        raise ValueError(f"trunc_normal: need std > 0 and a < b, got std={std}, a={a}, b={b}")
    out = rng.standard_normal(shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = (out < a) | (out > b)
    return (mean + std * out).astype(dtype)


# -------------------------------------------------------------------------------------- hooks
@cnnkit.hookimpl
def cnnkit_register_layers(register):
    register("mish", Mish)


@cnnkit.hookimpl
def cnnkit_register_variants(register):
    register("mish", "numpy", MishNumpy, priority=0, dtypes=("float32", "float64"),
             description="NumPy; the reference")
    register("mish", "cython", MishCython, priority=100, dtypes=("float32", "float64"),
             description="Cython, GIL released, OpenMP for large arrays")


@cnnkit.hookimpl
def cnnkit_register_optimizers(register):
    register("lion", Lion)


@cnnkit.hookimpl
def cnnkit_register_initializers(register):
    register("trunc_normal", trunc_normal)
