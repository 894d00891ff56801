"""Training loop: minibatches, shuffling, a progress bar, per-epoch metrics, callbacks, early
stopping, learning-rate schedules, an optional weight penalty and resumable checkpoints.

::

    history = fit(model, (x, y), (xv, yv), optimizer=opt, epochs=10)
    history["val_accuracy"]            # one value per epoch
    fit(model, (x, y), (xv, yv), optimizer=opt, epochs=10, seed=0,
        scheduler=ck.schedules.CosineAnnealingLR(opt, T_max=10),
        early_stopping=EarlyStopping(patience=3, restore_best_weights=True),
        checkpoint="run.npz")          # written atomically after every epoch
    fit(..., resume_from="run.npz")    # continues bit for bit where run.npz left off

Reproducibility: with the same seed (or a Generator in the same state), the same data and the
same thread count, two runs give bitwise identical weights; a run interrupted after epoch k and
resumed from its checkpoint gives the same weights as an uninterrupted one.  For that a
checkpoint holds the weights and buffers, the optimizer state, the schedule state, the shuffling
generator's state, the state of every layer's own generator (a layer attribute ``rng``, or
``_rng`` as Dropout has, that is a ``numpy.random.Generator``), the callbacks' state (early
stopping), the epoch and the history.

Checkpoint file (``.npz`` read with pickling disabled, see :mod:`cnnkit.io`):

* ``model/<name>``: the model's ``state_dict()`` (parameters and buffers, structural names
  as in :mod:`cnnkit.state`);
* ``optimizer/...``, ``scheduler/...``, ``trainer/...`` (epoch, history, shuffling generator),
  ``rng/<layer name>/...`` (layers' generators), ``callbacks/<i>/...``: the entries of
  :func:`cnnkit.io.flatten_state` of those structures (generator states' 128-bit integers are
  stored as ``("bigint", "<decimal digits>")`` pairs, strings (``...@s`` entries) as UTF-8
  bytes);
* metadata (JSON): ``{"format": "cnnkit-checkpoint", "format_version": 1, "epoch": ...,
  "optimizer": class name, "scheduler": class name or null, "layers": [[name, type], ...]}``.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import _random
from .losses import Loss, SoftmaxCrossEntropy

__all__ = ["fit", "evaluate", "History", "ProgressBar", "Callback", "EarlyStopping",
           "LambdaCallback", "CSVLogger", "JSONLinesLogger", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "cnnkit-checkpoint"
_CHECKPOINT_VERSION = 1


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run: ``history.epochs`` is a list of dicts (``epoch``,
    ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``time``) and
    ``history["val_accuracy"]`` the list of one metric (``None`` where an epoch lacks it)."""

    epochs: list = field(default_factory=list)
    #: why training stopped before its last epoch (early stopping, a callback), else None
    stop_reason: str | None = None

    def append(self, **metrics):
        self.epochs.append(metrics)

    def __getitem__(self, key):
        return [e.get(key) for e in self.epochs]

    def __len__(self):
        return len(self.epochs)

    def keys(self) -> list[str]:
        out: list[str] = []
        for e in self.epochs:
            out.extend(k for k in e if k not in out)
        return out

    def to_dict(self) -> dict[str, list]:
        """``{metric: [value per epoch]}``."""
        return {k: self[k] for k in self.keys()}


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
        elapsed = time.perf_counter() - self.start
        if self.total is None:  # a streamed epoch of unknown length
            return f"{self.prefix} {done} batches {elapsed:5.1f}s {suffix}"
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.prefix} [{bar}] {done}/{self.total} {elapsed:5.1f}s {suffix}"

    def update(self, done, suffix=""):
        now = time.perf_counter()
        if self.live and (now - self._last > 0.1 or done == self.total):
            self._last = now
            self.stream.write("\r" + self._line(done, suffix) + "\033[K")
            self.stream.flush()

    def close(self, suffix="", done=None):
        done = self.total if done is None else done
        self.stream.write(("\r" if self.live else "") + self._line(done, suffix)
                          + ("\033[K" if self.live else "") + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------------------- callbacks
class TrainState:
    """What callbacks see of a running :func:`fit` (``callback.trainer``)."""

    def __init__(self, model, optimizer, scheduler, history, epochs, steps_per_epoch):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.history = history
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.stop_training = False
        self.stop_reason: str | None = None

    def request_stop(self, reason: str | None = None):
        self.stop_training = True
        if reason and not self.stop_reason:
            self.stop_reason = reason


class Callback:
    """Base class of training callbacks; override any of the hooks.

    :func:`fit` calls, in this order: ``on_train_begin(logs)``, then per epoch
    ``on_epoch_begin(epoch, logs)``, ``on_batch_end(batch, logs)`` after every optimizer step
    (``logs``: ``batch`` (1-based), ``size``, ``loss``), ``on_epoch_end(epoch, logs)`` with the
    epoch's metrics (before the checkpoint of that epoch is written), and finally
    ``on_train_end(logs)`` (``logs``: the last epoch's metrics).  Epochs are numbered from 1.

    ``self.model``, ``self.optimizer`` and ``self.trainer`` (a :class:`TrainState`) are set
    before ``on_train_begin``.  :meth:`request_stop` ends training: after the current epoch when
    called from an epoch hook, after the current batch when called from ``on_batch_end``.
    A callback with state to keep across a resumed run implements :meth:`state_dict` /
    :meth:`load_state_dict` (plain numbers, strings, lists, dicts and arrays).
    """

    model = None
    optimizer = None
    trainer: TrainState | None = None

    def set_trainer(self, trainer: TrainState):
        self.trainer = trainer
        self.model, self.optimizer = trainer.model, trainer.optimizer

    def request_stop(self, reason: str | None = None):
        if self.trainer is None:
            raise RuntimeError(f"{type(self).__name__}: request_stop() outside of fit()")
        self.trainer.request_stop(reason or f"stopped by {type(self).__name__}")

    def on_train_begin(self, logs):
        pass

    def on_epoch_begin(self, epoch, logs):
        pass

    def on_batch_end(self, batch, logs):
        pass

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self, logs):
        pass

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``."""

    _HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")

    def __init__(self, **hooks):
        unknown = set(hooks) - set(self._HOOKS)
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hooks {sorted(unknown)}; known: "
                            f"{', '.join(self._HOOKS)}")
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable, got {fn!r}")
            setattr(self, name, fn)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs.  ``mode`` is ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracies, else
    ``"min"``).  With ``restore_best_weights`` the model ends training (stopped early or not)
    with the weights and buffers of its best epoch."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping: monitor must be a metric name, got {monitor!r}")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if (not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool)
                or not math.isfinite(min_delta) or min_delta < 0):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got "
                             f"{min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode, self.restore_best_weights = mode, bool(restore_best_weights)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            known = ", ".join(k for k, v in logs.items() if v is not None)
            hint = "; pass validation data to fit()" if self.monitor.startswith("val_") else ""
            raise ValueError(f"EarlyStopping: monitored metric {self.monitor!r} is not among the "
                             f"epoch's metrics ({known}){hint}")
        if not math.isfinite(value):
            value = math.inf if self.mode == "min" else -math.inf
        if self._improved(value):
            self.best, self.best_epoch, self.wait = float(value), int(epoch), 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = int(epoch)
                self.request_stop(f"early stopping: {self.monitor} has not improved for "
                                  f"{self.wait} epoch{'s' if self.wait != 1 else ''} (best "
                                  f"{self.best:.6g} at epoch {self.best_epoch})")

    def on_train_end(self, logs):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights, source="EarlyStopping best weights")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch,
                "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_epoch = state.get("best_epoch")
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        bw = state.get("best_weights")
        self.best_weights = None if bw is None else {k: np.array(v) for k, v in bw.items()}


class _EpochLogger(Callback):
    """One line per epoch, written and flushed as soon as the epoch ends (a crash loses at
    most the epoch in progress).  A new run truncates the file; a resumed run
    (``fit(resume_from=...)``) or ``append=True`` adds to it."""

    suffix = ""

    def __init__(self, path, append: bool = False):
        import os

        if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{type(self).__name__}: path must be a str or os.PathLike, got "
                            f"{type(path).__name__}")
        if not isinstance(append, bool):
            raise TypeError(f"{type(self).__name__}: append must be True or False")
        self.path, self.append = os.fspath(path), append
        self._file = None

    def on_train_begin(self, logs):
        resumed = bool(logs.get("initial_epoch"))
        self._file = open(self.path, "a" if (self.append or resumed) else "w",
                          encoding="utf-8", newline="")
        self._header = self._file.tell() == 0

    def on_epoch_end(self, epoch, logs):
        self._write({"epoch": epoch, **{k: v for k, v in logs.items() if k != "epoch"}})
        self._file.flush()

    def on_train_end(self, logs):
        if self._file is not None:
            self._file.close()
            self._file = None


class CSVLogger(_EpochLogger):
    """Per-epoch metrics as CSV (``epoch,loss,accuracy,val_loss,...``), as Keras' CSVLogger."""

    def _write(self, row):
        import csv

        writer = csv.writer(self._file)
        if self._header:
            writer.writerow(list(row))
            self._columns = list(row)
            self._header = False
        elif not hasattr(self, "_columns"):
            self._columns = list(row)
        writer.writerow([row.get(k, "") for k in self._columns])


