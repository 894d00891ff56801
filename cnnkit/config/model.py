"""A model as a config dict and back: :func:`model_to_config` (architecture only, no weights)
and :func:`model_from_config` (chains and graphs, with errors that name the faulty entry)."""
from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np

from .._checks import accepts
from ..plugins import _did_you_mean
from ._locator import ConfigError, _entry_label, _Locator

_LAYER_KEYS = ("type", "inputs")
_INIT_KEYS = ("weight_init", "bias_init")
_TOP_KEYS = ("name", "dtype", "input_shape", "inputs", "outputs", "layers", "training",
             "format_version")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- model -> config
def _plain(value, owner):
    """get_config values as plain TOML/JSON values (tuples -> lists, numpy -> Python)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, owner) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, owner) for k, v in value.items()}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    raise ValueError(f"{owner}: cannot put {value!r} ({type(value).__name__}) in a config")


def _init_to_config(init, owner, what):
    if isinstance(init, str):
        return init
    if isinstance(init, (tuple, list)) and len(init) == 2 and isinstance(init[0], str) \
            and isinstance(init[1], dict):
        if "name" in init[1]:
            raise ValueError(f"{owner}: {what} options may not contain a 'name' key")
        return {"name": init[0], **_plain(init[1], owner)}
    raise ValueError(f"{owner}: {what} {init!r} cannot be written to a config (a Python "
                     "callable?); register it as an initializer and pass its name")


def _layer_entry(layer):
    owner = f"layer {layer.name!r} ({type(layer).__name__})"
    if not layer.layer_type:
        raise ValueError(f"{owner}: has no registered layer type")
    entry = {"type": layer.layer_type, "name": layer.name}
    try:
        params = inspect.signature(type(layer).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in layer.get_config().items():
        if key in _LAYER_KEYS or key in ("name", "impl"):
            raise ValueError(f"{owner}: get_config() key {key!r} clashes with a config key")
        if value is None and key in params and params[key].default is None:
            continue  # implied (TOML has no null)
        entry[key] = _plain(value, owner)
    if layer.impl is not None:
        entry["impl"] = layer.impl
    for key in _INIT_KEYS:
        init = getattr(layer, key, None)
        if init is not None and accepts(type(layer), key):
            entry[key] = _init_to_config(init, owner, key)
    return entry


def model_to_config(model) -> dict:
    """The architecture of ``model`` (a Sequential or a graph Model) as a dict of plain values
    (no weights).  Sequential models give a chain (``input_shape`` and ``layers``); graphs give
    ``inputs``, ``outputs`` and each layer's ``inputs``."""
    from ..graph import Sequential

    cfg: dict[str, Any] = {"format_version": FORMAT_VERSION, "name": model.name,
                           "dtype": np.dtype(model.dtype).name}
    if isinstance(model, Sequential):
        if model._built:
            cfg["input_shape"] = list(model.input_shape[1:])
        cfg["layers"] = [_layer_entry(layer) for layer in model.layers]
        return cfg
    cfg["inputs"] = [{"name": n.name, "shape": list(n.shape[1:])} for n in model.inputs]
    names = [n.name for n in model.outputs]
    cfg["outputs"] = names if model._multi_out else names[0]
    layers = []
    for node in model.nodes:
        entry = _layer_entry(node.layer)
        entry["inputs"] = [p.name for p in node.inputs]
        layers.append(entry)
    cfg["layers"] = layers
    return cfg


# ----------------------------------------------------------------------------- config -> model
def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _init_from_config(spec, err, key):
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        if not isinstance(spec.get("name"), str):
            err(f"{key} must be an initializer name or a table with a 'name' and options, got "
                f"{spec!r}", key)
        opts = {k: v for k, v in spec.items() if k != "name"}
        return (spec["name"], opts)
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and isinstance(spec[0], str) \
            and isinstance(spec[1], dict):
        return (spec[0], dict(spec[1]))
    err(f"{key} must be an initializer name or a table with a 'name' and options, got "
        f"{spec!r}", key)


