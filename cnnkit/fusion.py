"""Fusion in the model executor: chains of layers run as one call.

A plugin registers a fused chain with ``cnnkit_register_fusions`` (see
:class:`cnnkit.hookspecs.FusionProtocol`); the built-ins register theirs the same way
(``cnnkit.builtin.fusions``).  :meth:`cnnkit.Model.forward` asks :func:`plan` which chains of
its graph to fuse: a chain qualifies where each inner output feeds only the next layer of the
chain (not a branch, not a model output) and its registration accepts the layers' selected
variants, the mode (training or inference) and the dtype.  Fusion changes how a pass is run,
not the model: layers, names, parameters and state dicts are untouched, and a model with
``check_finite`` on runs unfused so every layer's output is checked.

``cnnkit.set_fusion(False)`` or ``CNNKIT_FUSION=0`` turns fusion off (for debugging).
"""
from __future__ import annotations

import os

import numpy as np

from .plugins import get_registry

__all__ = ["PlanStep", "fusion_enabled", "plan", "set_fusion"]

_switch: bool | None = None  # set_fusion's choice; None: the environment decides


def set_fusion(enabled: bool | None) -> None:
    """Turn fusion in the model executor on (default) or off for the process; ``None``
    returns the choice to ``CNNKIT_FUSION`` (``0`` turns it off)."""
    global _switch
    if enabled is not None and not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"cnnkit.set_fusion: expected True, False or None, got {enabled!r}")
    _switch = None if enabled is None else bool(enabled)


def fusion_enabled() -> bool:
    """Whether the executor fuses chains now (:func:`set_fusion`, else ``CNNKIT_FUSION``)."""
    if _switch is not None:
        return _switch
    return os.environ.get("CNNKIT_FUSION", "1").strip().lower() not in ("0", "false", "no", "off")


class PlanStep:
    """One step of a pass: a single graph node (``fusion`` is None) or a fused chain."""

    __slots__ = ("nodes", "fusion")

    def __init__(self, nodes, fusion=None):
        self.nodes, self.fusion = tuple(nodes), fusion

    @property
    def layers(self):
        return [n.layer for n in self.nodes]

    def __repr__(self):
        names = " + ".join(n.name for n in self.nodes)
        return f"<fused {self.fusion.name!r}: {names}>" if self.fusion else f"<{names}>"


def chain(node, length, consumers):
    """The chain of ``length`` nodes starting at ``node`` in which each node is the only
    consumer of the previous one, or None.  ``consumers`` maps id(node) to the nodes reading
    it, with None standing for a model output."""
    nodes = [node]
    while len(nodes) < length:
        users = consumers.get(id(nodes[-1]), ())
        if len(users) != 1 or users[0] is None:
            return None
        nxt = users[0]
        if nxt.layer.is_merge or len(nxt.inputs) != 1:
            return None
        nodes.append(nxt)
    return nodes


def _candidates(reg, nodes, consumers):
    """{id(node): [(fusion, chain), ...]}: the registered chains the graph's structure allows,
    in the order they are tried."""
    found = {}
    for node in nodes:
        for fusion in reg.fusions_from(node.layer.layer_type):
            nodes_ = chain(node, len(fusion.pattern), consumers)
            if nodes_ is not None and tuple(n.layer.layer_type for n in nodes_) == fusion.pattern:
                found.setdefault(id(node), []).append((fusion, nodes_))
    return found


def plan(nodes, consumers, dtype, training: bool, cache: dict | None = None) -> list[PlanStep]:
    """The steps a pass over ``nodes`` (in topological order) runs for inputs of ``dtype``.

    ``cache`` (a dict the caller keeps with its graph) remembers which chains the structure
    allows for the current registry; whether each one applies is decided on every call, since
    it depends on the variants selected now."""
    reg = get_registry()
    if not fusion_enabled() or not reg.fusions:
        return [PlanStep((n,)) for n in nodes]
    key = (id(reg), tuple(reg.fusions))
    if cache is not None and cache.get("key") == key:
        candidates = cache["candidates"]
    else:
        candidates = _candidates(reg, nodes, consumers)
        if cache is not None:
            cache.update(key=key, candidates=candidates)
    steps, taken = [], set()
    for node in nodes:
        if id(node) in taken:
            continue
        step = None
        for fusion, found in candidates.get(id(node), ()):
            if any(id(n) in taken for n in found):
                continue
            shapes = [n.inputs[0].shape for n in found]
            if fusion.refusal([n.layer for n in found], shapes, dtype, training) is None:
                step = PlanStep(found, fusion)
                taken.update(id(n) for n in found)
                break
        steps.append(step or PlanStep((node,)))
    return steps


def _owner(step):
    f = step.fusion
    return f"fused {f.name!r} ({' + '.join(n.name for n in step.nodes)}, plugin {f.plugin!r})"


def forward(step: PlanStep, x, training: bool):
    """Run a fused step on the first layer's input; return ``(y, state)`` (state for
    :func:`backward` in training, else None).  Inputs are checked as the layers check them."""
    layers = step.layers
    x, res = layers[0]._prepare(x)
    resolutions = [res]
    shape = x.shape[:1] + res.output_shape
    for layer in layers[1:]:
        pdtype = layer.dtype
        if pdtype is not None and pdtype != x.dtype:
            raise TypeError(f"{layer.name} ({type(layer).__name__}): input dtype {x.dtype} does "
                            f"not match the parameters' dtype {pdtype}; call .astype(...) on "
                            "the layer/model")
        res = layer.resolution(shape)
        layer._last_resolution = res
        resolutions.append(res)
        shape = shape[:1] + res.output_shape
    y, ctx = step.fusion.impl.forward(x, layers, [r.config for r in resolutions], training)
    if not isinstance(y, np.ndarray) or y.shape != shape or y.dtype != x.dtype:
        got = (f"shape {y.shape}, dtype {y.dtype}" if isinstance(y, np.ndarray)
               else type(y).__name__)
        raise RuntimeError(f"{_owner(step)} returned {got}; expected shape {shape}, dtype "
                           f"{x.dtype}")
    for layer in layers:
        layer._ctx = None
    return y, ((ctx, x.shape, x.dtype, shape) if training else None)


def backward(step: PlanStep, state, dy, need_input_grad: bool):
    """Back-propagate through a fused step; fills each layer's ``grads``; returns dx (None
    when not needed and skipped)."""
    if state is None:
        raise RuntimeError(f"{_owner(step)}: backward() needs a forward(x, training=True) first")
    ctx, in_shape, dtype, out_shape = state
    if not isinstance(dy, np.ndarray):
        raise TypeError(f"{_owner(step)}: backward expects a numpy.ndarray, got "
                        f"{type(dy).__name__}")
    if dy.shape != out_shape:
        raise ValueError(f"{_owner(step)}: gradient shape {dy.shape} does not match the output "
                         f"shape {out_shape}")
    dy = np.ascontiguousarray(dy, dtype=dtype)
    dx, grads = step.fusion.impl.backward(dy, ctx, need_input_grad=need_input_grad)
    if len(grads) != len(step.nodes):
        raise RuntimeError(f"{_owner(step)} returned {len(grads)} gradient dicts for "
                           f"{len(step.nodes)} layers")
    if (dx is not None or need_input_grad) and getattr(dx, "shape", None) != in_shape:
        raise RuntimeError(f"{_owner(step)} returned an input gradient of shape "
                           f"{getattr(dx, 'shape', None)}; expected {in_shape}")
    for layer, g in zip(step.layers, grads):
        layer.grads = dict(g)
    return dx
