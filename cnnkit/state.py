"""Structural state dicts: the names a model's tensors are saved and loaded under.

Names depend on the model's structure only, never on which layers the process created before
(layers' default names count up across the process):

* a :class:`~cnnkit.Sequential` keys its entries by position exactly as ``torch.nn.Sequential``
  does (``"0.weight"``, ``"3.bias"``); layers without parameters still take an index, so a
  PyTorch ``state_dict()`` of the same stack loads as it is;
* a graph :class:`~cnnkit.Model` keys a layer by the name the user gave it, otherwise by its
  position in the model's topological order.

Each layer contributes its parameters (``layer.params``) and then its buffers
(``layer.buffers``, e.g. BatchNorm's ``running_mean``, ``running_var`` and
``num_batches_tracked``, PyTorch's names).

Values given to :func:`load_state_dict` may be NumPy arrays or any array object exposing DLPack
or ``__array__`` (a CPU ``torch.Tensor`` for instance); they are converted without cnnkit
importing the library that made them.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = ["IncompatibleKeys", "LegacyNamesWarning", "layer_prefixes", "state_dict",
           "load_state_dict", "load_file_state", "to_numpy", "STRUCTURAL"]

#: metadata value (under the key ``"weight_names"``) that marks files keyed by structural names
STRUCTURAL = "structural"


class IncompatibleKeys(NamedTuple):
    """What :func:`load_state_dict` found in a state dict beyond an exact match."""

    missing_keys: list
    unexpected_keys: list


class LegacyNamesWarning(UserWarning):
    """A weight file from cnnkit 0.1 (process-dependent names) was matched by layer position."""


def _owner(model) -> str:
    return f"{getattr(model, 'name', type(model).__name__)} ({type(model).__name__})"


def _check_model(model):
    from .graph import Model

    if not isinstance(model, Model):
        raise TypeError(f"expected a cnnkit Model or Sequential, got {type(model).__name__}")


def layer_prefixes(model) -> list[tuple[str, object]]:
    """``(prefix, layer)`` for every layer of ``model``, in state-dict order."""
    from .graph import Sequential

    _check_model(model)
    if isinstance(model, Sequential):
        return [(str(i), layer) for i, layer in enumerate(model.layers)]
    out, seen = [], {}
    for i, layer in enumerate(model.layers):
        prefix = layer.name if getattr(layer, "_user_named", True) else str(i)
        if prefix in seen:
            raise ValueError(
                f"{_owner(model)}: layer {layer.name!r} and layer {seen[prefix]!r} would both "
                f"be saved under {prefix!r} (a layer named like a position); rename one")
        seen[prefix] = layer.name
        out.append((prefix, layer))
    return out


def _entries(model):
    """``key -> (layer, kind, name, current array)`` in state-dict order."""
    entries = {}
    for prefix, layer in layer_prefixes(model):
        for key, p in layer.params.items():
            if p is not None:
                entries[f"{prefix}.{key}"] = (layer, "params", key, p)
        for key, b in (getattr(layer, "buffers", None) or {}).items():
            if b is not None:
                entries[f"{prefix}.{key}"] = (layer, "buffers", key, np.asarray(b))
    return entries


def state_dict(model) -> dict[str, np.ndarray]:
    """Copies of every parameter and buffer of ``model`` under its structural name."""
    return {key: np.array(arr, copy=True) for key, (_, _, _, arr) in _entries(model).items()}


def to_numpy(value, where: str = "value") -> np.ndarray:
    """``value`` as a NumPy array: arrays pass through, NumPy scalars and Python numbers are
    wrapped, other objects go through DLPack (no copy where possible) or ``__array__``.
    Errors name ``where``."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: expected an array, got a bool")
    if isinstance(value, (np.generic, int, float)):
        return np.asarray(value)
    problem = None
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except Exception as exc:  # any exporter error: fall back to __array__, report both
            problem = f"{type(exc).__name__}: {exc}"
    if hasattr(value, "__array__"):
        try:
            arr = np.asarray(value)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if isinstance(arr, np.ndarray):
                return arr
            problem = f"__array__ returned {type(arr).__name__}"
    if problem is None:
        raise TypeError(f"{where}: expected a NumPy array or an array object with DLPack or "
                        f"__array__ (e.g. a torch.Tensor), got {type(value).__name__}")
    raise TypeError(f"{where}: cannot convert the {type(value).__name__} to a NumPy array "
                    f"({problem}); pass a CPU tensor detached from autograd with a NumPy dtype")


