"""A boosting-like CNN: one weak classifier per stage of a network, trained jointly with
per-sample weights that a SAMME round updates after every epoch.

A network of n stages is n feature extractors in series.  :class:`StagewiseBoosting` attaches a
small classifier head (global average pooling or flattening, then one ``Dense``) to the output
of each chosen stage, and keeps the backbone's own output as the last weak classifier.  The
backbone and the heads are trained together on the sum of the heads' weighted losses
(:class:`StagewiseLoss`); at the end of each epoch, :func:`samme_round` re-weights the training
samples so that the next epoch concentrates on what the stages got wrong::

    net = ck.boosting.StagewiseBoosting(ck.models.lenet5(), stages=["pool1", "pool2"])
    opt = ck.optim.SGD(net, lr=0.05, momentum=0.9)
    history = ck.boosting.fit(net, (x, y), (xv, yv), optimizer=opt, epochs=10, seed=0)
    net.predict(xv)                      # (N, K) votes: sum_m alpha_m * one_hot(head m)

The round (multi-class AdaBoost, "SAMME", Zhu et al. 2009), for the heads m = 1..M in stage
order, on the whole training set in inference mode, with weights ``w`` summing to 1:

* ``e_m = sum(w[head m is wrong])``, clipped to ``[ERROR_CLIP, 1 - ERROR_CLIP]`` so that a head
  with no error (or no right answer) gets a large but finite weight;
* ``alpha_m = log((1 - e_m) / e_m) + log(K - 1)``; a head no better than chance
  (``e_m >= 1 - 1/K``, so ``alpha_m <= 0``) gets ``alpha_m = 0``: no vote and no re-weighting,
  as SAMME discards such a classifier;
* ``w[head m is wrong] *= exp(alpha_m)``, then ``w /= sum(w)``; head m + 1 sees these weights.

The weights carry over from epoch to epoch (the first epoch trains with uniform weights), so
re-weighting compounds over the rounds; ``carry_over=False`` starts every round from uniform
weights instead (each epoch's weights then come from the last round alone), a variant that
keeps the training distribution from drifting onto the few samples no stage gets right.
:func:`fit` hands them to :func:`cnnkit.train.fit` scaled to a mean of 1 (only their ratios
matter to the weighted losses; this keeps them well inside float32's range).

Prediction is the SAMME vote: ``sum_m alpha_m * one_hot(argmax of head m)``, the class with the
largest total winning (ties: the lowest class index).  Before the first round every head has
``alpha_m = 1`` (a plain majority vote).
"""
from __future__ import annotations

import copy
import math

import numpy as np

from . import layers as L
from .graph import Input, Model, Node, apply_layer
from .losses import Loss, SoftmaxCrossEntropy
from .train import Callback

__all__ = ["StagewiseBoosting", "StagewiseLoss", "SAMMEBoosting", "samme_round", "fit",
           "ERROR_CLIP", "HEADS"]

#: how far a head's weighted error is kept from 0 and 1 (alpha stays finite)
ERROR_CLIP = 1e-10

#: the head kinds: what reduces a stage's output before the head's Dense layer
HEADS = ("flatten", "global_avg")