class JSONLinesLogger(_EpochLogger):
    """Per-epoch metrics as JSON lines (one object per epoch)."""

    def _write(self, row):
        import json

        self._file.write(json.dumps(row) + "\n")


def _early_stopping(spec):
    if spec is None or spec is False:
        return None
    if spec is True:
        return EarlyStopping()
    if isinstance(spec, EarlyStopping):
        return spec
    if isinstance(spec, dict):
        return EarlyStopping(**spec)
    raise TypeError(f"fit: early_stopping must be an EarlyStopping, a dict of its arguments, "
                    f"True or None, got {spec!r}")


# ---------------------------------------------------------------------------------- helpers
def _check_data(name, data, caller="fit"):
    if (not isinstance(data, (tuple, list)) or len(data) != 2
            or not all(isinstance(a, np.ndarray) for a in data)):
        raise TypeError(f"{caller}: {name} must be a pair (x, y) of numpy arrays")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"{caller}: {name} has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise ValueError(f"{caller}: {name} is empty")
    return x, y


def _is_classification(out, yb):
    return (isinstance(out, np.ndarray) and out.ndim == 2 and yb.ndim == 1
            and yb.dtype.kind in "iu")


def _sample_weight(sample_weight, n, caller):
    """The checked per-sample weights (float64, shape (n,)) or None."""
    if sample_weight is None:
        return None
    from .losses import check_sample_weight

    return check_sample_weight(sample_weight, n, caller)


