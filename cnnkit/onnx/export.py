"""Export a cnnkit model to an ONNX file: ``cnnkit.onnx.export(model, "lenet.onnx")``.

The graph is walked in topological order and each layer is written by the exporter registered
for its layer type with the ``cnnkit_register_onnx_exporters`` hook (the built-in layer types
register theirs in ``cnnkit/builtin/<family>.py``, as any plugin does), through an
:class:`ExportContext`.  Layers are written in their inference form (dropout is the identity,
batch normalisation uses its running statistics) with standard ``ai.onnx`` operators only:
cnnkit's own layers (Subsampling, ScaledTanh, ...) are decomposed into them, so any ONNX
runtime can run the file.

The batch axis is dynamic (``"batch"``); every other size is the model's.  Parameters and
buffers are initializers under their state-dict names (``"0.weight"``).  The file is checked
with ``onnx.checker`` (with shape inference) before it is written, atomically.

``onnx`` is an optional dependency (``pip install "cnnkit[onnx]"``), imported on the first
call.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from ._common import PROTOBUF_LIMIT, require_onnx

__all__ = ["export", "build_model_proto", "ExportContext", "DEFAULT_OPSET", "MIN_OPSET",
           "require_onnx"]

#: the opset written when none is asked for (read by every runtime of the last years)
DEFAULT_OPSET = 17
#: Softmax and LogSoftmax take one axis from opset 13 on (earlier: everything after it)
MIN_OPSET = 13


def _owner(layer) -> str:
    return f"{layer.name} ({type(layer).__name__})"


def _attribute(value):
    """An attribute value as onnx.helper wants it: Python numbers, lists of them."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_attribute(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


class ExportContext:
    """What an exporter writes through (the :class:`cnnkit.hookspecs.OnnxExportContext`
    contract): nodes, parameters and constants, with unique names."""

    def __init__(self, onnx, opset: int, dtype, prefixes: dict):
        self.onnx = onnx
        self.opset = opset
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.initializers: list = []
        self._taken: set[str] = set()
        self._values: set[str] = set()  # names a node may read
        self._params: dict[tuple[int, str], str] = {}
        self._prefixes = prefixes  # id(layer) -> state-dict prefix
        self._layer = None

    # ------------------------------------------------------------------ names
    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    def _scoped(self, hint: str) -> str:
        prefix = self._prefixes.get(id(self._layer)) if self._layer is not None else None
        return self._unique(f"{prefix}/{hint}" if prefix is not None else hint)

    def _where(self) -> str:
        return _owner(self._layer) if self._layer is not None else "ONNX export"

    def add_input(self, name: str) -> str:
        name = self._unique(name)
        self._values.add(name)
        return name

    # ------------------------------------------------------------------ the contract
    def node(self, op_type: str, inputs, *, outputs: int = 1, **attributes: Any):
        where = self._where()
        if not isinstance(op_type, str) or not op_type:
            raise TypeError(f"{where}: op_type must be a non-empty string, got {op_type!r}")
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, str) for i in inputs):
            raise TypeError(f"{where}: the inputs of a {op_type} node must be a list of value "
                            f"names, got {inputs!r}")
        unknown = [i for i in inputs if i and i not in self._values]
        if unknown:
            raise ValueError(f"{where}: a {op_type} node reads value(s) nothing computed: "
                             + ", ".join(map(repr, unknown)))
        if not isinstance(outputs, int) or isinstance(outputs, bool) or outputs < 1:
            raise ValueError(f"{where}: outputs must be a positive int, got {outputs!r}")
        name = self._scoped(op_type)
        outs = [self._unique(f"{name}_output" + (f"_{i}" if outputs > 1 else ""))
                for i in range(outputs)]
        attrs = {k: _attribute(v) for k, v in attributes.items() if v is not None}
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, name=name,
                                                     **attrs))
        self._values.update(outs)
        return outs[0] if outputs == 1 else outs

    def param(self, layer, key: str) -> str:
        cache_key = (id(layer), key)
        if cache_key in self._params:
            return self._params[cache_key]
        value = layer.params.get(key)
        if value is None:
            value = (getattr(layer, "buffers", None) or {}).get(key)
        if value is None:
            raise ValueError(f"{_owner(layer)}: has no parameter or buffer {key!r} to export")
        prefix = self._prefixes.get(id(layer), layer.name)
        name = self._add_initializer(f"{prefix}.{key}", value, None)
        self._params[cache_key] = name
        return name

    def constant(self, value, hint: str = "const", dtype=None) -> str:
        if not isinstance(hint, str) or not hint:
            raise TypeError(f"{self._where()}: a constant's hint must be a non-empty string")
        return self._add_initializer(None, value, dtype, hint)

    def _add_initializer(self, name, value, dtype, hint=None) -> str:
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        elif arr.dtype.kind not in "biu":
            raise TypeError(f"{self._where()}: cannot store a {arr.dtype} constant in ONNX")
        name = self._unique(name) if name is not None else self._scoped(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr),
                                                                   name))
        self._values.add(name)
        return name


