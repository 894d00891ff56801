"""The ``[training]`` section: :func:`training_from_config` validates it into a
:class:`TrainingSpec`; the ``make_*`` factories build its optimizer (through the plugin
registry), loss, schedule and regularizer (through the name tables of :mod:`cnnkit.losses` and
:mod:`cnnkit.schedules`), and :func:`load_data` its data (through :mod:`cnnkit.datasets`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._locator import ConfigError, _Locator
from .model import _tuples

_TRAIN_KEYS = ("optimizer", "loss", "epochs", "batch_size", "seed", "schedule", "data",
               "early_stopping", "regularizer", "shuffle", "checkpoint_every", "output", "augment",
               "boosting", "init_data")

#: the keys of ``[training.boosting]``: StagewiseBoosting's arguments, then boosting.fit's
_BOOSTING_KEYS = ("stages", "head", "include_output", "carry_over")


@dataclass
class TrainingSpec:
    """The ``[training]`` section of a config, validated (builders below make the objects)."""

    optimizer: dict = field(default_factory=lambda: {"name": "sgd", "lr": 0.05,
                                                     "momentum": 0.9})
    loss: dict = field(default_factory=lambda: {"name": "softmax_cross_entropy"})
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    schedule: dict | None = None
    data: dict = field(default_factory=lambda: {"name": "mnist"})
    early_stopping: dict | None = None
    regularizer: Any = None
    shuffle: bool = True
    checkpoint_every: int = 1
    output: str | None = None
    augment: Any = None
    boosting: dict | None = None
    init_data: bool = False


def _named(value, what, err, key):
    """A "name" or {name = ..., options} spec as a dict with a 'name'."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    err(f"{what} must be a name or a table with a 'name' and options, got {value!r}", key)