def _weighted(wb, n):
    """(loss keyword arguments, total weight) of a batch of n samples with weights wb."""
    if wb is None:
        return {}, n
    return {"sample_weight": wb}, float(np.sum(wb))


def _hits(out, yb, wb):
    """The (weighted) number of rows whose arg-max is the label."""
    hit = np.argmax(out, axis=1) == yb
    return int(np.sum(hit)) if wb is None else float(np.sum(wb[hit]))


def evaluate(model, data, *, loss: Loss | None = None, batch_size: int = 256,
             metrics=None, sample_weight=None, distributed=False) -> dict:
    """Mean loss and accuracy (for class-label targets; else None) of ``model`` on ``data`` =
    (x, y) in inference mode, plus the ``metrics`` named (:mod:`cnnkit.metrics`:
    ``"top_k_accuracy:5"``, ``"confusion_matrix"``, ``"per_class_accuracy"``, ...).

    ``sample_weight`` (N,): the loss and accuracy become weighted means over the samples
    (:mod:`cnnkit.losses`); the extra metrics stay unweighted.

    ``distributed=True`` (under ``mpiexec``; or an mpi4py communicator): each rank evaluates its
    contiguous share of ``data`` and every rank returns the results of the whole."""
    x, y = _check_data("data", data, "evaluate")
    sw = _sample_weight(sample_weight, len(x), "evaluate")
    if metrics and sw is not None and not sw.all():
        raise ValueError("evaluate: metrics with sample_weight need every weight > 0 (the "
                         "extra metrics are unweighted, over every sample)")
    ctx = None
    if distributed is not False and distributed is not None:
        from .distributed import context

        ctx = context(distributed)
        lo, hi = ctx.shard(len(x))
        x_all, y_all, x, y = x, y, x[lo:hi], y[lo:hi]
        sw = None if sw is None else sw[lo:hi]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be a positive int, got {batch_size!r}")
    from .metrics import parse_metric

    if isinstance(metrics, str):
        metrics = [metrics]
    extra = [parse_metric(m) for m in (metrics or ())]
    loss = loss or SoftmaxCrossEntropy()
    total, correct, n = 0.0, 0, 0
    classify = True
    scores = []
    for i in range(0, len(x), batch_size):
        yb = y[i:i + batch_size]
        wb = None if sw is None else sw[i:i + batch_size]
        kw, size = _weighted(wb, len(yb))
        if size == 0:  # all-zero weights: nothing to add (and no weighted mean to take)
            continue
        out = model.forward(x[i:i + batch_size], training=False)
        total += loss.forward(out, yb, **kw) * size
        loss._ctx = None
        if _is_classification(out, yb):
            class_scores = loss.class_scores(out)
            correct += _hits(class_scores, yb, wb)
            if extra:
                scores.append(np.array(class_scores, copy=True))
        else:
            classify = False
        n += size
    if ctx is not None:
        total, correct, n, classify = ctx.allreduce([total, correct, n, classify])
        classify = classify == ctx.size
        if sw is None:  # counts, not sums of weights
            correct, n = int(correct), int(n)
        y = y_all
    result = {"loss": total / n, "accuracy": correct / n if classify else None}
    if extra:
        if not classify:
            raise ValueError("evaluate: metrics other than the loss need class-label targets "
                             "and (N, classes) outputs")
        s = np.concatenate(scores) if scores else np.empty(0)
        if ctx is not None:
            from .distributed import gather_rows

            s = gather_rows(ctx, s, len(x_all))
        for key, fn in extra:
            result[key] = fn(y, s)
    return result


def _regularize(regularizer, model):
    """Add the penalty's gradients to the model's gradients; return the penalty's value.

    ``regularizer`` is a penalty object with ``forward(model) -> float`` (or a call) and
    ``backward(model)`` adding its gradients into ``layer.grads``, as
    :class:`cnnkit.losses.L2Penalty` (:func:`fit` has already turned a number into one)."""
    forward = getattr(regularizer, "forward", None) or regularizer
    value = float(forward(model))
    regularizer.backward(model)
    return value


def _non_finite(xb, epoch, step):
    """Raise the error for a model output holding NaN/Inf: bad input data, or divergence."""
    where = f"epoch {epoch}, step {step + 1}"
    if np.asarray(xb).dtype.kind == "f" and not np.isfinite(xb).all():
        raise ValueError(f"fit: the input batch of {where} holds NaN or infinite values")
    raise FloatingPointError(f"fit: the model's output became NaN/Inf at {where}; the training "
                             "diverged (lower the learning rate)")