def _convert(value, key, entry, source):
    """``value`` checked against and cast to the layout of the model's ``entry``; errors name
    ``key`` and, when it differs, the layer-named parameter (``'fc.weight'``)."""
    layer, _, name, current = entry
    named = f"{layer.name}.{name}"
    where = f"{source}: {key!r}" + (f" ({named!r} of the {type(layer).__name__})"
                                     if named != key else "")
    arr = to_numpy(value, where)
    if arr.dtype.fields is not None or arr.dtype.kind not in "iuf":
        raise TypeError(f"{where} has dtype {arr.dtype}; expected real numbers")
    if tuple(arr.shape) != tuple(current.shape):
        raise ValueError(f"{where}: size mismatch: the state dict has shape "
                         f"{tuple(arr.shape)}, the model expects {tuple(current.shape)}")
    target = current.dtype
    if target.kind in "iu":
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{where} has dtype {arr.dtype}; the model keeps it as integers "
                            f"({target})")
        out = np.array(arr, dtype=target, order="C", copy=True)
        if np.any(out < 0):
            raise ValueError(f"{where} holds a negative count")
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(arr, dtype=target, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        why = (f" (values too large for {target})" if np.all(np.isfinite(arr))
               else " (NaN or Inf in the given values)")
        raise ValueError(f"{where} has {bad} non-finite value(s){why}; refused")
    return out


def load_state_dict(model, state, strict: bool = True, *, source: str | None = None):
    """Copy the tensors of ``state`` into ``model`` (see the module docstring for names).

    With ``strict`` (the default) the keys must match exactly; otherwise the keys present are
    loaded and the others reported.  Shapes must always match.  Nothing is changed unless every
    tensor to load is valid.  Returns :class:`IncompatibleKeys`."""
    _check_model(model)
    if not isinstance(strict, (bool, np.bool_)):
        raise TypeError(f"{_owner(model)}: strict must be True or False, got {strict!r}")
    if source is None:
        source = f"{_owner(model)} state dict"
    elif not isinstance(source, str):
        raise TypeError(f"{_owner(model)}: source must be a str, got {type(source).__name__}")
    if not isinstance(state, Mapping):
        raise TypeError(f"{source}: expected a dict of name -> array, got {type(state).__name__}")
    for key in state:
        if not isinstance(key, str):
            raise TypeError(f"{source}: keys must be str, got {type(key).__name__} {key!r}")
    entries = _entries(model)
    missing = [k for k in entries if k not in state]
    unexpected = [k for k in state if k not in entries]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_preview(unexpected)}")
        raise ValueError(f"{source}: state dict does not match {_owner(model)}: "
                         + "; ".join(parts) + f" (the model's keys: {_preview(list(entries))})")
    new = {key: _convert(state[key], key, entries[key], source)
           for key in entries if key in state}
    for key, value in new.items():
        layer, kind, name, _ = entries[key]
        getattr(layer, kind)[name] = value
    return IncompatibleKeys(missing, unexpected)


def _preview(keys, limit=6):
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


# ---------------------------------------------------------------------------------- files
def _legacy_mapping(model, arrays, meta):
    """For a cnnkit 0.1 file (keys ``<layer name>.<key>`` of the saving process, its layers
    listed in the metadata): file key -> structural key, matching layers by position; None
    when the file does not look like one written for this model's architecture."""
    listed = meta.get("layers") if isinstance(meta, Mapping) else None
    prefixes = layer_prefixes(model)
    if (not isinstance(listed, list) or len(listed) != len(prefixes)
            or not all(isinstance(e, list) and len(e) == 2 and all(isinstance(s, str) for s in e)
                       for e in listed)):
        return None
    mapping = {}
    for (old_name, old_type), (prefix, layer) in zip(listed, prefixes):
        if old_type != type(layer).__name__:
            return None
        keys = [k for k, p in layer.params.items() if p is not None]
        keys += [k for k, b in (getattr(layer, "buffers", None) or {}).items() if b is not None]
        for k in keys:
            mapping[f"{old_name}.{k}"] = f"{prefix}.{k}"
    if set(mapping) != set(arrays):
        return None
    return mapping


def load_file_state(model, arrays, meta, source: str):
    """Load the tensors of a weight file into ``model`` (strict).  Files written by cnnkit 0.1
    (no ``weight_names`` marker, keys named after the saving process's layers) are matched by
    layer position when the structural names do not match, with a
    :class:`LegacyNamesWarning`."""
    meta = meta if isinstance(meta, Mapping) else {}
    if meta.get("weight_names") != STRUCTURAL:
        entries = _entries(model)
        if set(arrays) != set(entries):
            mapping = _legacy_mapping(model, arrays, meta)
            if mapping is not None:
                example = next(iter(mapping), None)
                warnings.warn(
                    f"{source}: weights saved by cnnkit 0.1 under process-dependent layer names "
                    f"(e.g. {example!r}); matched to this model's layers by position. Save them "
                    "again to store structural names.", LegacyNamesWarning, stacklevel=4)
                arrays = {mapping[k]: v for k, v in arrays.items()}
    return load_state_dict(model, arrays, strict=True, source=source)


def file_metadata(model) -> dict:
    """Metadata every weight file of ``model`` carries: the naming scheme and, for graphs, how
    each layer is keyed (so a model rebuilt from its config keys its layers the same way)."""
    meta = {"weight_names": STRUCTURAL, "model": model.name,
            "layers": [[layer.name, type(layer).__name__] for layer in model.layers]}
    from .graph import Sequential

    if not isinstance(model, Sequential):
        meta["layer_keys"] = {layer.name: prefix for prefix, layer in layer_prefixes(model)}
    return meta


def restore_layer_keys(model, meta, source: str) -> None:
    """Make the layers of ``model`` (rebuilt from a config, so every layer carries a name) keyed
    as in the model that was saved: by position where that one's were."""
    keys = meta.get("layer_keys") if isinstance(meta, Mapping) else None
    if keys is None:
        return
    if not isinstance(keys, Mapping) or not all(isinstance(v, str) for v in keys.values()):
        raise ValueError(f"{source}: bad metadata: 'layer_keys' must map layer names to keys, "
                         f"got {json.dumps(keys)[:80]}")
    for layer in model.layers:
        prefix = keys.get(layer.name)
        if prefix is not None and prefix != layer.name:
            layer._user_named = False
