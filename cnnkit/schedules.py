"""Learning-rate schedules, stepped once per epoch as in ``torch.optim.lr_scheduler``.

Each schedule sets ``optimizer.lr`` from a closed-form function of the epoch counter, so the
values equal torch's (up to rounding) and a restored schedule continues exactly::

    opt = ck.optim.SGD(model, lr=0.1, momentum=0.9)
    sched = ck.schedules.LinearWarmup(opt, warmup_steps=5, start_factor=0.1,
                                      after=ck.schedules.CosineAnnealingLR(opt, T_max=45))
    for epoch in range(50):
        train_one_epoch(model, opt)     # uses opt.lr
        sched.step()

========================  ==========================================================================
schedule                  learning rate at epoch ``e`` (``base`` = the optimizer's initial lr)
========================  ==========================================================================
``StepLR``                ``base * gamma ** (e // step_size)``
``MultiStepLR``           ``base * gamma ** (number of milestones <= e)``
``ExponentialLR``         ``base * gamma ** e``
``CosineAnnealingLR``     ``eta_min + (base - eta_min) * (1 + cos(pi * e / T_max)) / 2``
``LinearWarmup``          ``base * (start_factor + (end_factor - start_factor) * min(e, W) / W)``
                          then, with ``after``, ``after``'s value at ``e - W`` (torch's ``LinearLR``
                          chained by ``SequentialLR(milestones=[W])``)
========================  ==========================================================================

Constructing a schedule records ``optimizer.initial_lr`` (once, like torch's ``initial_lr``) and
sets the epoch-0 rate.  ``get_last_lr()`` returns a one-element list, as torch does for a single
parameter group.  ``state_dict()`` holds only numbers, strings and lists (nested for ``after``),
so ``cnnkit.optim.flatten_state`` can store it.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from ._checks import positive_int

__all__ = ["LRSchedule", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
           "LinearWarmup", "SCHEDULES"]


def _number(owner, name, value, *, low=None, high=None, low_open=False):
    if (not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got "
                         f"{value!r}")
    if high is not None and value > high:
        raise ValueError(f"{owner}: {name} must be <= {high}, got {value!r}")
    return float(value)


class LRSchedule:
    """Base class: ``_lr_at(epoch)`` gives the closed-form rate; ``step()`` advances one epoch
    and writes the rate into ``optimizer.lr``.  Subclasses list their settings in ``_fields``."""

    _fields: tuple[str, ...] = ()

    def __init__(self, optimizer):
        owner = type(self).__name__
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{owner}: expected a cnnkit optimizer (with an lr), got "
                            f"{optimizer!r}")
        self.optimizer = optimizer
        if getattr(optimizer, "initial_lr", None) is None:
            optimizer.initial_lr = float(optimizer.lr)
        self.base_lr = float(optimizer.initial_lr)
        self.last_epoch = -1
        self._last_lr = None
        self.step()

    def _lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def _apply(self):
        lr = float(self._lr_at(self.last_epoch))
        self.optimizer.lr = lr
        self._last_lr = lr

    def refresh(self) -> None:
        """Set the optimizer's rate again from the schedule's state, after its base rate or
        its length was changed (``cnnkit train --resume --lr ...`` does)."""
        self._apply()

    def step(self) -> None:
        """Advance one epoch (call once per epoch, after that epoch's optimizer steps)."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The rate set by the latest ``step()`` (a one-element list, like torch)."""
        return [self._last_lr]

    @property
    def lr(self) -> float:
        return self._last_lr

    def state_dict(self) -> dict:
        state = {"type": type(self).__name__, "last_epoch": self.last_epoch,
                 "base_lr": self.base_lr}
        for name in self._fields:
            value = getattr(self, name)
            state[name] = list(value) if isinstance(value, (list, tuple)) else value
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output and set the optimizer's rate accordingly."""
        owner = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"{owner}: load_state_dict expects a dict, got {type(state).__name__}")
        if state.get("type", owner) != owner:
            raise ValueError(f"{owner}: the state belongs to a {state['type']}")
        missing = {"last_epoch", "base_lr", *self._fields} - set(state)
        if missing:
            raise ValueError(f"{owner}: state lacks {sorted(missing)}")
        last_epoch = state["last_epoch"]
        if not isinstance(last_epoch, (int, np.integer)) or isinstance(last_epoch, bool) \
                or last_epoch < 0:
            raise ValueError(f"{owner}: last_epoch must be a non-negative int, got "
                             f"{last_epoch!r}")
        self._load_fields(state)
        self.base_lr = _number(owner, "base_lr", state["base_lr"], low=0.0)
        self.last_epoch = int(last_epoch)
        self._apply()

    def _load_fields(self, state):
        for name in self._fields:
            setattr(self, name, state[name])

    def __repr__(self):
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({fields}, last_epoch={self.last_epoch}, lr={self.lr})"