def _clipper(max_norm, max_value):
    """The gradient clipping ``fit`` applies after each backward pass (or None), its
    arguments checked before training starts."""
    from .optim.base import _check_hyper
    from .optim.clip import clip_grad_norm, clip_grad_value

    steps = []
    if max_norm is not None:
        max_norm = _check_hyper("fit", "clip_grad_norm", max_norm, low_open=True)
        steps.append(lambda model: clip_grad_norm(model, max_norm))
    if max_value is not None:
        max_value = _check_hyper("fit", "clip_grad_value", max_value, low_open=True)
        steps.append(lambda model: clip_grad_value(model, max_value))
    if not steps:
        return None
    return lambda model: [step(model) for step in steps]


def _needs_closure(optimizer):
    """The optimizer trait ``needs_closure`` (see :class:`cnnkit.optim.Optimizer`); objects
    without it are stepped after fit's own forward and backward."""
    return bool(getattr(optimizer, "needs_closure", False))


class _batch_source:
    """A re-iterable source of ``(x_batch, y_batch)`` pairs for :func:`fit`, checked as it
    streams (each pair: two arrays with the same number of samples)."""

    def __init__(self, data, epochs):
        if callable(data) and not hasattr(data, "__iter__"):
            self._fresh = data
        elif hasattr(data, "__iter__"):
            if iter(data) is data and epochs > 1:
                raise TypeError(f"fit: train is a one-shot iterator ({type(data).__name__}) but "
                                f"{epochs} epochs need it {epochs} times; pass (x, y) arrays, a "
                                "list of batches, or a function returning a fresh iterator")
            self._fresh = lambda: iter(data)
        else:
            raise TypeError("fit: train must be a pair (x, y) of numpy arrays or an iterable of "
                            f"(x_batch, y_batch) pairs, got {type(data).__name__}")
        self.steps = len(data) if hasattr(data, "__len__") else None

    def epoch(self, epoch):
        for i, pair in enumerate(self._fresh()):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(a, np.ndarray) for a in pair)):
                raise TypeError(f"fit: batch {i + 1} of epoch {epoch} is not an (x, y) pair of "
                                f"numpy arrays: {type(pair).__name__}")
            if len(pair[0]) != len(pair[1]) or len(pair[0]) == 0:
                raise ValueError(f"fit: batch {i + 1} of epoch {epoch} has {len(pair[0])} inputs "
                                 f"and {len(pair[1])} targets")
            yield np.asarray(pair[0]), pair[1]


# ---------------------------------------------------------------------------------- the loop
#: Training images ``fit(..., init_data=True)`` hands the data-driven initializers.
INIT_DATA_IMAGES = 2048