def _signature_text(cls):
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return "?"
    return ", ".join(p for p in params if p != "self")


def _build_layer(index, entry, loc, *, dtype, rng, default_name):
    from ..plugins import get_registry

    label = _entry_label(index, entry)

    def err(message, key=None):
        line = loc.line(index=index, key=key,
                        name=entry.get("name") if isinstance(entry, dict) else None)
        raise ConfigError(f"{loc.prefix(line)}{label}: {message}")

    if not isinstance(entry, dict):
        err(f"expected a table (dict) describing a layer, got {type(entry).__name__}")
    typ = entry.get("type")
    reg = get_registry()
    if not isinstance(typ, str) or not typ:
        err("missing 'type' (a registered layer type: " + ", ".join(sorted(reg.layer_types))
            + ")")
    try:
        cls = reg.layer_class(typ)
    except KeyError:
        err(f"unknown layer type {typ!r}{_did_you_mean(typ, reg.layer_types)}; registered "
            "layer types: " + ", ".join(sorted(reg.layer_types)), "type")
    name = entry.get("name", default_name)
    if not isinstance(name, str) or not name:
        err(f"name must be a non-empty string, got {name!r}", "name")
    args = {k: _tuples(v) for k, v in entry.items() if k not in _LAYER_KEYS}
    args["name"] = name
    for key in _INIT_KEYS:
        if key in args:
            args[key] = _init_from_config(args[key], err, key)
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = sig.parameters
        var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        if not var_kw:
            for key in args:
                if key not in params or params[key].kind in (params[key].VAR_POSITIONAL,):
                    err(f"unexpected argument {key!r}"
                        f"{_did_you_mean(key, [n for n in params if n != 'self'])}; "
                        f"{cls.__name__} takes: {_signature_text(cls)}", key)
        for pname, p in params.items():
            if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty and pname not in args:
                err(f"missing required argument {pname!r}; {cls.__name__} takes: "
                    f"{_signature_text(cls)}")
        if "dtype" in params and "dtype" not in args and dtype is not None:
            args["dtype"] = dtype
        if "rng" in params and "rng" not in args and rng is not None:
            args["rng"] = rng
    try:
        return cls(**args)
    except (TypeError, ValueError, KeyError) as exc:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        bad = next((k for k in args if re.search(rf"\b{re.escape(k)}\b", msg)), None)
        err(f"bad argument: {msg}", bad if bad in entry else None)


def _check_top(cfg, loc):
    def err(message, key=None):
        raise ConfigError(f"{loc.prefix(loc.line(key=key) if key else None)}{message}")

    if not isinstance(cfg, dict):
        raise ConfigError(f"a model config must be a table (dict), got {type(cfg).__name__}")
    unknown = [k for k in cfg if k not in _TOP_KEYS]
    if unknown:
        err(f"unknown top-level key {unknown[0]!r}; a model config has: "
            + ", ".join(_TOP_KEYS), unknown[0])
    version = cfg.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        err(f"format_version {version!r} is not supported (expected {FORMAT_VERSION})",
            "format_version")
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers:
        err("'layers' must be a non-empty array of layer tables", "layers")
    return err


def _shape(value, what, err, key):
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)):
        err(f"{what} must be a non-empty list of positive ints (without the batch axis), got "
            f"{value!r}", key)
    return tuple(value)


