"""Optimizers.

Each optimizer is a registered plugin (``cnnkit.builtin.optimizers``); ``create(name, model,
**hyperparameters)`` builds any registered one by name.  The update rules, argument names and
defaults follow ``torch.optim`` (single-tensor code path, one parameter group), so results can be
compared step by step:

=============  ==========  =====================================================================
class          name        torch equivalent
=============  ==========  =====================================================================
``SGD``        "sgd"       ``torch.optim.SGD``
``Adam``       "adam"      ``torch.optim.Adam`` (``weight_decay`` is L2 added to the gradient)
``AdamW``      "adamw"     ``torch.optim.AdamW`` (decoupled decay, default ``weight_decay=0.01``)
``RMSProp``    "rmsprop"   ``torch.optim.RMSprop``
``AdaGrad``    "adagrad"   ``torch.optim.Adagrad``
``LBFGS``      "lbfgs"     ``torch.optim.LBFGS`` (``step(closure)``, optional strong-Wolfe search)
=============  ==========  =====================================================================

Updates are computed in the parameter's own dtype and applied in place to ``layer.params[key]``.
Options of torch that only concern torch's execution (``foreach``, ``fused``, ``capturable``,
``differentiable``) and parameter groups do not exist here.

State
-----
``state_dict()`` returns a nested structure of dicts, lists, NumPy arrays, numbers, strings and
``None``: ``{"hyper": {...}, "steps": int, "param_names": [...], "state": {param name: {...}},
"global": {...}}``.  ``load_state_dict()`` restores it so the optimizer continues bit for bit.
``flatten_state(state)`` turns such a structure into a flat ``{str: numpy.ndarray}`` mapping that
``numpy.savez`` can store without pickling, and ``unflatten_state(flat)`` restores it exactly
(types included: a Python float comes back as a Python float, a tuple as a tuple); both live in
:mod:`cnnkit.io` and are re-exported here.

Modules: :mod:`.base` (``Optimizer`` and the shared checks), :mod:`.sgd`, :mod:`.adaptive`
(Adam, AdamW, RMSProp, AdaGrad), :mod:`.lbfgs`, :mod:`.clip` (gradient clipping by norm and by
value, as ``torch.nn.utils``).  Every optimizer leaves the parameters of frozen layers
(``layer.trainable = False``) untouched.
"""
from __future__ import annotations

from ..io import flatten_state, unflatten_state
from ..plugins import get_registry
from .adaptive import AdaGrad, Adagrad, Adam, AdamW, RMSProp, RMSprop
from .base import Optimizer
from .clip import clip_grad_norm, clip_grad_value
from .lbfgs import LBFGS
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "RMSprop", "AdaGrad", "Adagrad",
           "LBFGS", "create", "available", "flatten_state", "unflatten_state", "clip_grad_norm",
           "clip_grad_value"]


def create(name: str, model_or_params, **hyperparameters) -> Optimizer:
    """Build a registered optimizer by name: ``create("sgd", model, lr=0.1)``."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {name!r}")
    return get_registry().optimizer(name)(model_or_params, **hyperparameters)


def available() -> list[str]:
    return sorted(get_registry().optimizers)