def fit(model, train, val=None, *, optimizer, loss: Loss | None = None, epochs: int = 10,
        batch_size: int = 64, shuffle: bool = True, rng=None, seed: int | None = None,
        callbacks=(), early_stopping=None, checkpoint=None, checkpoint_every: int = 1,
        scheduler=None, regularizer=None, initial_epoch: int = 0, resume_from=None,
        verbose: bool = True, stream=None, check_finite: bool = False,
        transform=None, clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None, sample_weight=None, distributed=False,
        sync_batchnorm: bool = False, init_data: bool = False) -> History:
    """Train ``model`` on ``train`` up to epoch ``epochs``; report metrics on ``val``.

    * ``train`` is a pair ``(x, y)`` of arrays (shuffled and cut into ``batch_size`` batches
      here), or any re-iterable of ``(x_batch, y_batch)`` pairs, read once per epoch as it
      comes (a list, an object whose ``__iter__`` starts over, or a callable returning a fresh
      iterator): data can stream from memory-mapped arrays or a generator function.  A
      one-shot iterator serves one epoch only, so it is refused when ``epochs`` asks for more.
    * ``transform``: a :mod:`cnnkit.transforms` augmentation applied to every training batch,
      drawing from the shuffling generator (so a seeded run and a resumed run repeat it); its
      deterministic part (:meth:`~cnnkit.transforms.Transform.inference`) is applied to ``val``.

    * ``rng`` (a Generator or an int seed) or ``seed`` drives shuffling; neither: cnnkit's
      global generator (``cnnkit.seed``).
    * ``scheduler``: a :mod:`cnnkit.schedules` schedule, stepped after every epoch.
    * ``regularizer``: a weight penalty added to the training loss (``losses.L2Penalty``, or a
      number ``c`` for ``L2Penalty(c)``); the reported ``loss`` includes it.
    * ``callbacks``: :class:`Callback` objects; ``early_stopping``: an :class:`EarlyStopping`
      (or a dict of its arguments, or True), run after the other callbacks.
    * ``checkpoint``: a path; a checkpoint is written atomically every ``checkpoint_every``
      epochs and after the last epoch.  ``resume_from``: a checkpoint to continue from (loads
      everything it holds into ``model``, ``optimizer``, ``scheduler``, the shuffling generator,
      the layers' generators and the callbacks; training continues at the epoch after it, up to
      ``epochs``).  ``initial_epoch``: start numbering after this epoch without loading anything.

    * ``clip_grad_norm`` / ``clip_grad_value``: clip the gradients after every backward pass,
      before the step (:func:`cnnkit.optim.clip_grad_norm`, :func:`~cnnkit.optim.clip_grad_value`).
    * ``sample_weight``: per-sample weights (N,) of an ``(x, y)`` pair.  Each batch's loss is
      the weighted mean of its samples' losses (:mod:`cnnkit.losses`), and the epoch's
      ``loss`` / ``accuracy`` are weighted means; a batch whose weights are all zero is
      skipped.  The array is read batch by batch, not copied (when it is float64), so a
      callback may re-weight the samples between epochs (:mod:`cnnkit.boosting` does).
    * ``init_data``: before the first epoch (not when resuming), re-initialise the parameters
      whose initializer needs data (``weight_init=("kmeans_patches", {...})``) from the first
      :data:`INIT_DATA_IMAGES` training images (:func:`cnnkit.init.initialize_from_data`, with
      a generator spawned from the shuffling one, so the seed decides it too).
    * ``check_finite``: stop at the first NaN/Inf that any layer produces (in its output or a
      gradient) with a ``FloatingPointError`` naming that layer; off by default (it costs one
      pass over every array).

    * ``distributed``: True (or an mpi4py communicator) trains data-parallel over MPI, one
      replica per rank, equal to one process with the same global ``batch_size``; run the
      script under ``mpiexec``.  ``train`` must be arrays.  ``sync_batchnorm``: BatchNorm
      statistics over the global batch instead of each rank's shard.  See
      :mod:`cnnkit.distributed`.

    Returns a :class:`History` (with a resumed run: the checkpoint's epochs, then the new ones).
    """
    if transform is not None:
        from .transforms import Transform

        if not isinstance(transform, Transform):
            raise TypeError(f"fit: transform must be a cnnkit.transforms.Transform, got "
                            f"{transform!r}")
    if isinstance(train, (tuple, list)) and len(train) == 2 and all(
            isinstance(a, np.ndarray) for a in train):
        x, y = _check_data("train", train)
    else:
        x, y = _batch_source(train, epochs - (initial_epoch or 0)), None
    if sample_weight is not None and y is None:
        raise TypeError("fit: sample_weight needs train as a pair (x, y) of arrays")
    sw = _sample_weight(sample_weight, len(x), "fit") if y is not None else None
    if val is not None:
        _check_data("val", val)
        deterministic = transform.inference() if transform is not None else None
        if deterministic is not None:
            val = (deterministic(val[0]), val[1])
    for name, v in (("epochs", epochs), ("batch_size", batch_size),
                    ("checkpoint_every", checkpoint_every)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"fit: {name} must be a positive int, got {v!r}")
    if not isinstance(initial_epoch, int) or isinstance(initial_epoch, bool) or initial_epoch < 0:
        raise ValueError(f"fit: initial_epoch must be an int >= 0, got {initial_epoch!r}")
    if rng is not None and seed is not None:
        raise ValueError("fit: pass rng or seed, not both")
    loss = loss or SoftmaxCrossEntropy()
    rng = _random.generator(seed if seed is not None else rng)
    stream = stream if stream is not None else sys.stderr
    callbacks = list(callbacks or ())
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"fit: callbacks must be cnnkit.train.Callback objects, got {cb!r}")
    stopper = _early_stopping(early_stopping)
    if stopper is not None and stopper not in callbacks:
        callbacks.append(stopper)
    if isinstance(regularizer, (int, float)) and not isinstance(regularizer, bool):
        from .losses import L2Penalty

        regularizer = L2Penalty(regularizer)
    if regularizer is not None and not (
            callable(getattr(regularizer, "backward", None))
            and (callable(getattr(regularizer, "forward", None)) or callable(regularizer))):
        raise TypeError(f"fit: regularizer must be a penalty with forward(model) and "
                        f"backward(model) (cnnkit.losses.L2Penalty) or a number, got "
                        f"{regularizer!r}")

    clip = _clipper(clip_grad_norm, clip_grad_value)
    dist = _distributed_run(distributed, sync_batchnorm, model, y)
    history = History()

    def read_state():
        if resume_from is None:
            return initial_epoch, history
        return load_checkpoint(resume_from, model, optimizer, scheduler=scheduler, rng=rng,
                               callbacks=callbacks)

    if dist is None:
        initial_epoch, history = read_state()
    else:
        initial_epoch, history = dist.begin(
            _run_facts(model, x, y, val, optimizer, loss, epochs, batch_size, shuffle,
                       transform, sync_batchnorm, regularizer, clip_grad_norm, clip_grad_value),
            optimizer=optimizer, scheduler=scheduler, rng=rng, callbacks=callbacks,
            read_state=read_state, x=x, batch_size=batch_size)
        callbacks = dist.own_callbacks(callbacks)
        line = dist.describe()
        verbose = verbose and dist.is_root
        if verbose:
            stream.write(line + "\n")
            stream.flush()
    steps = math.ceil(len(x) / batch_size) if y is not None else x.steps
    if not isinstance(init_data, (bool, np.bool_)):
        raise TypeError(f"fit: init_data must be True or False, got {init_data!r}")
    if init_data and resume_from is None:
        if y is None:
            raise ValueError("fit: init_data needs the training data as an (x, y) pair of arrays")
        from .init import initialize_from_data

        initialize_from_data(model, x[:INIT_DATA_IMAGES], rng=rng.spawn(1)[0])
    state = TrainState(model, optimizer, scheduler, history, epochs, steps)
    for cb in callbacks:
        cb.set_trainer(state)
    model.train()
    previous_check = getattr(model, "check_finite", False)
    model.check_finite = bool(check_finite)
    try:
        return _fit_loop(model, x, y, val, optimizer, loss, epochs, batch_size, shuffle, rng,
                         callbacks, checkpoint, checkpoint_every, scheduler, regularizer,
                         initial_epoch, verbose, stream, history, steps, state, transform, clip,
                         sw, dist)
    except BaseException as exc:
        if dist is not None and dist.ctx.size > 1:
            dist.ctx.abort(exc)  # the other ranks wait in a collective call: end the job
        raise
    finally:
        model.check_finite = previous_check
        if dist is not None:
            dist.end()