def training_from_config(cfg) -> TrainingSpec:
    """The validated ``[training]`` section (defaults: SGD lr 0.05 momentum 0.9, softmax
    cross-entropy, 10 epochs, batch 64, seed 0, the embedded MNIST)::

        [training]
        epochs = 10
        batch_size = 64
        seed = 0
        loss = "softmax_cross_entropy"          # or {name = "...", options}
        optimizer = {name = "sgd", lr = 0.05, momentum = 0.9}
        schedule = {name = "cosine", T_max = 10}   # step, multistep, exponential, cosine,
                                                    # warmup (with after = {...})
        regularizer = 1e-4                      # L2 coefficient, or {name = "L2Penalty", ...}
        early_stopping = {monitor = "val_loss", patience = 3, restore_best_weights = true}
        data = "mnist"                          # or {name = "mnist", path = "DIR",
                                                #  train_size = 1000, test_size = 500,
                                                #  pixel_range = [-0.1, 1.175]}
                                                # or {name = "synthetic", shape = [3, 32, 32],
                                                #  classes = 4, train_size = 512, ...}
                                                # or {name = "cifar10", path = "DIR"},
                                                # "fashion-mnist" (path = "DIR"),
                                                # "npz" (path = "FILE.npz")
        augment = [{name = "random_crop", padding = 4}, "random_horizontal_flip"]
                                                # cnnkit.transforms, applied to training batches
        boosting = {stages = ["pool1", "pool2"], head = "flatten", include_output = true,
                    carry_over = true}          # cnnkit.boosting: a head on each stage's output,
                                                # a SAMME round after every epoch
        init_data = true                        # data-driven initializers (kmeans_patches)
                                                # draw from the training images of `data`
    """
    loc = _Locator(cfg)
    section = cfg.get("training", {}) if isinstance(cfg, dict) else {}

    def err(message, key=None):
        line = loc.line(key=key, section="training") if key else loc.line(key="training")
        raise ConfigError(f"{loc.prefix(line)}training{'.' + key if key else ''}: {message}")

    if not isinstance(section, dict):
        err(f"must be a table, got {type(section).__name__}")
    spec = TrainingSpec()
    for key, value in section.items():
        if key not in _TRAIN_KEYS:
            from ..plugins import _did_you_mean

            err(f"unknown key{_did_you_mean(key, _TRAIN_KEYS)}; the training section has: "
                f"{', '.join(_TRAIN_KEYS)}", key)
        if key in ("epochs", "batch_size", "checkpoint_every"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                err(f"must be a positive int, got {value!r}", key)
        elif key == "seed":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                err(f"must be an int >= 0, got {value!r}", key)
        elif key in ("shuffle", "init_data"):
            if not isinstance(value, bool):
                err(f"must be true or false, got {value!r}", key)
        elif key in ("optimizer", "loss", "data"):
            value = _named(value, key, err, key)
        elif key == "schedule":
            value = _named(value, key, err, key)
        elif key == "early_stopping":
            if value is True:
                value = {}
            if not isinstance(value, dict):
                err(f"must be a table of EarlyStopping arguments or true, got {value!r}", key)
        elif key == "regularizer":
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value >= 0) and not (isinstance(value, dict)
                                             and isinstance(value.get("name"), str)):
                err(f"must be an L2 coefficient >= 0 or a table with a 'name', got {value!r}",
                    key)
        elif key == "output":
            if not isinstance(value, str) or not value:
                err(f"must be a file name, got {value!r}", key)
        elif key == "boosting":
            if not isinstance(value, dict):
                err(f"must be a table (stages = [...], head, include_output, carry_over), got "
                    f"{value!r}", key)
            for sub in value:
                if sub not in _BOOSTING_KEYS:
                    from ..plugins import _did_you_mean

                    err(f"unknown key {sub!r}{_did_you_mean(sub, _BOOSTING_KEYS)}; it has: "
                        f"{', '.join(_BOOSTING_KEYS)}", key)
            stages = value.get("stages")
            if not (isinstance(stages, list) and all(isinstance(v, str) for v in stages)):
                err(f"stages must be a list of layer names, got {stages!r}", key)
            for flag in ("include_output", "carry_over"):
                if flag in value and not isinstance(value[flag], bool):
                    err(f"{flag} must be true or false, got {value[flag]!r}", key)
        elif key == "augment":
            from ..transforms import from_spec

            try:
                from_spec(value)  # checked now, built by make_transform
            except (TypeError, ValueError) as exc:
                err(str(exc), key)
        setattr(spec, key, value)
    spec._locator = loc  # for the builders' error messages
    return spec


def _spec_error(spec, key, message):
    loc = getattr(spec, "_locator", None)
    line = loc.line(key=key, section="training") if loc else None
    prefix = loc.prefix(line) if loc else ""
    return ConfigError(f"{prefix}training.{key}: {message}")


