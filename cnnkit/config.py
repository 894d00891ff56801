"""Declarative models: a model as a TOML or JSON config, and back.

::

    cfg = ck.config.model_to_config(model)         # a dict of plain values
    model = ck.config.model_from_config(cfg)        # the same architecture (fresh weights)
    ck.config.save_config(model, "net.toml")        # or .json; atomic
    model = ck.config.load_model("net.toml")        # load_config + model_from_config

Format (TOML shown; JSON has the same structure)::

    name = "lenet5"
    dtype = "float32"               # optional (default float32)
    input_shape = [1, 28, 28]       # a chain (Sequential): each layer feeds the next

    [[layers]]
    type = "conv2d"                 # a registered layer type (cnnkit plugins lists them)
    name = "conv1"                  # optional; default "<type>_<k>" (k-th of that type)
    in_channels = 1                 # the rest: constructor arguments, as get_config() gives
    out_channels = 6
    kernel_size = 5
    padding = 2
    impl = "numpy"                  # optional variant choice
    weight_init = "he_uniform"      # optional initializers by registered name, or
    bias_init = {name = "uniform", a = -0.1, b = 0.1}   # a name with options

A graph (DAG) names its inputs and outputs and each layer's ``inputs`` by node name; a layer
without ``inputs`` takes the previous entry's output (the model input for the first)::

    outputs = ["fc"]                # a string for a single output, a list for a list
    [[inputs]]
    name = "x"
    shape = [3, 32, 32]
    [[layers]]
    type = "add"
    name = "sum1"
    inputs = ["conv1", "conv2"]

TOML has no null: where JSON has ``null`` (say ``momentum = null`` of a BatchNorm1D, a
cumulative average), TOML writes ``momentum = { none = true }``.

An optional ``[training]`` section describes how ``cnnkit train CONFIG`` trains the model (see
:func:`training_from_config`).

Errors in a config raise :class:`ConfigError` naming the entry (``layers[3] "c3" (conv2d)``),
the line in the file when the config was read with :func:`load_config`, and what was expected.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ConfigError", "Config", "model_to_config", "model_from_config", "load_config",
           "save_config", "load_model", "dumps_toml", "dumps", "loads", "TrainingSpec",
           "training_from_config", "make_optimizer", "make_loss", "make_schedule",
           "make_regularizer", "load_data", "synthetic_data"]

_LAYER_KEYS = ("type", "inputs")
_INIT_KEYS = ("weight_init", "bias_init")
_TOP_KEYS = ("name", "dtype", "input_shape", "inputs", "outputs", "layers", "training",
             "format_version")
FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A config that cannot be turned into a model or a training run."""


class Config(dict):
    """A config dict that remembers the file it came from (``path``), its text (``text``) and
    its format (``"toml"``/``"json"``), so that errors can give line numbers."""

    def __init__(self, data=(), *, path=None, text=None, fmt=None):
        super().__init__(data)
        self.path, self.text, self.fmt = path, text, fmt


