"""Training loop: minibatches, a progress bar, per-epoch loss and accuracy."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import _random
from .losses import Loss, SoftmaxCrossEntropy


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run."""

    epochs: list = field(default_factory=list)

    def append(self, **metrics):
        self.epochs.append(metrics)

    def __getitem__(self, key):
        return [e.get(key) for e in self.epochs]

    def __len__(self):
        return len(self.epochs)


class ProgressBar:
    """A one-line text progress bar; redraws in place on a terminal, prints a final line per
    epoch otherwise (so logs stay readable)."""

    def __init__(self, total, prefix="", stream=None, width=24):
        self.total, self.prefix, self.width = total, prefix, width
        self.stream = stream if stream is not None else sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last = 0.0

    def _line(self, done, suffix):
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        return f"{self.prefix} [{bar}] {done}/{self.total} {elapsed:5.1f}s {suffix}"

    def update(self, done, suffix=""):
        now = time.perf_counter()
        if self.live and (now - self._last > 0.1 or done == self.total):
            self._last = now
            self.stream.write("\r" + self._line(done, suffix) + "\033[K")
            self.stream.flush()

    def close(self, suffix=""):
        self.stream.write(("\r" if self.live else "") + self._line(self.total, suffix)
                          + ("\033[K" if self.live else "") + "\n")
        self.stream.flush()


def _check_data(name, data):
    if (not isinstance(data, (tuple, list)) or len(data) != 2
            or not all(isinstance(a, np.ndarray) for a in data)):
        raise TypeError(f"fit: {name} must be a pair (x, y) of numpy arrays")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"fit: {name} has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise ValueError(f"fit: {name} is empty")
    return x, y


def evaluate(model, data, *, loss: Loss | None = None, batch_size: int = 256) -> dict:
    """Mean loss and accuracy (for class-label targets) of ``model`` on ``data`` in inference."""
    x, y = _check_data("data", data)
    loss = loss or SoftmaxCrossEntropy()
    total, correct, n = 0.0, 0, 0
    for i in range(0, len(x), batch_size):
        out = model.forward(x[i:i + batch_size], training=False)
        yb = y[i:i + batch_size]
        total += loss.forward(out, yb) * len(yb)
        loss._ctx = None
        if out.ndim == 2 and yb.ndim == 1:
            correct += int(np.sum(np.argmax(out, axis=1) == yb))
        n += len(yb)
    return {"loss": total / n, "accuracy": correct / n}


def fit(model, train, val=None, *, optimizer, loss: Loss | None = None, epochs: int = 10,
        batch_size: int = 64, shuffle: bool = True, rng=None, verbose: bool = True,
        stream=None) -> History:
    """Train ``model`` on ``train`` = (x, y) for ``epochs``; report metrics on ``val``."""
    x, y = _check_data("train", train)
    if val is not None:
        _check_data("val", val)
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"fit: {name} must be a positive int, got {v!r}")
    loss = loss or SoftmaxCrossEntropy()
    rng = _random.generator(rng)
    stream = stream if stream is not None else sys.stderr
    history = History()
    steps = math.ceil(len(x) / batch_size)
    model.train()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
        bar = ProgressBar(steps, f"epoch {epoch}/{epochs}", stream) if verbose else None
        total, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            out = model.forward(xb, training=True)
            value = loss.forward(out, yb)
            if not math.isfinite(value):
                raise FloatingPointError(f"fit: loss became {value} at epoch {epoch}, step "
                                         f"{step + 1}; lower the learning rate")
            optimizer.zero_grad()
            model.backward(loss.backward(), input_grads=False)
            optimizer.step()
            total += value * len(idx)
            seen += len(idx)
            if out.ndim == 2 and yb.ndim == 1:
                correct += int(np.sum(np.argmax(out, axis=1) == yb))
            if bar:
                bar.update(step + 1, f"loss {total / seen:.4f} acc {correct / seen:.4f}")
        metrics = {"epoch": epoch, "loss": total / seen, "accuracy": correct / seen,
                   "time": time.perf_counter() - t0}
        if val is not None:
            v = evaluate(model, val, loss=loss, batch_size=max(batch_size, 256))
            metrics.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        history.append(**metrics)
        if bar:
            suffix = f"loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f}"
            if val is not None:
                suffix += f" val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_accuracy']:.4f}"
            bar.close(suffix)
    return history
