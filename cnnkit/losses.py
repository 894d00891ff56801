"""Losses.  ``forward(prediction, target)`` returns the mean loss as a Python float and keeps
what ``backward()`` needs; ``backward()`` returns the gradient w.r.t. the prediction."""
from __future__ import annotations

import numpy as np

from .layers import FLOAT_DTYPES


class Loss:
    name = "loss"
    #: the prediction is a distance (as RBF output units give): the predicted class is the
    #: arg-min of a row, not the arg-max (see :meth:`class_scores`)
    lower_is_better = False

    def __init__(self):
        self._ctx = None

    def class_scores(self, prediction):
        """Class scores of a (N, classes) prediction, higher meaning more likely: the
        prediction itself, negated for a loss of distances (``lower_is_better``).  Accuracy
        and the class metrics during training and evaluation take the arg-max of these."""
        return -prediction if self.lower_is_better else prediction

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def _check_prediction(self, pred, ndim=None):
        if not isinstance(pred, np.ndarray) or pred.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}: prediction must be a float32/float64 numpy "
                            f"array, got {getattr(pred, 'dtype', type(pred).__name__)}")
        if ndim is not None and pred.ndim != ndim:
            raise ValueError(f"{type(self).__name__}: expected prediction of shape "
                             f"(N, classes), got {pred.shape}")
        if pred.ndim == 0:
            raise ValueError(f"{type(self).__name__}: prediction must have a batch axis, got a "
                             "0-d array")
        if pred.size == 0:
            raise ValueError(f"{type(self).__name__}: empty batch (prediction shape "
                             f"{pred.shape})")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"{type(self).__name__}: prediction contains NaN or Inf")

    def _check_labels(self, labels, n, k):
        """Integer class labels of shape (n,) in [0, k)."""
        owner = type(self).__name__
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"{owner}: labels must be integers of shape ({n},), got "
                             f"{labels.dtype} array of shape {labels.shape}")
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{owner}: labels must lie in [0, {k}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        return labels

    def _check_target(self, target, prediction):
        """Real-valued finite targets of the prediction's shape, cast to its dtype."""
        name = type(self).__name__
        target = np.asarray(target)
        if target.shape != prediction.shape:
            raise ValueError(f"{name}: target shape {target.shape} does not match the "
                             f"prediction shape {prediction.shape}")
        if target.dtype.kind not in "biuf":
            raise ValueError(f"{name}: targets must be real numbers, got dtype {target.dtype}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"{name}: targets contain NaN or Inf")
        return target.astype(prediction.dtype, copy=False)

    def backward(self):
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}: backward() needs forward() first")
        grad = self._grad()
        self._ctx = None
        return grad


class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(logits) against integer class labels (numerically stable:
    log-sum-exp with the row maximum subtracted).

    ``label_smoothing`` (PyTorch's semantics) mixes the one-hot target with the uniform
    distribution: the target is ``(1 - eps) * one_hot + eps / classes``, so the loss is
    ``(1 - eps) * nll + eps * mean_k(-log p_k)``.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if (isinstance(label_smoothing, bool)
                or not isinstance(label_smoothing, (int, float, np.integer, np.floating))
                or not 0.0 <= float(label_smoothing) <= 1.0):
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be a number in [0, 1], "
                             f"got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits, labels):
        self._check_prediction(logits, ndim=2)
        n, k = logits.shape
        labels = self._check_labels(labels, n, k)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        log_probs = shifted - np.log(sums)
        idx = np.arange(n)
        eps = self.label_smoothing
        nll = -log_probs[idx, labels]
        loss = nll.mean() if eps == 0 else ((1 - eps) * nll - eps * log_probs.mean(axis=1)).mean()
        self._ctx = (exp / sums, labels)
        return float(loss)

    def _grad(self):
        probs, labels = self._ctx
        eps = self.label_smoothing
        grad = probs - eps / probs.shape[1] if eps else probs.copy()
        grad[np.arange(len(labels)), labels] -= 1.0 - eps
        grad /= len(labels)
        return grad


class NLLLoss(Loss):
    """Mean negative log-likelihood of integer labels under log-probabilities (N, classes), as
    ``torch.nn.functional.nll_loss``: pair it with a :class:`cnnkit.layers.LogSoftmax` output."""

    def forward(self, log_probs, labels):
        self._check_prediction(log_probs, ndim=2)
        n, k = log_probs.shape
        labels = self._check_labels(labels, n, k)
        self._ctx = (log_probs.shape, log_probs.dtype, labels)
        return float(-log_probs[np.arange(n), labels].mean())

    def _grad(self):
        shape, dtype, labels = self._ctx
        grad = np.zeros(shape, dtype=dtype)
        grad[np.arange(shape[0]), labels] = -1.0 / shape[0]
        return grad


class BCEWithLogits(Loss):
    """Mean binary cross-entropy of sigmoid(logits) against targets in [0, 1] of the same shape
    (``torch.nn.functional.binary_cross_entropy_with_logits``), computed stably as
    ``max(z, 0) - z * t + log1p(exp(-|z|))``."""

    def forward(self, logits, targets):
        self._check_prediction(logits)
        t = self._check_target(targets, logits)
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"BCEWithLogits: targets must lie in [0, 1], got values in "
                             f"[{t.min()}, {t.max()}]")
        z = logits
        loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        self._ctx = (z, t)
        return float(loss.mean())

    def _grad(self):
        z, t = self._ctx
        e = np.exp(-np.abs(z))
        sig = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        return ((sig - t) / z.size).astype(z.dtype, copy=False)


class MSE(Loss):
    """Mean squared error over every element."""

    def forward(self, prediction, target):
        self._check_prediction(prediction)
        diff = prediction - self._check_target(target, prediction)
        self._ctx = diff
        return float(np.mean(diff * diff))

    def _grad(self):
        diff = self._ctx
        return (2.0 / diff.size) * diff


class RBFEuclideanLoss(Loss):
    """The Euclidean criterion of LeNet-5's RBF output units (LeCun et al. 1998, eq. 8): the
    mean over the batch of the output at the correct class, which for
    :class:`~cnnkit.layers.RBFOutput` is the squared distance to that class's code.  The
    outputs are distances, so the predicted class is the arg-min (``lower_is_better``)."""

    lower_is_better = True

    def forward(self, distances, labels):
        self._check_prediction(distances, ndim=2)
        n, k = distances.shape
        labels = self._check_labels(labels, n, k)
        self._ctx = (distances.shape, distances.dtype, labels)
        return float(distances[np.arange(n), labels].mean())

    def _grad(self):
        shape, dtype, labels = self._ctx
        grad = np.zeros(shape, dtype=dtype)
        grad[np.arange(shape[0]), labels] = 1.0 / shape[0]
        return grad


class RBFMAPLoss(RBFEuclideanLoss):
    """The paper's MAP criterion (LeCun et al. 1998, eq. 9) for RBF outputs y (distances):
    mean over the batch of ``y[label] + log(exp(-j) + sum_i exp(-y[i]))``.  Besides pulling
    the correct output down it pushes the others up (the plain Euclidean criterion alone lets
    every code collapse onto the input's); ``j`` > 0 keeps the penalty of outputs already large
    from growing further."""

    def __init__(self, j: float = 1.0):
        super().__init__()
        if (isinstance(j, bool) or not isinstance(j, (int, float, np.integer, np.floating))
                or not np.isfinite(j)):
            raise ValueError(f"RBFMAPLoss: j must be a finite number, got {j!r}")
        self.j = float(j)

    def forward(self, distances, labels):
        self._check_prediction(distances, ndim=2)
        n, k = distances.shape
        labels = self._check_labels(labels, n, k)
        # log(e^-j + sum_i e^-y_i), stably: shift by the largest exponent
        neg = np.concatenate([np.full((n, 1), -self.j), -distances.astype(np.float64)], axis=1)
        top = neg.max(axis=1, keepdims=True)
        exp = np.exp(neg - top)
        sums = exp.sum(axis=1, keepdims=True)
        lse = (top + np.log(sums))[:, 0]
        self._ctx = ((exp[:, 1:] / sums), distances.dtype, labels)
        return float((distances[np.arange(n), labels] + lse).mean())

    def _grad(self):
        soft, dtype, labels = self._ctx
        grad = -soft
        grad[np.arange(len(labels)), labels] += 1.0
        return (grad / len(labels)).astype(dtype, copy=False)


class L2Penalty:
    """Weight decay as a loss term: ``forward(model)`` returns ``0.5 * weight_decay * sum(w^2)``
    and ``backward(model)`` adds its gradient ``weight_decay * w`` into each weight's
    ``layer.grads`` (call it after ``model.backward``, before the optimizer step).

    Which parameters: by default every parameter except those named ``bias`` and except the
    parameters of normalisation layers (BatchNorm's scale and shift), the usual practice;
    ``include_biases=True`` and ``include_norm=True`` add them.  ``model`` may be a
    ``cnnkit.Model``/``Sequential``, a single layer or a list of layers.
    """

    def __init__(self, weight_decay: float, *, include_biases: bool = False,
                 include_norm: bool = False):
        if (isinstance(weight_decay, bool)
                or not isinstance(weight_decay, (int, float, np.integer, np.floating))
                or not np.isfinite(weight_decay) or weight_decay < 0):
            raise ValueError(f"L2Penalty: weight_decay must be a finite number >= 0, got "
                             f"{weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.include_biases = bool(include_biases)
        self.include_norm = bool(include_norm)

    def _targets(self, model):
        from .layers import Layer

        if isinstance(model, Layer):
            layers = [model]
        elif hasattr(model, "layers"):
            layers = list(model.layers)
        elif isinstance(model, (list, tuple)) and all(isinstance(m, Layer) for m in model):
            layers = list(model)
        else:
            raise TypeError(f"L2Penalty: expected a model, a layer or a list of layers, got "
                            f"{type(model).__name__}")
        for layer in layers:
            if getattr(layer, "is_normalization", False) and not self.include_norm:
                continue
            if not getattr(layer, "trainable", True):  # frozen: its penalty is a constant
                continue
            for key, p in layer.params.items():
                if p is None or (key == "bias" and not self.include_biases):
                    continue
                yield layer, key, p

    def forward(self, model) -> float:
        total = sum(float(np.vdot(p, p)) for _, _, p in self._targets(model))
        return 0.5 * self.weight_decay * total

    __call__ = forward

    def backward(self, model) -> None:
        for layer, key, p in self._targets(model):
            g = layer.grads.get(key)
            layer.grads[key] = (self.weight_decay * p if g is None
                                else g + self.weight_decay * p).astype(p.dtype, copy=False)


def accuracy(logits, labels) -> float:
    """Fraction of rows whose arg-max equals the label."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"accuracy: expected logits (N, classes) and labels (N,), got "
                         f"{logits.shape} and {labels.shape}")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


#: Losses by the name a config gives them (``loss = "mse"``).  Keys are lower case without
#: punctuation; a config's name is compared in that form, so "softmax_cross_entropy" and
#: "SoftmaxCrossEntropy" both find :class:`SoftmaxCrossEntropy`.
LOSSES = {"bcewithlogits": BCEWithLogits, "mse": MSE, "nllloss": NLLLoss,
          "softmaxcrossentropy": SoftmaxCrossEntropy, "crossentropy": SoftmaxCrossEntropy,
          "ce": SoftmaxCrossEntropy}

#: the criteria of RBF output units (:class:`cnnkit.layers.RBFOutput`)
LOSSES.update({"rbfeuclidean": RBFEuclideanLoss, "rbfmap": RBFMAPLoss})

#: Weight penalties by the name a config gives them (``regularizer = {name = "l2", ...}``),
#: keyed as :data:`LOSSES` is.
PENALTIES = {"l2penalty": L2Penalty, "l2": L2Penalty}