def _ready(model, input_shape):
    """Build an unbuilt Sequential from ``input_shape``; otherwise check that it matches."""
    from ..graph import Sequential

    if isinstance(model, Sequential) and not model._built:
        if input_shape is None:
            raise ValueError(f"{model.name}: the Sequential is not built yet; pass "
                             "input_shape= (one sample's shape, e.g. (1, 28, 28)) or run it once")
        model.build(input_shape)
        return
    if input_shape is None:
        return
    expected = [tuple(n.shape[1:]) for n in model.inputs]
    given = input_shape if (isinstance(input_shape, list) and input_shape
                            and isinstance(input_shape[0], (tuple, list))) else [input_shape]
    try:
        given = [tuple(int(s) for s in shape) for shape in given]
    except (TypeError, ValueError):
        raise TypeError(f"{model.name}: input_shape must be one sample's shape, e.g. "
                        f"(1, 28, 28), got {input_shape!r}") from None
    if given != expected:
        raise ValueError(f"{model.name}: input_shape {input_shape!r} differs from the model's "
                         f"input shape {expected[0] if len(expected) == 1 else expected} (one "
                         "sample, without the batch axis)")


def _check_exporters(model, reg):
    missing = [layer for layer in model.layers if reg.onnx_exporter(layer.layer_type) is None]
    if missing:
        which = ", ".join(f"layer {layer.name!r} (type {layer.layer_type!r}, class "
                          f"{type(layer).__name__})" for layer in missing)
        raise ValueError(f"{model.name}: cannot export to ONNX: no ONNX exporter is registered "
                         f"for {which}; the plugin defining a layer type provides its exporter "
                         "with the cnnkit_register_onnx_exporters hook")


def _run_exporter(ctx, exporter, plugin, node, inputs):
    layer = node.layer
    owner = _owner(layer)
    ctx._layer = layer
    try:
        out = exporter(ctx, layer, inputs, [tuple(p.shape) for p in node.inputs])
    except Exception as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(owner) else
                         f"{owner}: ONNX export of layer type {layer.layer_type!r} (plugin "
                         f"{plugin!r}) failed: {type(exc).__name__}: {msg}") from exc
    finally:
        ctx._layer = None
    if not isinstance(out, str) or out not in ctx._values:
        raise ValueError(f"{owner}: the ONNX exporter of layer type {layer.layer_type!r} "
                         f"(plugin {plugin!r}) returned {out!r}, not the name of a value")
    return out