def model_from_config(cfg, *, rng=None, dtype=None):
    """Build the model a config describes (fresh weights from the layers' initializers, drawn
    from ``rng``: a Generator or an int seed; None: cnnkit's global generator).  ``dtype``
    overrides the config's dtype.  Raises :class:`ConfigError` naming the faulty entry."""
    from .. import _random
    from ..graph import Input, Model, Sequential, apply_layer

    loc = _Locator(cfg)
    err = _check_top(cfg, loc)
    dtype = dtype if dtype is not None else cfg.get("dtype", "float32")
    try:
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError
    except TypeError:
        err(f"dtype must be 'float32' or 'float64', got {dtype!r}", "dtype")
    rng = _random.generator(rng)
    name = cfg.get("name")
    if name is not None and not isinstance(name, str):
        err(f"name must be a string, got {name!r}", "name")
    entries = cfg["layers"]
    # default names: "<type>_<k>", k counting that type in this config
    counts: dict[str, int] = {}
    defaults = []
    for e in entries:
        typ = e.get("type") if isinstance(e, dict) else None
        typ = typ.lower() if isinstance(typ, str) else "layer"
        counts[typ] = counts.get(typ, 0) + 1
        defaults.append(f"{typ}_{counts[typ]}")
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        n = e.get("name", defaults[i]) if isinstance(e, dict) else None
        if isinstance(n, str):
            if n in seen:
                line = loc.line(index=i, key="name", name=n)
                raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, e)}: duplicate name "
                                  f"{n!r} (also layers[{seen[n]}]); layer names must be unique")
            seen[n] = i
    graph = ("inputs" in cfg or "outputs" in cfg
             or any(isinstance(e, dict) and "inputs" in e for e in entries))
    if not graph:
        layers = [_build_layer(i, e, loc, dtype=dtype, rng=rng, default_name=defaults[i])
                  for i, e in enumerate(entries)]
        if "input_shape" not in cfg:
            return Sequential(layers, name=name)
        in_shape = _shape(cfg["input_shape"], "input_shape", err, "input_shape")
        shape = (None,) + in_shape
        for i, (layer, entry) in enumerate(zip(layers, entries)):
            if layer.is_merge:
                line = loc.line(index=i, key="type")
                raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, entry)}: a merge layer "
                                  "needs 'inputs' naming the nodes it merges (and the config "
                                  "'inputs'/'outputs' of a graph)")
            try:
                shape = layer.output_shape(shape)
            except ValueError as exc:
                line = loc.line(index=i, name=layer.name)
                prev = ("the input" if i == 0 else f"layers[{i - 1}] {layers[i - 1].name!r}")
                raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, entry)}: shape mismatch: "
                                  f"{exc} (fed by {prev})") from None
        return Sequential(layers, input_shape=in_shape, name=name)

    # ---- a graph
    if "input_shape" in cfg and "inputs" in cfg:
        err("give either 'input_shape' (one input named 'input') or 'inputs', not both",
            "inputs")
    if "inputs" in cfg:
        specs = cfg["inputs"]
        if isinstance(specs, dict):
            specs = [specs]
        if not isinstance(specs, list) or not specs:
            err("'inputs' must be an array of tables with 'name' and 'shape'", "inputs")
        inputs = []
        for j, s in enumerate(specs):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str) \
                    or set(s) - {"name", "shape"}:
                err(f"inputs[{j}] must be a table with 'name' (a string) and 'shape', got "
                    f"{s!r}", "inputs")
            inputs.append(Input(_shape(s.get("shape"), f"inputs[{j}] ({s['name']!r}) shape",
                                       err, "inputs"), name=s["name"]))
    elif "input_shape" in cfg:
        inputs = [Input(_shape(cfg["input_shape"], "input_shape", err, "input_shape"),
                        name="input")]
    else:
        err("a graph config needs 'inputs' (or 'input_shape')", None)
    nodes: dict[str, Any] = {}
    for j, inp in enumerate(inputs):
        if inp.name in nodes:
            err(f"two inputs are named {inp.name!r}", "inputs")
        if inp.name in seen:
            i = seen[inp.name]
            line = loc.line(index=i, key="name", name=inp.name)
            raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, entries[i])}: name "
                              f"{inp.name!r} is also the name of a model input")
        nodes[inp.name] = inp
    names = [e.get("name", defaults[i]) for i, e in enumerate(entries)]
    # edges
    preds: list[list[str]] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            _build_layer(i, e, loc, dtype=dtype, rng=rng, default_name=defaults[i])
        src = e.get("inputs")
        if src is None:
            if i > 0:
                src = [names[i - 1]]
            elif len(inputs) == 1:
                src = [inputs[0].name]
            else:
                line = loc.line(index=i, name=names[i])
                raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, e)}: no 'inputs' given "
                                  f"and the model has {len(inputs)} inputs; name them")
        if isinstance(src, str):
            src = [src]
        if not isinstance(src, list) or not src or not all(isinstance(s, str) for s in src):
            line = loc.line(index=i, key="inputs", name=names[i])
            raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, e)}: 'inputs' must be a node "
                              f"name or a list of node names, got {src!r}")
        for s in src:
            if s not in nodes and s not in seen:
                line = loc.line(index=i, key="inputs", name=names[i])
                known = list(nodes) + [n for n in names if n != names[i]]
                raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, e)}: broken edge: input "
                                  f"{s!r} names no node; known nodes: {', '.join(known)}")
        preds.append(src)
    # topological order (entries may be listed in any order); a cycle is an error
    order, state = [], [0] * len(entries)
    for start in range(len(entries)):
        if state[start]:
            continue
        stack = [(start, 0)]
        path = [start]
        state[start] = 1
        while stack:
            i, k = stack.pop()
            if k < len(preds[i]):
                stack.append((i, k + 1))
                p = preds[i][k]
                if p in nodes:
                    continue
                j = seen[p]
                if state[j] == 1:
                    cyc = path[path.index(j):] + [j]
                    line = loc.line(index=j, key="inputs", name=names[j])
                    raise ConfigError(
                        f"{loc.prefix(line)}{_entry_label(j, entries[j])}: broken edge: a cycle "
                        + " -> ".join(repr(names[c]) for c in cyc)
                        + " (a layer's inputs must come before it in the graph)")
                if state[j] == 0:
                    state[j] = 1
                    path.append(j)
                    stack.append((j, 0))
            else:
                state[i] = 2
                path.pop()
                order.append(i)
    # outputs, and everything must be used
    outs = cfg.get("outputs", names[-1])
    multi_out = isinstance(outs, list)
    out_names = outs if multi_out else [outs]
    if not out_names or not all(isinstance(o, str) for o in out_names):
        err(f"'outputs' must be a node name or a list of node names, got {outs!r}", "outputs")
    for o in out_names:
        if o not in seen and o not in nodes:
            err(f"broken edge: output {o!r} names no node; known nodes: "
                + ", ".join(list(nodes) + names), "outputs")
    used: set[str] = set()
    todo = list(out_names)
    while todo:
        n = todo.pop()
        if n in used:
            continue
        used.add(n)
        if n in seen:
            todo.extend(preds[seen[n]])
    for i, n in enumerate(names):
        if n not in used:
            line = loc.line(index=i, name=n)
            raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, entries[i])}: broken edge: "
                              f"dangling layer: its output reaches none of the model outputs "
                              f"({', '.join(map(repr, out_names))}); connect it or remove it")
    for inp in inputs:
        if inp.name not in used:
            err(f"broken edge: model input {inp.name!r} is not used by any layer", "inputs")
    # build
    for i in order:
        e = entries[i]
        layer = _build_layer(i, e, loc, dtype=dtype, rng=rng, default_name=defaults[i])
        srcs = [nodes[s] for s in preds[i]]
        try:
            nodes[names[i]] = apply_layer(layer, srcs if layer.is_merge else
                                          (srcs[0] if len(srcs) == 1 else srcs))
        except (ValueError, TypeError) as exc:
            line = loc.line(index=i, name=names[i])
            what = "shape mismatch" if "shape" in str(exc) else "cannot connect"
            raise ConfigError(f"{loc.prefix(line)}{_entry_label(i, e)}: {what}: {exc}") from None
    model_inputs = inputs if len(inputs) > 1 else inputs[0]
    model_outputs = [nodes[o] for o in out_names] if multi_out else nodes[out_names[0]]
    try:
        return Model(model_inputs, model_outputs, name=name)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{loc.prefix(None)}{exc}") from None