def samme_round(predictions, labels, weights, num_classes: int):
    """One SAMME round over the heads in order (see the module docstring).

    ``predictions``: (M, N) predicted classes of the M heads; ``labels``: (N,) true classes;
    ``weights``: (N,) non-negative sample weights (normalised to sum 1 first).  Returns
    ``(alphas (M,), errors (M,), new weights (N,) summing to 1)``; ``errors`` are the clipped
    weighted errors each head was scored with."""
    pred = np.asarray(predictions)
    labels = np.asarray(labels)
    if pred.ndim != 2 or labels.shape != (pred.shape[1],):
        raise ValueError(f"samme_round: expected predictions (M, N) and labels (N,), got "
                         f"{pred.shape} and {labels.shape}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"samme_round: num_classes must be an int >= 2, got {num_classes!r}")
    from .losses import check_sample_weight

    w = check_sample_weight(weights, pred.shape[1], "samme_round")
    w = w / w.sum()
    alphas = np.zeros(len(pred))
    errors = np.zeros(len(pred))
    for m, p in enumerate(pred):
        wrong = p != labels
        e = min(max(float(np.sum(w[wrong])), ERROR_CLIP), 1.0 - ERROR_CLIP)
        alpha = max(math.log((1.0 - e) / e) + math.log(num_classes - 1), 0.0)
        errors[m], alphas[m] = e, alpha
        if alpha > 0:
            w = np.where(wrong, w * math.exp(alpha), w)
            w /= w.sum()
    return alphas, errors, w


class StagewiseBoosting(Model):
    """``backbone`` (a built single-input model whose output is (N, K) class scores) with a
    classifier head on the output of each layer named in ``stages``.

    The model's outputs are the heads' logits, in stage order, then (``include_output=True``)
    the backbone's own output: M weak classifiers.  The backbone's layers are shared, not
    copied (training this model trains ``backbone``).  ``head``: ``"flatten"`` (Flatten + Dense)
    or ``"global_avg"`` (GlobalAvgPool2D + Dense; on a 4-D stage output only).  Head layers are
    named ``<stage>_head`` (the Dense) and ``<stage>_head_flatten`` / ``<stage>_head_gap``.
    """

    def __init__(self, backbone: Model, stages, *, head: str = "flatten",
                 include_output: bool = True, num_classes: int | None = None, rng=None,
                 name: str | None = None):
        owner = "StagewiseBoosting"
        if not isinstance(backbone, Model):
            raise TypeError(f"{owner}: backbone must be a cnnkit Model or Sequential, got "
                            f"{type(backbone).__name__}")
        if not backbone.nodes:
            raise ValueError(f"{owner}: the backbone is not built; give it an input_shape")
        if backbone._multi_in or backbone._multi_out:
            raise ValueError(f"{owner}: the backbone must have one input and one output")
        out_shape = backbone.outputs[0].shape
        if len(out_shape) != 2:
            raise ValueError(f"{owner}: the backbone's output must be (N, classes) scores, got "
                             f"shape {out_shape}")
        if num_classes is None:
            num_classes = out_shape[1]
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"{owner}: num_classes must be an int >= 2, got {num_classes!r}")
        if include_output and out_shape[1] != num_classes:
            raise ValueError(f"{owner}: the backbone gives {out_shape[1]} scores but "
                             f"num_classes is {num_classes}")
        if head not in HEADS:
            raise ValueError(f"{owner}: head must be one of {', '.join(HEADS)}, got {head!r}")
        if isinstance(stages, str) or not isinstance(stages, (list, tuple)):
            raise TypeError(f"{owner}: stages must be a list of layer names, got {stages!r}")
        known = [n.name for n in backbone.nodes]
        for s in stages:
            if s not in known:
                from .plugins import _did_you_mean

                raise ValueError(f"{owner}: no layer named {s!r} in {backbone.name}"
                                 f"{_did_you_mean(s, known)}; its layers: {', '.join(known)}")
        if len(set(stages)) != len(stages):
            raise ValueError(f"{owner}: stages name a layer twice: {list(stages)}")
        if not stages and not include_output:
            raise ValueError(f"{owner}: no weak classifier (no stages and include_output=False)")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = head
        self.include_output = bool(include_output)
        dtype = np.dtype(backbone.dtype)
        # the same layers in a second graph: new nodes, shared layer objects
        src_in = backbone.inputs[0]
        inp = Input(src_in.shape[1:], name=src_in.name)
        mapped = {id(src_in): inp}
        for node in backbone.nodes:
            mapped[id(node)] = Node(node.layer, [mapped[id(p)] for p in node.inputs],
                                    node.shape, node.name)
        by_name = {n.name: n for n in backbone.nodes}
        order = [n.name for n in backbone.nodes if n.name in stages]  # stage order
        outputs = [self._head(mapped[id(by_name[s])], s, dtype, rng) for s in order]
        if include_output:
            outputs.append(mapped[id(backbone.outputs[0])])
        super().__init__(inp, outputs, name=name or f"{backbone.name}_boosted")
        self.stages = order
        #: the weak classifiers' names (output nodes), in voting order
        self.head_names = [n.name for n in self.outputs]
        #: the heads' SAMME weights (1 before any round: a majority vote)
        self.alphas = np.ones(len(self.outputs))

    def _head(self, node, stage, dtype, rng):
        shape = node.shape[1:]
        if self.head == "global_avg":
            if len(shape) != 3:
                raise ValueError(f"StagewiseBoosting: head 'global_avg' needs a 4-D stage "
                                 f"output, {stage!r} gives {node.shape}")
            node = apply_layer(L.GlobalAvgPool2D(name=f"{stage}_head_gap"), node)
        elif len(shape) > 1:
            node = apply_layer(L.Flatten(name=f"{stage}_head_flatten"), node)
        return apply_layer(L.Dense(node.shape[1], self.num_classes, dtype=dtype, rng=rng,
                                   name=f"{stage}_head"), node)

    # ------------------------------------------------------------------ prediction
    def votes(self, x, batch_size: int = 256) -> np.ndarray:
        """(M, N): the class each weak classifier predicts for each sample (inference)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        self._check_inputs(x)
        parts = []
        for i in range(0, len(x), batch_size):
            outs = self.forward(x[i:i + batch_size], training=False)
            parts.append(np.stack([np.argmax(o, axis=1) for o in outs]))
        return np.concatenate(parts, axis=1)

    def vote_scores(self, votes) -> np.ndarray:
        """(N, K): ``sum_m alphas[m] * one_hot(votes[m])``."""
        votes = np.asarray(votes)
        scores = np.zeros((votes.shape[1], self.num_classes))
        rows = np.arange(votes.shape[1])
        for alpha, v in zip(self.alphas, votes):
            scores[rows, v] += alpha
        return scores

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """(N, K) SAMME vote totals; ``predict(x).argmax(1)`` is the predicted class."""
        return self.vote_scores(self.votes(x, batch_size))

    def evaluate(self, x, y=None, *, batch_size: int = 256, loss=None, metrics=None,
                 sample_weight=None) -> dict:
        """``loss`` (the joint loss, :class:`StagewiseLoss`), ``accuracy`` (of the vote) and
        ``head_accuracy`` (one per weak classifier) on ``(x, y)`` in inference mode."""
        from .train import evaluate

        if metrics:
            raise ValueError(f"{self.name}: evaluate() of a boosted model reports the loss and "
                             "the vote's accuracy only")
        data = x if y is None else (x, y)
        res = evaluate(self, data, loss=loss or StagewiseLoss(), batch_size=batch_size,
                       sample_weight=sample_weight)
        v = self.votes(data[0], batch_size)
        hits = [v_m == data[1] for v_m in v] + [self.vote_scores(v).argmax(1) == data[1]]
        w = np.ones(len(data[1])) if sample_weight is None else np.asarray(sample_weight, float)
        acc = [float(np.sum(w[h]) / np.sum(w)) for h in hits]
        res["accuracy"], res["head_accuracy"] = acc[-1], acc[:-1]
        return res

    def save(self, path, metadata: dict | None = None) -> None:
        """As :meth:`Model.save`, with the heads and their SAMME weights in the metadata
        (``boosting``: ``{"heads": [...], "alphas": [...]}``)."""
        meta = dict(metadata or {})
        meta["boosting"] = {"heads": self.head_names, "alphas": [float(a) for a in self.alphas]}
        super().save(path, meta)


class StagewiseLoss(Loss):
    """The sum over the weak classifiers of ``base`` (default :class:`SoftmaxCrossEntropy`)
    applied to each output, with the same labels and sample weights: ``forward(outputs,
    labels, sample_weight=None)`` takes the list a :class:`StagewiseBoosting` model returns,
    ``backward()`` gives the list of their gradients."""

    def __init__(self, base: Loss | None = None):
        super().__init__()
        base = base if base is not None else SoftmaxCrossEntropy()
        if not isinstance(base, Loss):
            raise TypeError(f"StagewiseLoss: base must be a cnnkit loss, got {base!r}")
        self.base = base
        self._losses: list[Loss] = []

    def forward(self, outputs, labels, sample_weight=None):
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise TypeError("StagewiseLoss: expected the list of the weak classifiers' outputs, "
                            f"got {type(outputs).__name__}")
        while len(self._losses) < len(outputs):
            self._losses.append(copy.deepcopy(self.base))
        self._losses = self._losses[:len(outputs)]
        total = 0.0
        for loss, out in zip(self._losses, outputs):
            total += loss.forward(out, labels, sample_weight=sample_weight)
        self._ctx = True
        return total

    def _grad(self):
        return [loss.backward() for loss in self._losses]


class SAMMEBoosting(Callback):
    """The boosting round of :func:`fit` as a callback: at the end of each epoch it runs
    :func:`samme_round` on the training set ``(x, y)``, writes the new weights into
    ``weights`` in place (the array :func:`cnnkit.train.fit` reads its batches' weights from,
    scaled to a mean of 1), sets ``model.alphas``, and puts in the epoch's metrics the vote's
    ``accuracy`` on the training set, each head's weighted ``error_<head>`` and ``alpha_<head>``
    and, given ``val``, ``val_loss`` and the vote's ``val_accuracy`` with the new weights.
    Keep it first among the callbacks, so the others see these metrics."""

    def __init__(self, model: StagewiseBoosting, x, y, weights, val=None, batch_size: int = 256,
                 carry_over: bool = True):
        if not isinstance(model, StagewiseBoosting):
            raise TypeError(f"SAMMEBoosting: model must be a StagewiseBoosting, got "
                            f"{type(model).__name__}")
        if not (isinstance(weights, np.ndarray) and weights.dtype == np.float64
                and weights.shape == (len(x),)):
            raise ValueError(f"SAMMEBoosting: weights must be a float64 array of shape "
                             f"({len(x)},) (the array fit() reads)")
        self.boosted, self.x, self.y, self.weights = model, x, np.asarray(y), weights
        if not isinstance(carry_over, bool):
            raise TypeError(f"SAMMEBoosting: carry_over must be True or False, got {carry_over!r}")
        self.val, self.batch_size, self.carry_over = val, batch_size, carry_over

    def on_epoch_end(self, epoch, logs):
        net = self.boosted
        votes = net.votes(self.x, self.batch_size)
        start = self.weights if self.carry_over else np.ones_like(self.weights)
        alphas, errors, w = samme_round(votes, self.y, start, net.num_classes)
        self.weights[:] = w * len(w)
        net.alphas = alphas
        metrics = {"accuracy": float(np.mean(net.vote_scores(votes).argmax(1) == self.y))}
        for name, e, a in zip(net.head_names, errors, alphas):
            metrics[f"error_{name}"], metrics[f"alpha_{name}"] = float(e), float(a)
        if self.val is not None:
            res = net.evaluate(*self.val, batch_size=self.batch_size)
            metrics["val_loss"], metrics["val_accuracy"] = res["loss"], res["accuracy"]
        logs.update(metrics)
        if self.trainer is not None and self.trainer.history.epochs:
            self.trainer.history.epochs[-1].update(metrics)

    def state_dict(self):
        return {"weights": self.weights.copy(), "alphas": np.asarray(self.boosted.alphas)}

    def load_state_dict(self, state):
        self.weights[:] = np.asarray(state["weights"], dtype=np.float64)
        self.boosted.alphas = np.asarray(state["alphas"], dtype=np.float64).copy()


def fit(model: StagewiseBoosting, train, val=None, *, optimizer, loss: Loss | None = None,
        callbacks=(), batch_size: int = 64, carry_over: bool = True, **kwargs):
    """Train a :class:`StagewiseBoosting` model with a SAMME round after every epoch (see the
    module docstring).  ``train`` and ``val`` are ``(x, y)`` pairs with integer labels;
    ``loss`` is the per-head loss (default softmax cross-entropy); ``carry_over``: whether a
    round starts from the previous round's weights (default) or from uniform ones; the other
    arguments are
    those of :func:`cnnkit.train.fit` (``sample_weight`` excepted: the rounds own it).  The
    history's ``accuracy`` / ``val_accuracy`` are the vote's; it also holds each head's
    ``error_<head>`` and ``alpha_<head>`` per epoch."""
    from .train import _check_data
    from .train import fit as train_fit

    if not isinstance(model, StagewiseBoosting):
        raise TypeError(f"boosting.fit: model must be a StagewiseBoosting, got "
                        f"{type(model).__name__}")
    if "sample_weight" in kwargs:
        raise TypeError("boosting.fit: the boosting rounds set the sample weights; "
                        "sample_weight cannot be given")
    x, y = _check_data("train", train, "boosting.fit")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"boosting.fit: the training targets must be integer labels (N,), got "
                         f"{y.dtype} array of shape {y.shape}")
    if y.min() < 0 or y.max() >= model.num_classes:
        raise ValueError(f"boosting.fit: labels must lie in [0, {model.num_classes}), got "
                         f"values in [{y.min()}, {y.max()}]")
    if val is not None:
        _check_data("val", val, "boosting.fit")
    weights = np.ones(len(x))
    rounds = SAMMEBoosting(model, x, y, weights, val, carry_over=carry_over)
    return train_fit(model, (x, y), None, optimizer=optimizer,
                     loss=StagewiseLoss(loss) if not isinstance(loss, StagewiseLoss) else loss,
                     callbacks=[rounds, *callbacks], batch_size=batch_size,
                     sample_weight=weights, **kwargs)