def build_model_proto(model, opset: int = DEFAULT_OPSET):
    """The ``onnx.ModelProto`` of a built ``model``, checked by ``onnx.checker`` (what
    :func:`export` writes)."""
    from .. import __version__
    from ..plugins import get_registry
    from ..state import layer_prefixes

    onnx = require_onnx()
    helper = onnx.helper
    reg = get_registry()
    _check_exporters(model, reg)
    prefixes = layer_prefixes(model)
    ctx = ExportContext(onnx, opset, model.dtype,
                        {id(layer): prefix for prefix, layer in prefixes})
    elem = helper.np_dtype_to_tensor_dtype(ctx.dtype)

    def value_info(name, shape):
        return helper.make_tensor_value_info(name, elem, ["batch"] + list(shape[1:]))

    values, graph_inputs = {}, []
    for node in model.inputs:
        values[id(node)] = ctx.add_input(node.name)
        graph_inputs.append(value_info(values[id(node)], node.shape))
    for node in model.nodes:
        exporter, plugin = reg.onnx_exporter(node.layer.layer_type)
        values[id(node)] = _run_exporter(ctx, exporter, plugin, node,
                                         [values[id(p)] for p in node.inputs])

    # the outputs get plain names: the value a node computed is renamed, anything else (a graph
    # input, a value already renamed) is copied by an Identity node
    produced = {out for n in ctx.nodes for out in n.output}
    renames, graph_outputs = {}, []
    for i, node in enumerate(model.outputs):
        name = ctx._unique("output" if len(model.outputs) == 1 else f"output_{i}")
        value = values[id(node)]
        if value in produced and value not in renames:
            renames[value] = name
        else:
            ctx.nodes.append(helper.make_node("Identity", [renames.get(value, value)], [name],
                                              name=ctx._unique(f"{name}/Identity")))
        graph_outputs.append(value_info(name, node.shape))
    for n in ctx.nodes:
        for field in (n.input, n.output):
            for j, value in enumerate(field):
                if value in renames:
                    field[j] = renames[value]

    graph = helper.make_graph(ctx.nodes, model.name, graph_inputs, graph_outputs,
                              initializer=ctx.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cnnkit",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise ValueError(f"{model.name}: the model is too large for one ONNX file "
                         f"({proto.ByteSize() / 2**30:.1f} GiB; protobuf's limit is 2 GiB)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx's ValidationError / InferenceError
        msg = str(exc).strip()
        # node names start with their layer's state-dict prefix: say which layers they are
        culprits = [f"{prefix!r} is layer {_owner(layer)} (type {layer.layer_type!r})"
                    for prefix, layer in prefixes
                    if re.search(rf"(?<![\w.]){re.escape(prefix)}/", msg)]
        raise ValueError(f"{model.name}: the exported ONNX graph is invalid (a layer's "
                         f"exporter wrote a wrong node): {msg}"
                         + (f" [{'; '.join(culprits)}]" if culprits else "")) from exc
    return proto


def export(model, path, opset: int = DEFAULT_OPSET, input_shape=None) -> None:
    """Write ``model`` (a ``Sequential`` or a graph ``Model``) to ``path`` as an ONNX model.

    - ``opset``: the ``ai.onnx`` opset to write, from :data:`MIN_OPSET` (13) to the newest the
      installed ``onnx`` knows (default :data:`DEFAULT_OPSET`, 17).
    - ``input_shape``: one sample's shape (no batch axis), needed only for a ``Sequential``
      that is not built yet; for a built model it must match.

    The model is exported in inference form, in its dtype (float32 or float64), with a dynamic
    batch axis; inputs keep their names (``"input"`` for a Sequential), the output is
    ``"output"`` (``"output_0"``, ... for several).  A layer whose type has no registered ONNX
    exporter is an error naming it.  The file is written atomically: on any failure no file
    (or the previous one, untouched) is at ``path``.
    """
    from .._checks import is_int
    from ..graph import Model
    from ..io import _fspath, atomic_write_bytes

    if not isinstance(model, Model):
        raise TypeError(f"cnnkit.onnx.export: expected a cnnkit Model or Sequential, got "
                        f"{type(model).__name__}")
    target = _fspath(path)
    onnx = require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not is_int(opset) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"cnnkit.onnx.export: opset must be an int from {MIN_OPSET} to {newest} "
                         f"(the newest the installed onnx {onnx.__version__} knows), got "
                         f"{opset!r}")
    _ready(model, input_shape)
    proto = build_model_proto(model, int(opset))
    atomic_write_bytes(target, proto.SerializeToString())