class StepLR(LRSchedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    _fields = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = positive_int(step_size, "step_size", "StepLR")
        self.gamma = _number("StepLR", "gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def _load_fields(self, state):
        self.step_size = positive_int(state["step_size"], "step_size", "StepLR")
        self.gamma = _number("StepLR", "gamma", state["gamma"], low=0.0, low_open=True)

    def _lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRSchedule):
    """Multiply the rate by ``gamma`` at each milestone epoch (a milestone listed twice
    multiplies twice, as in torch)."""

    _fields = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones = self._check_milestones(milestones)
        self.gamma = _number("MultiStepLR", "gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    @staticmethod
    def _check_milestones(milestones):
        try:
            ms = list(milestones)
        except TypeError:
            raise ValueError(f"MultiStepLR: milestones must be a list of positive ints, got "
                             f"{milestones!r}") from None
        ms = [positive_int(m, "each milestone", "MultiStepLR") for m in ms]
        if ms != sorted(ms):
            raise ValueError(f"MultiStepLR: milestones must be increasing, got {ms}")
        return ms

    def _load_fields(self, state):
        self.milestones = self._check_milestones(state["milestones"])
        self.gamma = _number("MultiStepLR", "gamma", state["gamma"], low=0.0, low_open=True)

    def _lr_at(self, epoch):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRSchedule):
    """Multiply the rate by ``gamma`` every epoch."""

    _fields = ("gamma",)

    def __init__(self, optimizer, gamma):
        self.gamma = _number("ExponentialLR", "gamma", gamma, low=0.0, low_open=True)
        super().__init__(optimizer)

    def _load_fields(self, state):
        self.gamma = _number("ExponentialLR", "gamma", state["gamma"], low=0.0, low_open=True)

    def _lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRSchedule):
    """Cosine from the initial rate down to ``eta_min`` over ``T_max`` epochs (beyond ``T_max``
    the cosine continues, back up to the initial rate at ``2 T_max``, as torch's does)."""

    _fields = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = positive_int(T_max, "T_max", "CosineAnnealingLR")
        self.eta_min = _number("CosineAnnealingLR", "eta_min", eta_min, low=0.0)
        super().__init__(optimizer)

    def _load_fields(self, state):
        self.T_max = positive_int(state["T_max"], "T_max", "CosineAnnealingLR")
        self.eta_min = _number("CosineAnnealingLR", "eta_min", state["eta_min"], low=0.0)

    def _lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearWarmup(LRSchedule):
    """Linear warm-up: the rate goes linearly from ``start_factor * base`` (epoch 0) to
    ``end_factor * base`` (epoch ``warmup_steps``), as torch's ``LinearLR(start_factor,
    end_factor, total_iters=warmup_steps)``.  With ``after`` (another schedule on the same
    optimizer), that schedule takes over at epoch ``warmup_steps``, starting from its own epoch 0
    (torch's ``SequentialLR([LinearLR(...), after], milestones=[warmup_steps])``); ``after`` is
    then driven by this schedule, do not ``step()`` it yourself."""

    _fields = ("warmup_steps", "start_factor", "end_factor")

    def __init__(self, optimizer, warmup_steps=5, start_factor=1.0 / 3, end_factor=1.0, *,
                 after: LRSchedule | None = None):
        owner = "LinearWarmup"
        self.warmup_steps = positive_int(warmup_steps, "warmup_steps", owner)
        self.start_factor = _number(owner, "start_factor", start_factor, low=0.0, high=1.0,
                                    low_open=True)
        self.end_factor = _number(owner, "end_factor", end_factor, low=0.0, high=1.0)
        if after is not None:
            if not isinstance(after, LRSchedule):
                raise TypeError(f"{owner}: after must be a cnnkit schedule, got {after!r}")
            if after.optimizer is not optimizer:
                raise ValueError(f"{owner}: after ({type(after).__name__}) schedules another "
                                 f"optimizer")
            if after is self:
                raise ValueError(f"{owner}: after cannot be the warm-up itself")
            after.last_epoch = -1  # not started: it takes over at epoch warmup_steps
        self.after = after
        super().__init__(optimizer)

    def _load_fields(self, state):
        owner = "LinearWarmup"
        self.warmup_steps = positive_int(state["warmup_steps"], "warmup_steps", owner)
        self.start_factor = _number(owner, "start_factor", state["start_factor"], low=0.0,
                                    high=1.0, low_open=True)
        self.end_factor = _number(owner, "end_factor", state["end_factor"], low=0.0, high=1.0)
        after_state = state.get("after")
        if (after_state is None) != (self.after is None):
            raise ValueError(f"{owner}: the state {'has' if after_state else 'has no'} 'after' "
                             f"schedule but this warm-up {'has none' if after_state else 'has one'}")
        if after_state is not None:
            epoch = after_state.get("last_epoch") if isinstance(after_state, dict) else None
            if epoch == -1:  # not started yet: restore the settings only
                self.after.load_state_dict({**after_state, "last_epoch": 0})
                self.after.last_epoch = -1
            else:
                self.after.load_state_dict(after_state)

    def state_dict(self):
        state = super().state_dict()
        state["after"] = self.after.state_dict() if self.after is not None else None
        return state

    def _lr_at(self, epoch):
        w = self.warmup_steps
        if self.after is not None and epoch >= w:
            return self.after._lr_at(epoch - w)
        return self.base_lr * (self.start_factor
                               + (self.end_factor - self.start_factor) * min(epoch, w) / w)

    def _apply(self):
        if self.after is not None:
            self.after.last_epoch = self.last_epoch - self.warmup_steps \
                if self.last_epoch >= self.warmup_steps else -1
            if self.after.last_epoch >= 0:
                self.after._last_lr = float(self.after._lr_at(self.after.last_epoch))
        super()._apply()


#: Schedules by the name a config gives them (``schedule = {name = "cosine", ...}``).  Keys are
#: lower case without punctuation; a config's name is compared in that form, so "StepLR" and
#: "step_lr" both find :class:`StepLR`.
SCHEDULES = {"cosineannealinglr": CosineAnnealingLR, "exponentiallr": ExponentialLR,
             "linearwarmup": LinearWarmup, "multisteplr": MultiStepLR, "steplr": StepLR,
             "step": StepLR, "multistep": MultiStepLR, "exponential": ExponentialLR,
             "cosine": CosineAnnealingLR, "cosineannealing": CosineAnnealingLR,
             "warmup": LinearWarmup}
