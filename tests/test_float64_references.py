"""Torch-free float64 references for the adaptive optimizers and BatchNorm's running
statistics.

The torch comparisons in test_optim.py and test_layers_extra.py skip where torch is missing;
these references are plain per-element loops written from the published update rules (the
algorithms in torch.optim's documentation, with torch's amsgrad form: the running maximum of the
raw second moment) and from BatchNorm's definition, so they run everywhere and share nothing
with the code under test."""
import math

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit import optim

STEPS = 25


class Holder:
    """The minimal layer-like object a ``ck.Parameter`` needs."""

    def __init__(self, **params):
        self.name = "h"
        self.params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
        self.grads = {}


# --------------------------------------------------------------------------- scalar references
def adam_ref(theta, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             amsgrad=False, maximize=False, decoupled=False):
    b1, b2 = betas
    theta = list(theta)
    m, v, vmax = [0.0] * len(theta), [0.0] * len(theta), [0.0] * len(theta)
    for t, grad in enumerate(grads, start=1):
        for i in range(len(theta)):
            g = grad(theta)[i]
            if maximize:
                g = -g
            if weight_decay and decoupled:
                theta[i] *= 1 - lr * weight_decay
            elif weight_decay:
                g += weight_decay * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            if amsgrad:
                vmax[i] = max(vmax[i], v[i])
                v_hat = vmax[i] / (1 - b2 ** t)
            else:
                v_hat = v[i] / (1 - b2 ** t)
            theta[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return theta


def rmsprop_ref(theta, grads, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False, maximize=False):
    theta = list(theta)
    n = len(theta)
    sq, gavg, buf = [0.0] * n, [0.0] * n, [0.0] * n
    for grad in grads:
        for i in range(n):
            g = grad(theta)[i]
            if maximize:
                g = -g
            if weight_decay:
                g += weight_decay * theta[i]
            sq[i] = alpha * sq[i] + (1 - alpha) * g * g
            if centered:
                gavg[i] = alpha * gavg[i] + (1 - alpha) * g
                denom = math.sqrt(sq[i] - gavg[i] ** 2) + eps
            else:
                denom = math.sqrt(sq[i]) + eps
            if momentum > 0:
                buf[i] = momentum * buf[i] + g / denom
                theta[i] -= lr * buf[i]
            else:
                theta[i] -= lr * g / denom
    return theta


def adagrad_ref(theta, grads, lr=0.01, lr_decay=0.0, weight_decay=0.0,
                initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    theta = list(theta)
    n = len(theta)
    acc = [initial_accumulator_value] * n
    for t, grad in enumerate(grads, start=1):
        clr = lr / (1 + (t - 1) * lr_decay)
        for i in range(n):
            g = grad(theta)[i]
            if maximize:
                g = -g
            if weight_decay:
                g += weight_decay * theta[i]
            acc[i] += g * g
            theta[i] -= clr * g / (math.sqrt(acc[i]) + eps)
    return theta


CASES = [
    ("adam", {}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.05}),
    ("adam", {"lr": 0.02, "maximize": True}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True, "betas": (0.5, 0.9)}),
    ("rmsprop", {}),
    ("rmsprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.8, "weight_decay": 0.01}),
    ("rmsprop", {"lr": 0.005, "centered": True}),
    ("rmsprop", {"lr": 0.005, "centered": True, "momentum": 0.5, "eps": 1e-4}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.02,
                 "initial_accumulator_value": 0.1, "eps": 1e-8}),
]
DEFAULTS = {"adam": {}, "adamw": {"weight_decay": 0.01}, "rmsprop": {}, "adagrad": {}}


def _reference(name, theta, grads, kwargs):
    kw = {**DEFAULTS[name], **kwargs}
    if name in ("adam", "adamw"):
        return adam_ref(theta, grads, decoupled=name == "adamw", **kw)
    return {"rmsprop": rmsprop_ref, "adagrad": adagrad_ref}[name](theta, grads, **kw)


