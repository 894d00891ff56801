"""Losses.  ``forward(prediction, target)`` returns the mean loss as a Python float and keeps
what ``backward()`` needs; ``backward()`` returns the gradient w.r.t. the prediction."""
from __future__ import annotations

import numpy as np

from .layers import FLOAT_DTYPES


class Loss:
    name = "loss"

    def __init__(self):
        self._ctx = None

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def _check_prediction(self, pred, ndim=None):
        if not isinstance(pred, np.ndarray) or pred.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}: prediction must be a float32/float64 numpy "
                            f"array, got {getattr(pred, 'dtype', type(pred).__name__)}")
        if ndim is not None and pred.ndim != ndim:
            raise ValueError(f"{type(self).__name__}: expected prediction of shape "
                             f"(N, classes), got {pred.shape}")
        if pred.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: empty batch")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"{type(self).__name__}: prediction contains NaN or Inf")

    def backward(self):
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}: backward() needs forward() first")
        grad = self._grad()
        self._ctx = None
        return grad


class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(logits) against integer class labels (numerically stable:
    log-sum-exp with the row maximum subtracted)."""

    def forward(self, logits, labels):
        self._check_prediction(logits, ndim=2)
        labels = np.asarray(labels)
        n, k = logits.shape
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"SoftmaxCrossEntropy: labels must be integers of shape ({n},), got "
                             f"{labels.dtype} array of shape {labels.shape}")
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"SoftmaxCrossEntropy: labels must lie in [0, {k}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        log_probs = shifted - np.log(sums)
        idx = np.arange(n)
        loss = -log_probs[idx, labels].mean()
        self._ctx = (exp / sums, labels)
        return float(loss)

    def _grad(self):
        probs, labels = self._ctx
        grad = probs.copy()
        grad[np.arange(len(labels)), labels] -= 1.0
        grad /= len(labels)
        return grad


class MSE(Loss):
    """Mean squared error over every element."""

    def forward(self, prediction, target):
        self._check_prediction(prediction)
        target = np.asarray(target)
        if target.shape != prediction.shape:
            raise ValueError(f"MSE: target shape {target.shape} does not match prediction shape "
                             f"{prediction.shape}")
        diff = prediction - target.astype(prediction.dtype, copy=False)
        self._ctx = diff
        return float(np.mean(diff * diff))

    def _grad(self):
        diff = self._ctx
        return (2.0 / diff.size) * diff


def accuracy(logits, labels) -> float:
    """Fraction of rows whose arg-max equals the label."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"accuracy: expected logits (N, classes) and labels (N,), got "
                         f"{logits.shape} and {labels.shape}")
    return float(np.mean(np.argmax(logits, axis=1) == labels))
