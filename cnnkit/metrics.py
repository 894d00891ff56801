"""Classification metrics on class labels and scores (logits or probabilities), and the
names :func:`cnnkit.train.evaluate` accepts in ``metrics=``:

- ``"accuracy"``; ``"top_k_accuracy"`` (k = 5) or ``"top_k_accuracy:3"``, ``"top3"``;
- ``"confusion_matrix"`` (rows: true class, columns: predicted class, as scikit-learn);
- ``"per_class_accuracy"`` (the fraction of each class predicted right; NaN for a class
  absent from the data).
"""
from __future__ import annotations

import re

import numpy as np

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "per_class_accuracy", "METRICS",
           "parse_metric", "predict_classes"]


def _labels(y, who):
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{who}: expected integer class labels of shape (N,), got {y.shape} "
                         f"{y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{who}: class labels must be >= 0, found {int(y.min())}")
    return y


def _scores(scores, n, who):
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != n or scores.dtype.kind != "f":
        raise ValueError(f"{who}: expected float scores of shape ({n}, classes), got "
                         f"{scores.shape} {scores.dtype}")
    return scores


def accuracy(y_true, scores) -> float:
    """The fraction of samples whose highest score is the true class."""
    y = _labels(y_true, "accuracy")
    return float(np.mean(np.argmax(_scores(scores, len(y), "accuracy"), axis=1) == y))


def top_k_accuracy(y_true, scores, k: int = 5) -> float:
    """The fraction of samples whose true class is among the ``k`` highest scores (ties
    broken towards the lower class index, as ``torch.topk`` on CPU does in practice)."""
    y = _labels(y_true, "top_k_accuracy")
    s = _scores(scores, len(y), "top_k_accuracy")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be a positive int, got {k!r}")
    k = min(k, s.shape[1])
    # rank of the true class = how many classes score strictly higher, or equal with a lower
    # index; it is in the top k when that count is below k
    true = s[np.arange(len(y)), y][:, None]
    idx = np.arange(s.shape[1])[None, :]
    ahead = (s > true) | ((s == true) & (idx < y[:, None]))
    return float(np.mean(ahead.sum(axis=1) < k))


def predict_classes(model, x, batch_size: int = 256) -> np.ndarray:
    """The predicted class of each input: the arg-max of ``model.predict(x)``, or the arg-min
    when the output layer gives distances (it declares ``lower_is_better``, as
    :class:`cnnkit.layers.RBFOutput` does: the nearest code wins)."""
    out = model.predict(x, batch_size=batch_size)
    if out.ndim != 2:
        raise ValueError(f"predict_classes: expected (N, classes) outputs, got shape {out.shape}")
    last = model.outputs[0].layer if getattr(model, "outputs", None) else None
    if last is None and getattr(model, "layers", None):
        last = model.layers[-1]
    if getattr(last, "lower_is_better", False):
        return np.argmin(out, axis=1)
    return np.argmax(out, axis=1)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """``cm[i, j]`` = the number of samples of true class ``i`` predicted as ``j``."""
    y = _labels(y_true, "confusion_matrix")
    p = _labels(y_pred, "confusion_matrix")
    if p.shape != y.shape:
        raise ValueError(f"confusion_matrix: {len(y)} true labels but {len(p)} predictions")
    c = int(max(y.max(initial=-1), p.max(initial=-1)) + 1)
    if num_classes is not None:
        if c > num_classes:
            raise ValueError(f"confusion_matrix: label {c - 1} >= num_classes {num_classes}")
        c = num_classes
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def per_class_accuracy(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """The fraction of each class's samples predicted right (NaN where a class has none)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    counts = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.diag(cm) / np.maximum(counts, 1), np.nan)


METRICS = ("accuracy", "top_k_accuracy", "confusion_matrix", "per_class_accuracy")


def parse_metric(name):
    """``(key, function of (y_true, scores))`` for a metric name of :data:`METRICS`."""
    if not isinstance(name, str):
        raise ValueError(f"metrics: expected metric names, got {name!r}")
    m = re.fullmatch(r"(?:top_k_accuracy(?::(\d+))?|top(\d+))", name.strip().lower())
    if m:
        k = int(m.group(1) or m.group(2) or 5)
        return (f"top{k}_accuracy", lambda y, s: top_k_accuracy(y, s, k))
    key = name.strip().lower()
    n_classes = lambda s: s.shape[1]  # noqa: E731 - the number of classes is the scores' width
    table = {"accuracy": accuracy,
             "confusion_matrix": lambda y, s: confusion_matrix(y, s.argmax(1), n_classes(s)),
             "per_class_accuracy": lambda y, s: per_class_accuracy(y, s.argmax(1),
                                                                   n_classes(s))}
    if key not in table:
        import difflib

        close = difflib.get_close_matches(key, METRICS, n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"metrics: unknown metric {name!r}{hint}; known: {', '.join(METRICS)} "
                         "(top_k_accuracy:K for another k)")
    return key, table[key]