# ----------------------------------------------------------------------------- locating entries
class _Locator:
    """Finds the line of a config entry (a layer, a key in it, a top-level key) in the text."""

    def __init__(self, cfg):
        self.path = getattr(cfg, "path", None)
        self.text = getattr(cfg, "text", None)
        self.fmt = getattr(cfg, "fmt", None)
        self._spans = None

    def _layer_spans(self):
        """(start, end) character offsets of each entry of ``layers`` in the text."""
        if self._spans is not None:
            return self._spans
        spans: list[tuple[int, int]] = []
        text = self.text or ""
        if self.fmt == "toml":
            heads = [m.start() for m in re.finditer(r"(?m)^[ \t]*\[\[[ \t]*layers[ \t]*\]\]", text)]
            for i, start in enumerate(heads):
                nxt = re.compile(r"(?m)^[ \t]*\[").search(text, start + 1)
                spans.append((start, nxt.start() if nxt else len(text)))
        elif self.fmt == "json":
            m = re.search(r'"layers"\s*:\s*\[', text)
            if m:
                spans = _json_array_items(text, m.end())
        self._spans = spans
        return spans

    def line(self, index=None, key=None, name=None, section=None):
        """Line number (1-based) of layer ``index`` (its ``key`` line if given), or of a
        top-level ``key`` (in ``section`` if given); None when not found."""
        text = self.text
        if not text:
            return None
        if index is not None:
            spans = self._layer_spans()
            if index < len(spans):
                start, end = spans[index]
            else:  # inline arrays: fall back to the name
                start, end = 0, len(text)
                if name is None:
                    return None
                key = "name"
            if key is None and name is not None:
                key = "name"  # an entry is pointed at by its name line
            if key is not None:
                pat = (rf'(?m)^[ \t]*"?{re.escape(key)}"?[ \t]*=' if self.fmt == "toml"
                       else rf'"{re.escape(key)}"\s*:')
                if key == "name" and name is not None and (start, end) == (0, len(text)):
                    pat = (rf'(?m)\bname[ \t]*=[ \t]*["\']{re.escape(name)}["\']'
                           if self.fmt == "toml" else rf'"name"\s*:\s*"{re.escape(name)}"')
                m = re.compile(pat).search(text, start, end)
                if m:
                    return text.count("\n", 0, m.start()) + 1
            if (start, end) == (0, len(text)):
                return None
            return text.count("\n", 0, start) + 1
        if key is not None:
            start, end = 0, len(text)
            if section is not None and self.fmt == "toml":
                m = re.search(rf"(?m)^[ \t]*\[[ \t]*{re.escape(section)}[ \t]*\]", text)
                if m:
                    start = m.start()
                    nxt = re.compile(r"(?m)^[ \t]*\[").search(text, m.end())
                    key_m = re.compile(rf'(?m)^[ \t]*"?{re.escape(key)}"?[ \t]*=').search(
                        text, start, nxt.start() if nxt else end)
                    if key_m:
                        return text.count("\n", 0, key_m.start()) + 1
                    return text.count("\n", 0, start) + 1
            k = re.escape(key)
            pat = (rf'(?m)^[ \t]*"?{k}"?[ \t]*=|^[ \t]*\[+[ \t]*{k}[ \t]*\]'
                   if self.fmt == "toml" else rf'"{k}"\s*:')
            m = re.compile(pat).search(text, start, end)
            if m:
                return text.count("\n", 0, m.start()) + 1
        return None

    def prefix(self, line):
        if self.path is not None:
            return f"{self.path}:{line}: " if line else f"{self.path}: "
        return f"line {line}: " if line else ""


def _json_array_items(text, pos):
    """Spans of the top-level items of the JSON array whose '[' ends at ``pos``."""
    spans, depth, start, i, n = [], 0, None, pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "{[":
            if depth == 0:
                start = i
            depth += 1
        elif c in "}]":
            if depth == 0:
                break
            depth -= 1
            if depth == 0 and start is not None:
                spans.append((start, i + 1))
                start = None
        i += 1
    return spans


def _entry_label(index, entry):
    name = entry.get("name") if isinstance(entry, dict) else None
    typ = entry.get("type") if isinstance(entry, dict) else None
    label = f"layers[{index}]"
    if isinstance(name, str):
        label += f" {json.dumps(name)}"
    if isinstance(typ, str):
        label += f" ({typ})"
    return label


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


def _accepts(cls, arg):
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


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
        if init is not None and _accepts(type(layer), key):
            entry[key] = _init_to_config(init, owner, key)
    return entry


def model_to_config(model) -> dict:
    """The architecture of ``model`` (a Sequential or a graph Model) as a dict of plain values
    (no weights).  Sequential models give a chain (``input_shape`` and ``layers``); graphs give
    ``inputs``, ``outputs`` and each layer's ``inputs``."""
    from .graph import Sequential

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
    from .plugins import get_registry

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
        err(f"unknown layer type {typ!r}; registered layer types: "
            + ", ".join(sorted(reg.layer_types)), "type")
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
                    err(f"unexpected argument {key!r}; {cls.__name__} takes: "
                        f"{_signature_text(cls)}", key)
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
    from . import _random
    from .graph import Input, Model, Sequential, apply_layer

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


