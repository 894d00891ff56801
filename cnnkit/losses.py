"""Losses.  ``forward(prediction, target, sample_weight=None)`` returns the mean loss as a
Python float and keeps what ``backward()`` needs; ``backward()`` returns the gradient w.r.t. the
prediction.

Per-sample weights: with ``sample_weight`` ``w`` of shape (N,), every loss returns the weighted
mean of its per-sample losses, ``sum_i w_i * l_i / sum_i w_i``, where ``l_i`` is the loss the
same class returns for sample ``i`` alone (for an element-wise loss, the mean over that sample's
elements).  The weights need not sum to one (only their ratios matter); they must be finite,
non-negative and not all zero.  All-ones weights give bit for bit the unweighted result (up to
2**24 elements per batch in float32, beyond which the weight sum is no longer exact)."""
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

    def __call__(self, prediction, target, sample_weight=None):
        if sample_weight is None:  # a subclass's forward may predate sample weights
            return self.forward(prediction, target)
        return self.forward(prediction, target, sample_weight=sample_weight)

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
            raise ValueError(f"{owner}: labels must be integers of shape ({n},) (or "
                             f"probability rows of shape ({n}, {k})), got {labels.dtype} array "
                             f"of shape {labels.shape}")
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{owner}: labels must lie in [0, {k}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        return labels

    #: how far a soft target row's sum may stray from 1
    ROW_SUM_TOL = 1e-5

    def _check_class_targets(self, target, n, k, dtype):
        """Cross-entropy targets: ``("labels", int (n,) array)`` for integer labels, or
        ``("probs", (n, k) array of dtype)`` for one-hot / soft probability rows."""
        owner = type(self).__name__
        target = np.asarray(target)
        if target.ndim != 2:
            return "labels", self._check_labels(target, n, k)
        if target.shape != (n, k) or target.dtype.kind not in "biuf":
            raise ValueError(f"{owner}: soft targets must be real numbers of shape ({n}, {k}), "
                             f"got {target.dtype} array of shape {target.shape}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"{owner}: soft targets contain NaN or Inf")
        if target.min() < 0:
            raise ValueError(f"{owner}: soft targets must be >= 0, got a minimum of "
                             f"{target.min()}")
        sums = target.sum(axis=1, dtype=np.float64)
        bad = np.abs(sums - 1.0) > self.ROW_SUM_TOL
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{owner}: each soft target row must sum to 1 (within "
                             f"{self.ROW_SUM_TOL:g}); row {i} sums to {sums[i]!r}")
        return "probs", target.astype(dtype, copy=False)

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

    def _check_weights(self, sample_weight, n):
        """``sample_weight`` as a float64 (n,) array (None stays None)."""
        if sample_weight is None:
            return None
        return check_sample_weight(sample_weight, n, type(self).__name__)

    @staticmethod
    def _weighted_mean(losses, w):
        """``sum_i w_i * mean(losses[i]) / sum_i w_i``, the unweighted mean when w is None.

        Written as one reduction over every element divided by ``sum(w) * m`` (m elements per
        sample), the reduction ``mean`` makes, so all-ones weights reproduce it bit for bit."""
        if w is None:
            return losses.mean()
        return np.sum(losses * _per_sample(w, losses)) / _norm(w, losses.size // len(losses))

    def backward(self):
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}: backward() needs forward() first")
        grad = self._grad()
        self._ctx = None
        return grad


def check_sample_weight(sample_weight, n, owner):
    """Per-sample weights as a float64 array of shape (n,): finite, >= 0, not all zero."""
    w = np.asarray(sample_weight)
    if w.shape != (n,) or w.dtype.kind not in "biuf":
        raise ValueError(f"{owner}: sample_weight must be real numbers of shape ({n},), got "
                         f"{w.dtype} array of shape {w.shape}")
    w = w.astype(np.float64, copy=False)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{owner}: sample_weight contains NaN or Inf")
    if np.any(w < 0):
        raise ValueError(f"{owner}: sample_weight must be >= 0, got a minimum of {w.min()}")
    if not np.any(w > 0):
        raise ValueError(f"{owner}: sample_weight is all zero (the weighted mean is undefined)")
    return w


def _per_sample(w, like):
    """The weights broadcast over the sample axis of ``like``, in its dtype."""
    return w.astype(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def _norm(w, per_sample):
    """The weighted mean's divisor: ``sum(w)`` times the terms each sample contributes."""
    return float(np.sum(w)) * per_sample


def _scale_grad(grad, w, per_sample):
    """Turn the gradient of the summed per-term losses into that of their (weighted) mean, in
    place: divided by the number of terms, or multiplied by ``w_i / (sum(w) * per_sample)``."""
    if w is None:
        grad /= grad.shape[0] * per_sample
    else:
        grad *= _per_sample(w, grad)
        grad /= _norm(w, per_sample)
    return grad


class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(logits) against integer class labels (N,) or one-hot / soft
    target rows (N, classes) that are non-negative and sum to 1 (numerically stable:
    log-sum-exp with the row maximum subtracted).  As ``torch.nn.functional.cross_entropy``,
    including its ``weight``-free handling of probability targets.

    ``label_smoothing`` (PyTorch's semantics) mixes the target with the uniform distribution:
    the target is ``(1 - eps) * target + eps / classes``, so with labels the loss is
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

    def forward(self, logits, labels, sample_weight=None):
        self._check_prediction(logits, ndim=2)
        n, k = logits.shape
        kind, target = self._check_class_targets(labels, n, k, logits.dtype)
        w = self._check_weights(sample_weight, n)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        log_probs = shifted - np.log(sums)
        eps = self.label_smoothing
        if kind == "labels":
            nll = -log_probs[np.arange(n), target]
            per_sample = nll if eps == 0 else (1 - eps) * nll - eps * log_probs.mean(axis=1)
        else:
            if eps:
                target = (1 - eps) * target + eps / k
            per_sample = -(target * log_probs).sum(axis=1)
        self._ctx = (exp / sums, kind, target, w)
        return float(self._weighted_mean(per_sample, w))

    def _grad(self):
        probs, kind, target, w = self._ctx
        if kind == "probs":  # d/dz of -sum_k t_k log p_k, exact even for rows summing to ~1
            grad = probs * target.sum(axis=1, keepdims=True) - target
        else:
            eps = self.label_smoothing
            grad = probs - eps / probs.shape[1] if eps else probs.copy()
            grad[np.arange(len(target)), target] -= 1.0 - eps
        return _scale_grad(grad, w, 1)


class NLLLoss(Loss):
    """Mean negative log-likelihood under log-probabilities (N, classes) of integer labels (as
    ``torch.nn.functional.nll_loss``) or of one-hot / soft target rows (N, classes),
    ``-sum_k t_k log p_k``: pair it with a :class:`cnnkit.layers.LogSoftmax` output."""

    def forward(self, log_probs, labels, sample_weight=None):
        self._check_prediction(log_probs, ndim=2)
        n, k = log_probs.shape
        kind, target = self._check_class_targets(labels, n, k, log_probs.dtype)
        w = self._check_weights(sample_weight, n)
        if kind == "labels":
            per_sample = -log_probs[np.arange(n), target]
        else:
            per_sample = -(target * log_probs).sum(axis=1)
        self._ctx = (log_probs.shape, log_probs.dtype, kind, target, w)
        return float(self._weighted_mean(per_sample, w))

    def _grad(self):
        shape, dtype, kind, target, w = self._ctx
        if kind == "probs":
            grad = -target.astype(dtype, copy=True)
        else:
            grad = np.zeros(shape, dtype=dtype)
            grad[np.arange(shape[0]), target] = -1.0
        return _scale_grad(grad, w, 1)


class BCEWithLogits(Loss):
    """Mean binary cross-entropy of sigmoid(logits) against targets in [0, 1] of the same shape
    (``torch.nn.functional.binary_cross_entropy_with_logits``), computed stably as
    ``max(z, 0) - z * t + log1p(exp(-|z|))``.  A sample's loss is the mean over its elements."""

    def forward(self, logits, targets, sample_weight=None):
        self._check_prediction(logits)
        t = self._check_target(targets, logits)
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"BCEWithLogits: targets must lie in [0, 1], got values in "
                             f"[{t.min()}, {t.max()}]")
        w = self._check_weights(sample_weight, logits.shape[0])
        z = logits
        loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        self._ctx = (z, t, w)
        return float(self._weighted_mean(loss, w))

    def _grad(self):
        z, t, w = self._ctx
        e = np.exp(-np.abs(z))
        sig = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        grad = (sig - t).astype(z.dtype, copy=False)
        return _scale_grad(grad, w, z.size // z.shape[0])


class MSE(Loss):
    """Squared error ``(y - t)**2`` summed over the elements and reduced by ``reduction``:

    * ``"mean"`` (default): the mean over every element, ``sum / (N * C)`` (N samples of C
      elements each), as ``torch.nn.MSELoss()``;
    * ``"sum"``: the plain sum;
    * ``"half_sum"``: half the sum, ``E = 1/2 sum_n sum_c (t - y)**2``, the training error of
      the classic back-propagation derivations (its gradient is simply ``y - t``);
    * ``"mean_per_sample"``: the sum over each sample's elements, averaged over the samples,
      ``1/N sum_n sum_c (t - y)**2``.

    With ``sample_weight``, a sample's loss is what the reduction gives for it alone and the
    samples are averaged with the weights; for ``"sum"`` and ``"half_sum"`` the weighted mean
    is scaled back by N, so they stay sums (all-ones weights give the unweighted value).
    """

    REDUCTIONS = ("mean", "sum", "half_sum", "mean_per_sample")

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in self.REDUCTIONS:
            known = ", ".join(map(repr, self.REDUCTIONS))
            raise ValueError(f"MSE: reduction must be one of {known}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, prediction, target, sample_weight=None):
        self._check_prediction(prediction)
        diff = prediction - self._check_target(target, prediction)
        n = diff.shape[0]
        w = self._check_weights(sample_weight, n)
        sq = diff * diff
        self._ctx = (diff, w)
        if self.reduction == "mean":
            return float(self._weighted_mean(sq, w))
        per_sample = sq.reshape(n, -1).sum(axis=1)
        if w is None:
            total = np.sum(per_sample)
        else:  # N times the weighted mean of the samples' sums
            total = np.sum(per_sample * _per_sample(w, per_sample)) * (n / float(np.sum(w)))
        scale = {"sum": 1.0, "half_sum": 0.5, "mean_per_sample": 1.0 / n}[self.reduction]
        return float(total * scale)

    def _grad(self):
        diff, w = self._ctx
        n = diff.shape[0]
        if self.reduction == "mean":
            if w is None:
                return (2.0 / diff.size) * diff
            return (2.0 / _norm(w, diff.size // n)) * diff * _per_sample(w, diff)
        scale = {"sum": 2.0, "half_sum": 1.0, "mean_per_sample": 2.0 / n}[self.reduction]
        grad = scale * diff
        if w is not None:
            grad *= _per_sample(w, grad) * (n / float(np.sum(w)))
        return grad


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