@pytest.mark.parametrize("name,kwargs", CASES,
                         ids=[f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items())
                              for n, kw in CASES])
def test_adaptive_optimizers_match_a_float64_loop_reference(name, kwargs):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    noise = [rng.standard_normal(12) for _ in range(STEPS)]
    # the gradient depends on the weights, so weight-decay and ordering mistakes show
    grads = [(lambda theta, e=e: [e[i] + 0.5 * theta[i] for i in range(12)]) for e in noise]
    layer = Holder(weight=w0)
    opt = optim.create(name, [ck.Parameter(layer, "weight")], **kwargs)
    for e in noise:
        layer.grads = {"weight": e.reshape(3, 4) + 0.5 * layer.params["weight"]}
        opt.step()
    expected = _reference(name, list(w0.reshape(-1)), grads, kwargs)
    np.testing.assert_allclose(layer.params["weight"].reshape(-1), expected, rtol=1e-10,
                               atol=1e-13)
    assert not np.allclose(layer.params["weight"], w0)  # the steps did move the weights


# --------------------------------------------------------------------------- batch norm
def batchnorm_ref(batches, eps, momentum, weight, bias):
    """Per-channel loops: (training outputs, running mean, running var) after the batches."""
    c = batches[0].shape[1]
    mean_r, var_r = [0.0] * c, [1.0] * c
    outputs = []
    for t, x in enumerate(batches, start=1):
        f = 1.0 / t if momentum is None else momentum
        y = np.empty_like(x)
        for ch in range(c):
            vals = [float(v) for v in np.moveaxis(x, 1, 0)[ch].reshape(-1)]
            m = len(vals)
            mu = sum(vals) / m
            ss = sum((v - mu) ** 2 for v in vals)
            inv = 1.0 / math.sqrt(ss / m + eps)  # training normalises with the biased variance
            y[:, ch] = (x[:, ch] - mu) * inv * weight[ch] + bias[ch]
            mean_r[ch] = (1 - f) * mean_r[ch] + f * mu
            var_r[ch] = (1 - f) * var_r[ch] + f * ss / (m - 1)  # running: unbiased
        outputs.append(y)
    return outputs, np.array(mean_r), np.array(var_r)


@pytest.mark.parametrize("impl", ["numpy", "cython"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("shape", [(5, 3, 4, 2), (6, 3), (4, 3, 5)], ids=["2d", "1d", "1d-seq"])
def test_batchnorm_running_statistics_match_a_float64_loop_reference(shape, momentum, impl):
    rng = np.random.default_rng(4)
    cls = L.BatchNorm2D if len(shape) == 4 else L.BatchNorm1D
    bn = cls(3, eps=1e-3, momentum=momentum, dtype=np.float64, impl=impl)
    bn.params["weight"][...] = rng.uniform(0.5, 2.0, 3)
    bn.params["bias"][...] = rng.standard_normal(3)
    # batches with different means and scales per channel and per step
    batches = [rng.standard_normal(shape) * rng.uniform(0.5, 3.0) + rng.uniform(-2, 2)
               for _ in range(4)]
    outs = [bn.forward(x, training=True) for x in batches]
    ref_outs, mean_r, var_r = batchnorm_ref(batches, 1e-3, momentum, bn.params["weight"],
                                            bn.params["bias"])
    for y, y_ref in zip(outs, ref_outs):
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_mean"], mean_r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.buffers["running_var"], var_r, rtol=1e-12, atol=1e-14)
    assert int(bn.buffers["num_batches_tracked"]) == len(batches)
    # inference normalises with the running statistics
    x = batches[0]
    axis_shape = (1, -1) + (1,) * (x.ndim - 2)
    expected = ((x - mean_r.reshape(axis_shape)) / np.sqrt(var_r.reshape(axis_shape) + 1e-3)
                * bn.params["weight"].reshape(axis_shape) + bn.params["bias"].reshape(axis_shape))
    np.testing.assert_allclose(bn.forward(x, training=False), expected, rtol=1e-10, atol=1e-12)