# ----------------------------------------------------------------------------- files
def loads(text: str, fmt: str, *, path=None) -> Config:
    """Parse config ``text`` in format ``"toml"`` or ``"json"``."""
    where = f"{path}: " if path is not None else ""
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path or '<json>'}:{exc.lineno}: invalid JSON: {exc.msg}") \
                from None
    elif fmt == "toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ConfigError(f"{where}reading TOML on Python < 3.11 needs the 'tomli' "
                                  "package (pip install tomli), or use a .json config") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}invalid TOML: {exc}") from None
    else:
        raise ValueError(f"config format must be 'toml' or 'json', got {fmt!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}a config must be a table (object), got {type(data).__name__}")
    if fmt == "toml":
        data = _decode_none(data)
    return Config(data, path=path, text=text, fmt=fmt)


_NONE_MARK = {"none": True}


def _decode_none(value):
    """TOML has no null: ``{none = true}`` stands for None (JSON's null)."""
    if isinstance(value, dict):
        if value == _NONE_MARK:
            return None
        return {k: _decode_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_none(v) for v in value]
    return value


def _format_of(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".toml":
        return "toml"
    if ext == ".json":
        return "json"
    raise ValueError(f"{path}: a config file must end in .toml or .json")


def load_config(path) -> Config:
    """Read a TOML (``.toml``) or JSON (``.json``) config file."""
    fmt = _format_of(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return loads(text, fmt, path=str(path))


def load_model(path, *, rng=None, dtype=None):
    """``model_from_config(load_config(path))``."""
    return model_from_config(load_config(path), rng=rng, dtype=dtype)


def dumps(cfg: dict, fmt: str = "toml") -> str:
    """A config dict as TOML or JSON text."""
    if fmt == "json":
        return json.dumps(cfg, indent=2, allow_nan=False) + "\n"
    if fmt == "toml":
        return dumps_toml(cfg)
    raise ValueError(f"config format must be 'toml' or 'json', got {fmt!r}")


def save_config(model_or_config, path, *, training: dict | None = None) -> None:
    """Write a model's config (or a config dict) to ``path`` (.toml or .json), atomically;
    ``training`` adds a training section."""
    from .io import atomic_write_text

    fmt = _format_of(path)
    cfg = (dict(model_or_config) if isinstance(model_or_config, dict)
           else model_to_config(model_or_config))
    if training is not None:
        cfg["training"] = training
    atomic_write_text(path, dumps(cfg, fmt))


# ---- a small TOML emitter for config-shaped data (tables, arrays of tables, scalars, arrays)
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k):
    if not isinstance(k, str):
        raise TypeError(f"TOML keys must be strings, got {k!r}")
    return k if _BARE.match(k) else json.dumps(k)


def _toml_value(v):
    if v is None:
        return "{ none = true }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".eEn") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = [f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def _is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def dumps_toml(cfg: dict) -> str:
    """Top-level scalars first, then tables (``[name]``) and arrays of tables (``[[name]]``);
    inside an array-of-tables entry nested tables are written inline.  TOML has no null:
    ``None`` is written ``{ none = true }``, which :func:`loads` reads back as None."""
    lines: list[str] = []

    def emit(d, path, in_array):
        simple = [(k, v) for k, v in d.items()
                  if not (isinstance(v, dict) and not in_array)
                  and not (_is_table_array(v) and not in_array)]
        for k, v in simple:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if in_array:
            return
        for k, v in d.items():
            sub = path + [_toml_key(k)]
            if isinstance(v, dict):
                lines.append("")
                lines.append(f"[{'.'.join(sub)}]")
                emit(v, sub, False)
            elif _is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{'.'.join(sub)}]]")
                    emit(item, sub, True)

    emit(cfg, [], False)
    return "\n".join(lines).lstrip("\n") + "\n"