def _distributed_run(distributed, sync_batchnorm, model, y):
    """fit's :class:`cnnkit.distributed.FitRun`, or None in one process."""
    if distributed is False or distributed is None:
        if sync_batchnorm is not False:
            raise ValueError("fit: sync_batchnorm applies to distributed training only "
                             "(distributed=True)")
        return None
    from . import distributed as _dist

    if y is None:
        raise TypeError("fit: distributed training needs the training data as (x, y) arrays "
                        "(or memory maps): each rank takes its own rows of every global batch, "
                        "which an iterable of ready-made batches cannot give")
    return _dist.FitRun(_dist.context(distributed, sync_batchnorm), model)


def _run_facts(model, x, y, val, optimizer, loss, epochs, batch_size, shuffle, transform,
               sync_batchnorm, regularizer, clip_grad_norm, clip_grad_value) -> dict:
    """What every rank of a distributed fit must have been given alike."""
    from .distributed import describe_object, model_facts

    return {"model": model_facts(model), "batch size": batch_size,
            "data size": (len(x), tuple(x.shape[1:]), str(x.dtype), tuple(y.shape[1:])),
            "validation data size": None if val is None else len(val[0]),
            "optimizer": type(optimizer).__name__, "loss": type(loss).__name__,
            "epochs": epochs, "shuffle": shuffle, "transform": describe_object(transform),
            "sync_batchnorm": sync_batchnorm, "regularizer": describe_object(regularizer),
            "gradient clipping": (clip_grad_norm, clip_grad_value)}


def _fit_loop(model, x, y, val, optimizer, loss, epochs, batch_size, shuffle, rng, callbacks,
              checkpoint, checkpoint_every, scheduler, regularizer, initial_epoch, verbose,
              stream, history, steps, state, transform=None, clip=None, sw=None, dist=None):
    for cb in callbacks:
        cb.on_train_begin({"epochs": epochs, "initial_epoch": initial_epoch,
                           "steps_per_epoch": steps})
    logs: dict = {}
    for epoch in range(initial_epoch + 1, epochs + 1):
        state.epoch = epoch
        lr = getattr(optimizer, "lr", None)
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {"lr": lr})
        if y is not None:
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            batches = (order[i * batch_size:(i + 1) * batch_size] for i in range(steps))
            if dist is None:
                source = ((x[idx], y[idx], None if sw is None else sw[idx]) for idx in batches)
            else:
                source = dist.batches(x, y, batches, sw)
        else:
            source = ((xb, yb, None) for xb, yb in x.epoch(epoch))
        bar = ProgressBar(steps, f"epoch {epoch}/{epochs}", stream) if verbose else None
        total, correct, seen = 0.0, 0, 0
        classify = True
        t0 = time.perf_counter()
        step = -1
        for step, (xb, yb, wb) in enumerate(source):
            kw, size = _weighted(wb, len(yb))
            # a batch whose weights are all zero is skipped (on every rank alike: an empty or
            # weightless shard of a weighted batch still takes part in the step)
            if (size == 0 and wb is not None) if dist is None else dist.batch_size == 0:
                continue
            if transform is not None:
                xb = (transform.apply(xb, rng) if dist is None
                      else dist.transform(transform, xb, rng))
            result = {}

            def closure():
                if dist is not None and not len(yb):
                    return result.setdefault("value", dist.empty_step(optimizer))
                out = model.forward(xb, training=True)
                if not all(o.dtype.kind != "f" or np.isfinite(o).all()
                           for o in (out if isinstance(out, list) else [out])):
                    _non_finite(xb, epoch, step)
                value = loss.forward(out, yb, **kw)
                optimizer.zero_grad()
                model.backward(loss.backward(), input_grads=False)
                if regularizer is not None:
                    value += _regularize(regularizer, model)
                if dist is not None:
                    value = dist.reduce(value)
                if clip is not None:
                    clip(model)
                result.setdefault("out", out)
                result.setdefault("value", value)
                return value

            with _random.batch_offset(0) if dist is None else dist.offset():
                if _needs_closure(optimizer):
                    optimizer.step(closure)
                else:
                    closure()
            value, out = result["value"], result.get("out")
            if not math.isfinite(value):
                raise FloatingPointError(f"fit: loss became {value} at epoch {epoch}, step "
                                         f"{step + 1}; lower the learning rate")
            if not _needs_closure(optimizer):
                optimizer.step()
            batch_correct, batch_classify = 0, out is None or _is_classification(out, yb)
            if out is not None and batch_classify and not (dist is not None and dist.silent):
                batch_correct = _hits(loss.class_scores(out), yb, wb)
            if dist is not None:
                size = dist.batch_size
                batch_correct, batch_classify = dist.step_end(batch_correct, batch_classify)
            total += value * size
            seen += size
            correct += batch_correct
            classify = classify and batch_classify
            if bar:
                bar.update(step + 1, f"loss {total / seen:.4f}"
                           + (f" acc {correct / seen:.4f}" if classify else ""))
            if callbacks:
                for cb in callbacks:
                    cb.on_batch_end(step + 1, {"batch": step + 1, "size": size,
                                               "loss": value})
            if dist is not None and dist.agree(state.stop_training):
                state.stop_training = True  # rank 0's loggers are not on the other ranks
            if state.stop_training:
                break
        if seen == 0:
            raise ValueError(f"fit: the training data gave no batch in epoch {epoch}")
        metrics = {"epoch": epoch, "loss": total / seen}
        if classify:
            metrics["accuracy"] = correct / seen
        if dist is not None:
            dist.sync_buffers()
        if val is not None:
            v = evaluate(model, val, loss=loss, batch_size=max(batch_size, 256),
                         distributed=False if dist is None else dist.ctx)
            metrics["val_loss"] = v["loss"]
            if v["accuracy"] is not None:
                metrics["val_accuracy"] = v["accuracy"]
        if lr is not None:
            metrics["lr"] = float(lr)
        metrics["time"] = time.perf_counter() - t0
        if dist is not None:
            metrics = dist.epoch_metrics(metrics)
        history.append(**metrics)
        if scheduler is not None:
            scheduler.step()
        if bar:
            suffix = f"loss {metrics['loss']:.4f}"
            if "accuracy" in metrics:
                suffix += f" acc {metrics['accuracy']:.4f}"
            if val is not None:
                suffix += f" val_loss {metrics['val_loss']:.4f}"
                if "val_accuracy" in metrics:
                    suffix += f" val_acc {metrics['val_accuracy']:.4f}"
            if scheduler is not None:
                suffix += f" lr {metrics['lr']:.4g}"
            bar.close(suffix, done=step + 1)
        logs = dict(metrics)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if dist is not None and dist.agree(state.stop_training):
            state.request_stop(state.stop_reason or "stopped by a callback on another rank")
        last = epoch == epochs or state.stop_training
        if checkpoint is not None and (last or (epoch - initial_epoch) % checkpoint_every == 0) \
                and (dist is None or dist.is_root):
            save_checkpoint(checkpoint, model, optimizer, epoch=epoch, history=history,
                            scheduler=scheduler, rng=rng, callbacks=callbacks)
        if state.stop_training:
            history.stop_reason = state.stop_reason
            if verbose and state.stop_reason:
                stream.write(f"{state.stop_reason}; stopped after epoch {epoch}\n")
                stream.flush()
            break
    for cb in callbacks:
        cb.on_train_end(logs)
    return history