def _canonical(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _lookup(table, name):
    """The entry of a name table (keys lower case without punctuation) for ``name``."""
    return table.get(_canonical(name))


def _named_entry(spec, section, table, desc):
    """(class, options) for a ``{name = ..., options...}`` table of ``section``: the class of
    that name in ``table``, or a spec error listing the known names."""
    opts = dict(desc)
    name = opts.pop("name")
    cls = _lookup(table, name)
    if cls is None:
        raise _spec_error(spec, section, f"unknown {section} {name!r}; known: "
                          + ", ".join(table))
    return cls, opts


def _build(spec, section, factory, /, *args, **kwargs):
    """``factory(*args, **kwargs)``, its TypeError or ValueError reported as a spec error."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise _spec_error(spec, section, str(exc)) from None


def make_optimizer(spec: TrainingSpec, model, **overrides):
    """The optimizer of ``spec`` for ``model`` (``overrides`` replace hyper-parameters)."""
    from .. import optim

    opts = dict(spec.optimizer)
    name = opts.pop("name")
    opts.update({k: v for k, v in overrides.items() if v is not None})
    opts = {k: _tuples(v) for k, v in opts.items()}
    try:
        return _build(spec, "optimizer", optim.create, name, model, **opts)
    except KeyError as exc:
        raise _spec_error(spec, "optimizer", exc.args[0] if exc.args else str(exc)) from None


def make_loss(spec: TrainingSpec):
    """The loss of ``spec``, by a name of :data:`cnnkit.losses.LOSSES`."""
    from ..losses import LOSSES

    cls, opts = _named_entry(spec, "loss", LOSSES, spec.loss)
    return _build(spec, "loss", cls, **opts)


def make_schedule(spec: TrainingSpec, optimizer, epochs: int | None = None):
    """The schedule of ``spec`` on ``optimizer`` or None, by a name of
    :data:`cnnkit.schedules.SCHEDULES`.  ``T_max`` of a cosine schedule defaults to the number
    of epochs."""
    from ..schedules import SCHEDULES, CosineAnnealingLR

    if spec.schedule is None:
        return None

    def build(desc):
        cls, opts = _named_entry(spec, "schedule", SCHEDULES, desc)
        if "after" in opts:
            after = opts["after"]
            if isinstance(after, str):
                after = {"name": after}
            if not isinstance(after, dict) or not isinstance(after.get("name"), str):
                raise _spec_error(spec, "schedule", f"after must be a schedule name or a table "
                                  f"with a 'name', got {after!r}")
            opts["after"] = build(after)
        if cls is CosineAnnealingLR and "T_max" not in opts and epochs:
            opts["T_max"] = epochs
        return _build(spec, "schedule", cls, optimizer,
                      **{k: _tuples(v) if k != "after" else v for k, v in opts.items()})

    return build(spec.schedule)


def make_regularizer(spec: TrainingSpec):
    """None, a number (L2 coefficient) or a penalty of :data:`cnnkit.losses.PENALTIES`."""
    from ..losses import PENALTIES

    reg = spec.regularizer
    if reg is None or isinstance(reg, (int, float)):
        return reg if reg else None
    cls, opts = _named_entry(spec, "regularizer", PENALTIES, reg)
    return _build(spec, "regularizer", cls, **opts)


def make_boosted(spec: TrainingSpec, model, rng=None):
    """``model`` with the stage heads of ``spec.boosting``
    (:class:`cnnkit.boosting.StagewiseBoosting`), or ``model`` itself without that section."""
    from ..boosting import StagewiseBoosting

    if not spec.boosting:
        return model
    opts = {k: v for k, v in spec.boosting.items() if k != "carry_over"}
    return _build(spec, "boosting", StagewiseBoosting, model, rng=rng, **opts)


def make_transform(spec: TrainingSpec, extra=None):
    """The augmentation of ``spec`` (its ``augment`` list, then the command line's
    ``--augment`` items in ``extra``) as a :class:`cnnkit.transforms.Compose`, or ``None``."""
    from ..transforms import from_spec

    items = ([] if spec.augment is None else
             [spec.augment] if isinstance(spec.augment, (str, dict)) else list(spec.augment))
    items += list(extra or ())
    return _build(spec, "augment", from_spec, items) if items else None


def load_data(spec: TrainingSpec, *, dtype=np.float32, path_override=None):
    """((x_train, y_train), (x_test, y_test), description) for the spec's data section, loaded
    by :func:`cnnkit.datasets.load_dataset`; ``path_override`` (a folder, the command line's
    ``--data``) replaces the section's ``path``."""
    from ..datasets import DatasetOptionsError, load_dataset

    from ..datasets import detect_dataset

    opts = dict(spec.data)
    name = opts.pop("name")
    if path_override:
        if _canonical(name) == "synthetic":
            raise _spec_error(spec, "data", "--data (a folder) does not apply to synthetic data")
        detected = detect_dataset(path_override)
        if detected != "mnist" and _canonical(name) != detected:
            # --data names a CIFAR-10 folder or an .npz: read it as that, keeping sizes
            name = detected
            opts = {k: v for k, v in opts.items() if k in ("train_size", "test_size")}
        opts["path"] = path_override
    try:
        return load_dataset(name, dtype=dtype, **opts)
    except DatasetOptionsError as exc:
        raise _spec_error(spec, "data", str(exc)) from None