# ----------------------------------------------------------------------------- training section
_TRAIN_KEYS = ("optimizer", "loss", "epochs", "batch_size", "seed", "schedule", "data",
               "early_stopping", "regularizer", "shuffle", "checkpoint_every", "output")


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
            err(f"unknown key; the training section has: {', '.join(_TRAIN_KEYS)}", key)
        if key in ("epochs", "batch_size", "checkpoint_every"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                err(f"must be a positive int, got {value!r}", key)
        elif key == "seed":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                err(f"must be an int >= 0, got {value!r}", key)
        elif key == "shuffle":
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
        setattr(spec, key, value)
    spec._locator = loc  # for the builders' error messages
    return spec


def _spec_error(spec, key, message):
    loc = getattr(spec, "_locator", None)
    line = loc.line(key=key, section="training") if loc else None
    prefix = loc.prefix(line) if loc else ""
    return ConfigError(f"{prefix}training.{key}: {message}")


def _norm(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _find_class(module, name, base, aliases=()):
    wanted = _norm(name)
    wanted = dict(aliases).get(wanted, wanted)
    found = {}
    for attr in dir(module):
        obj = getattr(module, attr)
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base \
                and not attr.startswith("_"):
            found[_norm(attr)] = obj
    return found.get(wanted), sorted({_norm(k) for k in found})


def make_optimizer(spec: TrainingSpec, model, **overrides):
    """The optimizer of ``spec`` for ``model`` (``overrides`` replace hyper-parameters)."""
    from . import optim

    opts = dict(spec.optimizer)
    name = opts.pop("name")
    opts.update({k: v for k, v in overrides.items() if v is not None})
    opts = {k: _tuples(v) for k, v in opts.items()}
    try:
        return optim.create(name, model, **opts)
    except KeyError as exc:
        raise _spec_error(spec, "optimizer", exc.args[0] if exc.args else str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise _spec_error(spec, "optimizer", str(exc)) from None


def make_loss(spec: TrainingSpec):
    from . import losses

    opts = dict(spec.loss)
    name = opts.pop("name")
    cls, known = _find_class(losses, name, losses.Loss,
                             aliases=(("crossentropy", "softmaxcrossentropy"),
                                      ("ce", "softmaxcrossentropy"),
                                      ("mse", "mse")))
    if cls is None:
        raise _spec_error(spec, "loss", f"unknown loss {name!r}; known: {', '.join(known)}")
    try:
        return cls(**opts)
    except (TypeError, ValueError) as exc:
        raise _spec_error(spec, "loss", str(exc)) from None


_SCHEDULE_ALIASES = (("step", "steplr"), ("multistep", "multisteplr"),
                     ("exponential", "exponentiallr"), ("cosine", "cosineannealinglr"),
                     ("cosineannealing", "cosineannealinglr"), ("warmup", "linearwarmup"))


def make_schedule(spec: TrainingSpec, optimizer, epochs: int | None = None):
    """The schedule of ``spec`` on ``optimizer`` or None.  ``T_max`` of a cosine schedule
    defaults to the number of epochs."""
    from . import schedules

    if spec.schedule is None:
        return None

    def build(desc):
        opts = dict(desc)
        name = opts.pop("name")
        cls, known = _find_class(schedules, name, schedules.LRSchedule, _SCHEDULE_ALIASES)
        if cls is None:
            raise _spec_error(spec, "schedule", f"unknown schedule {name!r}; known: "
                              + ", ".join(known + [a for a, _ in _SCHEDULE_ALIASES]))
        if "after" in opts:
            after = opts["after"]
            if isinstance(after, str):
                after = {"name": after}
            if not isinstance(after, dict) or not isinstance(after.get("name"), str):
                raise _spec_error(spec, "schedule", f"after must be a schedule name or a table "
                                  f"with a 'name', got {after!r}")
            opts["after"] = build(after)
        if cls is schedules.CosineAnnealingLR and "T_max" not in opts and epochs:
            opts["T_max"] = epochs
        try:
            return cls(optimizer, **{k: _tuples(v) if k != "after" else v
                                     for k, v in opts.items()})
        except (TypeError, ValueError) as exc:
            raise _spec_error(spec, "schedule", str(exc)) from None

    return build(spec.schedule)


def make_regularizer(spec: TrainingSpec):
    """None, a number (L2 coefficient) or a penalty object from cnnkit.losses."""
    from . import losses

    reg = spec.regularizer
    if reg is None or isinstance(reg, (int, float)):
        return reg if reg else None
    opts = dict(reg)
    name = opts.pop("name")
    cls, known = _find_class(losses, name, object, aliases=(("l2", "l2penalty"),))
    if cls is None or not callable(cls):
        raise _spec_error(spec, "regularizer", f"unknown regularizer {name!r}")
    try:
        return cls(**opts)
    except (TypeError, ValueError) as exc:
        raise _spec_error(spec, "regularizer", str(exc)) from None


def synthetic_data(shape=(3, 32, 32), classes=4, train_size=512, test_size=128, noise=0.5,
                   seed=0, dtype=np.float32):
    """A small learnable image task: each class is a smooth random template (low-frequency
    patterns, upsampled) plus per-image Gaussian noise of std ``noise`` and a random shift of the
    template's brightness.  Returns ((x_train, y_train), (x_test, y_test))."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    c, h, w = shape
    coarse = rng.normal(size=(classes, c, max(h // 8, 1), max(w // 8, 1)))
    reps = (-(-h // coarse.shape[2]), -(-w // coarse.shape[3]))
    templates = np.repeat(np.repeat(coarse, reps[0], axis=2), reps[1], axis=3)[:, :, :h, :w]

    def make(n):
        y = np.arange(n) % classes
        rng.shuffle(y)
        x = templates[y] + noise * rng.normal(size=(n,) + shape) \
            + 0.3 * rng.normal(size=(n, 1, 1, 1))
        return x.astype(dtype), y.astype(np.int64)

    return make(train_size), make(test_size)


def load_data(spec: TrainingSpec, *, dtype=np.float32, path_override=None):
    """((x_train, y_train), (x_test, y_test), description) for the spec's data section."""
    opts = dict(spec.data)
    name = opts.pop("name")
    n_train, n_test = opts.pop("train_size", None), opts.pop("test_size", None)
    for what, n in (("train_size", n_train), ("test_size", n_test)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise _spec_error(spec, "data", f"{what} must be a positive int, got {n!r}")
    if _norm(name) == "mnist":
        from .datasets import load_mnist

        path = opts.pop("path", None)
        path = path_override or path
        pixel_range = opts.pop("pixel_range", None)
        if opts:
            raise _spec_error(spec, "data", f"unknown mnist options {sorted(opts)}; it takes "
                              "path, train_size, test_size, pixel_range")
        if pixel_range is not None and not (
                isinstance(pixel_range, list) and len(pixel_range) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) for v in pixel_range)
                and pixel_range[0] < pixel_range[1]):
            raise _spec_error(spec, "data", f"pixel_range must be [low, high] with low < high, "
                              f"got {pixel_range!r}")
        (xtr, ytr), (xte, yte) = load_mnist(path, dtype=dtype)
        what = path or "embedded MNIST sample"
        if pixel_range is not None:  # black..white mapped to low..high (the paper: -0.1..1.175)
            lo, hi = (float(v) for v in pixel_range)
            xtr = (lo + (hi - lo) * xtr).astype(dtype)
            xte = (lo + (hi - lo) * xte).astype(dtype)
            what += f", pixels scaled to [{lo}, {hi}]"
    elif _norm(name) == "synthetic":
        if path_override:
            raise _spec_error(spec, "data", "--data (a folder) does not apply to synthetic data")
        kwargs = {"train_size": n_train or 512, "test_size": n_test or 128}
        n_train = n_test = None
        try:
            (xtr, ytr), (xte, yte) = synthetic_data(**{k: _tuples(v) for k, v in opts.items()},
                                                    **kwargs, dtype=dtype)
        except TypeError as exc:
            raise _spec_error(spec, "data", str(exc)) from None
        what = f"synthetic {xtr.shape[1:]} task, {len(np.unique(ytr))} classes"
    else:
        raise _spec_error(spec, "data", f"unknown data set {name!r}; known: mnist, synthetic")
    if n_train:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    if n_test:
        xte, yte = xte[:n_test], yte[:n_test]
    return (xtr, ytr), (xte, yte), what