# ---------------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, not a checkpoint, another model...)."""


def _encode_rng_state(x):
    """A bit generator's state with integers beyond 64 bits as ("bigint", digits) pairs."""
    if isinstance(x, dict):
        return {k: _encode_rng_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode_rng_state(v) for v in x]
    if isinstance(x, int) and not isinstance(x, bool) and not -2 ** 63 <= x < 2 ** 63:
        return ("bigint", str(x))
    return x


def _decode_rng_state(x):
    if isinstance(x, tuple) and len(x) == 2 and x[0] == "bigint":
        return int(x[1])
    if isinstance(x, dict):
        return {k: _decode_rng_state(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_rng_state(v) for v in x]
    return x


def _layer_generators(model) -> dict[str, np.random.Generator]:
    """Every layer's own generator: its attribute ``rng`` (or ``_rng``) if a Generator."""
    out = {}
    for layer in model.layers:
        for attr in ("rng", "_rng"):
            g = getattr(layer, attr, None)
            if isinstance(g, np.random.Generator):
                out[layer.name] = g
                break
    return out


def save_checkpoint(path, model, optimizer, *, epoch: int, history: History | None = None,
                    scheduler=None, rng=None, callbacks=()) -> None:
    """Write a training checkpoint (see the module docstring for its layout) atomically."""
    from . import __version__
    from .io import flatten_state, save_weights
    from .state import STRUCTURAL

    tree: dict = {"optimizer": optimizer.state_dict()}
    if scheduler is not None:
        tree["scheduler"] = scheduler.state_dict()
    trainer = {"epoch": int(epoch),
               "history": [dict(e) for e in (history.epochs if history is not None else [])]}
    if rng is not None:
        trainer["rng"] = _encode_rng_state(rng.bit_generator.state)
    tree["trainer"] = trainer
    gens = _layer_generators(model)
    if gens:
        tree["rng"] = {name: _encode_rng_state(g.bit_generator.state) for name, g in gens.items()}
    cb_states = {}
    for i, cb in enumerate(callbacks or ()):
        st = cb.state_dict()
        if st is not None:
            cb_states[i] = {"type": type(cb).__name__, "state": st}
    if cb_states:
        tree["callbacks"] = cb_states
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    for key, value in flatten_state(tree).items():
        if key.endswith("@s"):  # strings as UTF-8 bytes: weight files hold numeric arrays only
            value = np.frombuffer(str(value[()]).encode("utf-8"), dtype=np.uint8).copy()
        arrays[key] = value
    meta = {"format": CHECKPOINT_FORMAT, "format_version": _CHECKPOINT_VERSION,
            "cnnkit_version": __version__, "epoch": int(epoch), "model": model.name,
            "layers": [[layer.name, type(layer).__name__] for layer in model.layers],
            "weight_names": STRUCTURAL,
            "optimizer": type(optimizer).__name__,
            "scheduler": type(scheduler).__name__ if scheduler is not None else None}
    save_weights(path, arrays, meta)


def load_checkpoint(path, model, optimizer=None, *, scheduler=None, rng=None, callbacks=()):
    """Restore a checkpoint written by :func:`save_checkpoint` (or ``fit(checkpoint=...)``) into
    ``model`` and, when given, ``optimizer``, ``scheduler``, the generator ``rng`` and
    ``callbacks``; returns ``(epoch, history)``.  Layers' own generators are restored too.

    Errors (:class:`CheckpointError`, a ``ValueError``) start with the file name and name the
    offending tensor or part.  On error nothing is changed."""
    from .io import load_weights, unflatten_state
    from .state import load_file_state

    where = str(path)
    arrays, meta = load_weights(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: not a cnnkit training checkpoint (its metadata has no "
                              f"format {CHECKPOINT_FORMAT!r}); a weight file is loaded with "
                              "model.load_weights()")
    if meta.get("format_version") != _CHECKPOINT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {meta.get('format_version')!r}"
                              f" is not supported (expected {_CHECKPOINT_VERSION})")
    weights = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    flat = {k: v for k, v in arrays.items() if not k.startswith("model/")}
    try:
        for key, value in flat.items():
            if key.endswith("@s"):
                if value.dtype != np.uint8 or value.ndim != 1:
                    raise ValueError(f"entry {key!r} should hold UTF-8 bytes")
                flat[key] = np.array(value.tobytes().decode("utf-8"))
        tree = unflatten_state(flat)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: corrupt checkpoint state: {exc}") from None
    trainer = tree.get("trainer")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("epoch"), int):
        raise CheckpointError(f"{where}: corrupt checkpoint: no trainer/epoch entry")
    epoch = trainer["epoch"]
    if optimizer is not None:
        saved = meta.get("optimizer")
        if saved != type(optimizer).__name__:
            raise CheckpointError(f"{where}: the checkpoint holds optimizer state of type {saved}; "
                                  f"cannot resume an optimizer of type "
                                  f"{type(optimizer).__name__}")
        if "optimizer" not in tree:
            raise CheckpointError(f"{where}: corrupt checkpoint: no optimizer state")
    if scheduler is not None and meta.get("scheduler") != type(scheduler).__name__:
        raise CheckpointError(f"{where}: the checkpoint holds "
                              + (f"schedule state of type {meta.get('scheduler')}"
                                 if meta.get("scheduler") else "no schedule state")
                              + f"; cannot resume a schedule of type {type(scheduler).__name__}")
    gens = _layer_generators(model)
    saved_gens = tree.get("rng", {})
    missing = sorted(set(gens) - set(saved_gens))
    if missing:
        raise CheckpointError(f"{where}: no generator state for layer {missing[0]!r} (entry "
                              f"rng/{missing[0]}); the checkpoint is from another model")

    backup_model = model.state_dict()
    backup_opt = optimizer.state_dict() if optimizer is not None else None
    backup_sched = scheduler.state_dict() if scheduler is not None else None
    backup_gens = {n: g.bit_generator.state for n, g in gens.items()}
    backup_rng = rng.bit_generator.state if rng is not None else None
    part = "weights"
    try:
        load_file_state(model, weights, meta, where)  # 0.1 checkpoints: by layer position
        if optimizer is not None:
            part = "optimizer state"
            optimizer.load_state_dict(tree["optimizer"])
        if scheduler is not None:
            part = "scheduler state"
            scheduler.load_state_dict(tree["scheduler"])
        part = "generator state"
        for name, g in gens.items():
            part = f"generator state rng/{name}"
            g.bit_generator.state = _decode_rng_state(saved_gens[name])
        if rng is not None and "rng" in trainer:
            part = "generator state trainer/rng"
            rng.bit_generator.state = _decode_rng_state(trainer["rng"])
        saved_cbs = tree.get("callbacks", {})
        for i, cb in enumerate(callbacks or ()):
            entry = saved_cbs.get(i)
            if entry is None or cb.state_dict() is None:
                continue
            part = f"callback {i} ({type(cb).__name__}) state"
            if entry.get("type") != type(cb).__name__:
                raise ValueError(f"the checkpoint's callback {i} is a {entry.get('type')}")
            cb.load_state_dict(entry["state"])
        history = History([dict(e) for e in trainer.get("history", [])])
    except Exception as exc:
        model.load_state_dict(backup_model)
        if optimizer is not None:
            optimizer.load_state_dict(backup_opt)
        if scheduler is not None:
            scheduler.load_state_dict(backup_sched)
        for name, g in gens.items():
            g.bit_generator.state = backup_gens[name]
        if rng is not None:
            rng.bit_generator.state = backup_rng
        msg = str(exc)
        if msg.startswith(where + ":"):
            raise CheckpointError(msg) from None
        raise CheckpointError(f"{where}: cannot restore the {part}: {msg}") from None
    return epoch, history
