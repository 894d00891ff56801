"""``cnnkit.onnx.load``: an ONNX file as a trainable :class:`cnnkit.Model`.

The file comes from a stranger, so nothing in it is trusted: the protobuf is parsed by the
``onnx`` package's message classes only (no checker, no shape inference, no external-data
loader), every tensor's size is checked against the bytes that hold it before an array is made,
external data is read only from regular files inside the model's folder, and the graph is sorted
here (a cycle, an undefined tensor or a name written twice is an error naming the node).  Every
refusal is an :class:`ONNXImportError` whose message starts with the file name and names the
node, operator, attribute or tensor at fault.

Each supported operator becomes cnnkit layers (Conv -> ``Conv2D``, asymmetric pads -> a
``Pad2D`` in front, Gemm and MatMul+Add -> ``Dense``, ...); the weights are the file's.
Constant subgraphs are evaluated at import, including the shape computations
(Shape/Gather/Slice/Unsqueeze/Concat/Cast) that exporters emit for a dynamic batch axis ahead of
a Reshape: the batch size stays symbolic, and the Reshape must keep it and flatten the rest.
"""
from __future__ import annotations

import math
import os
import re
import stat

import numpy as np

from ..io import _fspath
from ..modelfile import ModelFileError
from ._common import PROTOBUF_LIMIT, require_onnx

__all__ = ["load", "ONNXImportError", "SUPPORTED_OPS"]



class ONNXImportError(ModelFileError):
    """An ONNX file cnnkit cannot import: damaged, hostile, or using an operator or attribute
    cnnkit has no layer for.  The message starts with the file name."""


# ------------------------------------------------------------------------------ tensors
# TensorProto.DataType -> (NumPy dtype, the repeated field holding it when not raw)
_DTYPES = {
    1: (np.float32, "float_data"), 2: (np.uint8, "int32_data"), 3: (np.int8, "int32_data"),
    4: (np.uint16, "int32_data"), 5: (np.int16, "int32_data"), 6: (np.int32, "int32_data"),
    7: (np.int64, "int64_data"), 9: (np.bool_, "int32_data"), 10: (np.float16, "int32_data"),
    11: (np.float64, "double_data"), 12: (np.uint32, "uint64_data"),
    13: (np.uint64, "uint64_data"),
}
_FLOAT_TYPES = {1: np.float32, 11: np.float64}


class _Batch:
    """The symbolic batch size in a constant-folded shape."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


class _Importer:
    def __init__(self, target: str, onnx):
        self.target = target
        self.onnx = onnx
        self.folder = os.path.realpath(os.path.dirname(os.path.abspath(target)))

    def fail(self, message):
        return ONNXImportError(f"{self.target}: {message}")

    # ------------------------------------------------------------------ reading
    def parse(self):
        try:
            info = os.stat(self.target)
        except OSError as exc:
            raise self.fail(f"cannot read the ONNX file: {exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise self.fail("not a regular file")
        if info.st_size > PROTOBUF_LIMIT:
            raise self.fail(f"{info.st_size} bytes: larger than an ONNX protobuf can be (2 GiB; "
                            "large weights belong in external-data files)")
        try:
            with open(self.target, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise self.fail(f"cannot read the ONNX file: {exc}") from None
        if not data:
            raise self.fail("not an ONNX model: the file is empty")
        model = self.onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except Exception as exc:  # protobuf's DecodeError and friends: all mean a bad file
            raise self.fail(f"not an ONNX model (truncated or damaged protobuf: {exc})") from None
        if not model.HasField("graph") or not model.graph.output:
            raise self.fail("not an ONNX model: no graph with outputs")
        return model

    def tensor(self, t, what):
        """The NumPy array of TensorProto ``t``; its size is checked against its data first."""
        name = f"tensor {t.name!r}" if t.name else what
        if t.data_type not in _DTYPES:
            raise self.fail(f"{name}: data type {t.data_type} is not supported")
        dtype, field = _DTYPES[t.data_type]
        dims = [int(d) for d in t.dims]
        if any(d < 0 for d in dims):
            raise self.fail(f"{name}: negative dimension in shape {dims}")
        count = math.prod(dims)  # Python ints: no overflow
        itemsize = np.dtype(dtype).itemsize
        if t.HasField("segment"):
            raise self.fail(f"{name}: segmented tensors are not supported")
        if t.data_location == 1:  # EXTERNAL
            raw = self.external(t, name, count * itemsize)
        elif t.HasField("raw_data"):
            raw = t.raw_data
            if len(raw) != count * itemsize:
                raise self.fail(f"{name}: shape {dims} needs {count * itemsize} bytes of "
                                f"{np.dtype(dtype).name}, the file holds {len(raw)}")
        else:
            values = getattr(t, field)
            if len(values) != count:
                raise self.fail(f"{name}: shape {dims} needs {count} values, the file holds "
                                f"{len(values)}")
            if t.data_type == 10:  # float16 bits in int32_data
                return np.array(values, dtype=np.uint16).view(np.float16).reshape(dims)
            try:
                return np.array(values, dtype=dtype).reshape(dims)
            except (OverflowError, ValueError) as exc:
                raise self.fail(f"{name}: values do not fit {np.dtype(dtype).name}: {exc}") \
                    from None
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(
            dtype).reshape(dims)

    def external(self, t, name, nbytes):
        """The bytes of an external-data tensor, read only from a regular file inside the
        model's folder."""
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location:
            raise self.fail(f"{name}: external data without a location")
        parts = re.split(r"[\\/]+", location)
        if (os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts
                or re.match(r"^[A-Za-z]:", location) or "\x00" in location):
            raise self.fail(f"{name}: external data location {location!r} leaves the model's "
                            "folder (absolute paths and '..' are refused)")
        path = os.path.realpath(os.path.join(self.folder, *[p for p in parts if p]))
        if os.path.commonpath([path, self.folder]) != self.folder:
            raise self.fail(f"{name}: external data location {location!r} resolves outside the "
                            "model's folder (a symbolic link?)")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else nbytes
        except ValueError:
            raise self.fail(f"{name}: external data offset/length are not integers") from None
        if offset < 0 or length != nbytes:
            raise self.fail(f"{name}: external data length {length} (offset {offset}) does not "
                            f"match the {nbytes} bytes its shape needs")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise self.fail(f"{name}: cannot open external data {location!r}: "
                            f"{exc.strerror}") from None
        try:
            size_f = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise self.fail(f"{name}: cannot read external data {location!r}: "
                            f"{exc.strerror}") from None
        if not stat.S_ISREG(size_f.st_mode):
            os.close(fd)
            raise self.fail(f"{name}: external data {location!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            if offset + nbytes > size_f.st_size:
                raise self.fail(f"{name}: external data {location!r} holds {size_f.st_size} "
                                f"bytes, the tensor needs {nbytes} from offset {offset}")
            f.seek(offset)
            return f.read(nbytes)

    # ------------------------------------------------------------------ the graph
    def build(self, model, dtype):
        from ..graph import Input, Model

        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          None)
        if self.opset is None:
            raise self.fail("the model imports no version of the standard operator set")
        self.values = {}  # tensor name -> np.ndarray (constant) or _Tensor
        self.used_names = set()
        self.absorbed = set()  # ids of Add nodes folded into the layer before them
        self.graph_outputs = {o.name for o in graph.output}
        for init in graph.initializer:
            if not init.name:
                raise self.fail("an initializer has no name")
            self.values[init.name] = self.tensor(init, "initializer")
        inputs = [i for i in graph.input if i.name not in self.values]
        if len(inputs) != 1:
            raise self.fail(f"cnnkit models take one input; the graph has {len(inputs)} "
                            f"({', '.join(repr(i.name) for i in inputs)})")
        spec = inputs[0]
        ttype = spec.type.tensor_type
        if ttype.elem_type not in _FLOAT_TYPES:
            raise self.fail(f"input {spec.name!r}: element type {ttype.elem_type} is not float "
                            "or double")
        if dtype is None:
            dtype = _FLOAT_TYPES[ttype.elem_type]
        self.dtype = np.dtype(dtype)
        dims = list(ttype.shape.dim)
        if len(dims) < 2 or not all(d.HasField("dim_value") and d.dim_value > 0
                                    for d in dims[1:]):
            raise self.fail(f"input {spec.name!r}: needs a batch axis and fixed positive sizes "
                            "for the other axes, got "
                            + str([d.dim_value if d.HasField("dim_value") else d.dim_param
                                   for d in dims]))
        x = Input(tuple(d.dim_value for d in dims[1:]), name=spec.name or None)
        self.values[spec.name] = _Tensor(x)
        nodes = self.sort(graph)
        self.consumers = {}
        for node in nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for node in nodes:
            self.convert(node)
        outputs = []
        for out in graph.output:
            value = self.values.get(out.name)
            if not isinstance(value, _Tensor):
                raise self.fail(f"graph output {out.name!r} is "
                                + ("never computed" if value is None else "a constant"))
            outputs.append(value.node)
        if any(o is x for o in outputs):
            raise self.fail("the graph output is its input: no layers to import")
        return Model(x, outputs[0] if len(outputs) == 1 else outputs,
                     name=graph.name or None)

    def sort(self, graph):
        """The nodes in an order where every input is computed first; refuses cycles,
        undefined inputs and tensors written twice."""
        producer = {}
        for node in graph.node:
            for out in node.output:
                if not out:
                    continue
                if out in producer or out in self.values:
                    raise self.fail(f"node {_describe(node)}: output {out!r} is written twice")
                producer[out] = node
        order, state = [], {}
        for root in graph.node:
            stack = [(root, False)]
            while stack:
                node, done = stack.pop()
                key = id(node)
                if done:
                    state[key] = 2
                    order.append(node)
                    continue
                if state.get(key) == 2:
                    continue
                if state.get(key) == 1:
                    raise self.fail(f"the graph has a cycle through node {_describe(node)}")
                state[key] = 1
                stack.append((node, True))
                for name in node.input:
                    if not name or name in self.values:
                        continue
                    if name not in producer:
                        raise self.fail(f"node {_describe(node)}: input {name!r} is not "
                                        "computed by any node, initializer or graph input")
                    parent = producer[name]
                    if state.get(id(parent)) == 1:
                        raise self.fail(f"the graph has a cycle through node "
                                        f"{_describe(parent)}")
                    if state.get(id(parent)) != 2:
                        stack.append((parent, False))
        return order

    # ------------------------------------------------------------------ nodes
    def convert(self, node):
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(f"node {_describe(node)}: operator domain {node.domain!r} is not "
                            f"supported (cnnkit imports {', '.join(sorted(SUPPORTED_OPS))})")
        handler = _OPS.get(node.op_type)
        if handler is None:
            raise self.fail(f"node {_describe(node)}: unknown operator {node.op_type!r} "
                            f"(cnnkit imports {', '.join(sorted(SUPPORTED_OPS))})")
        fn, known = handler
        attrs = self.attributes(node, known)
        ins = [self.values[n] if n else None for n in node.input]
        try:
            outs = fn(self, node, attrs, ins)
        except ONNXImportError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError,
                AttributeError, MemoryError) as exc:
            # a layer refused the geometry, a folded constant did not fit, an attribute a
            # handler needs is missing
            raise self.fail(f"node {_describe(node)}: {exc}") from None
        if not isinstance(outs, list):
            outs = [outs]
        for i, name in enumerate(node.output):
            if not name:
                continue
            if i >= len(outs):
                if self.consumers.get(name):
                    raise self.fail(f"node {_describe(node)}: output {i} ({name!r}) is not "
                                    "supported")
                continue
            value = outs[i]
            if not isinstance(value, (_Tensor, np.ndarray)):  # a NumPy scalar or BATCH
                value = np.array(value, dtype=object if value is BATCH else None)
            self.values[name] = value

    def attributes(self, node, known):
        attrs = {}
        for a in node.attribute:
            if a.name not in known:
                raise self.fail(f"node {_describe(node)}: attribute {a.name!r} is not supported "
                                f"for {node.op_type}")
            if a.type == 4:  # TENSOR
                attrs[a.name] = self.tensor(a.t, f"attribute {a.name!r} of {_describe(node)}")
            elif a.type in (1, 2, 3, 6, 7, 8):
                value = self.onnx.helper.get_attribute_value(a)
                attrs[a.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) \
                    else value
            else:
                raise self.fail(f"node {_describe(node)}: attribute {a.name!r} has an "
                                "unsupported type")
        return attrs

    # ------------------------------------------------------------------ helpers
    def layer_name(self, node, weight=None):
        """The layer's name: its weight's name without ".weight" (so the state dict keeps the
        exporter's names, PyTorch's module paths), else the node's name; unique."""
        for candidate in ((weight or "").rsplit(".", 1)[0] if (weight or "").endswith(".weight")
                          else "", node.name):
            if candidate and candidate not in self.used_names:
                self.used_names.add(candidate)
                return candidate
        return None

    def tensor_input(self, node, value, what="input"):
        if not isinstance(value, _Tensor):
            raise self.fail(f"node {_describe(node)}: {what} must be a computed tensor, not a "
                            "constant")
        return value

    def constant(self, node, value, what):
        if value is None or isinstance(value, _Tensor):
            raise self.fail(f"node {_describe(node)}: {what} must be a constant (an initializer "
                            "or a constant expression)")
        return value

    def param(self, node, value, what, shape=None):
        arr = self.constant(node, value, what)
        if arr.dtype == object or arr.dtype.kind not in "fiu":
            raise self.fail(f"node {_describe(node)}: {what} must be numeric, got {arr.dtype}")
        if shape is not None and arr.shape != tuple(shape):
            raise self.fail(f"node {_describe(node)}: {what} has shape {arr.shape}, expected "
                            f"{tuple(shape)}")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def apply(self, layer, value, node, flat=False):
        from ..graph import apply_layer

        layer.params = {k: (None if v is None else v.astype(self.dtype, copy=False))
                        for k, v in layer.params.items()}
        return _Tensor(apply_layer(layer, value.node if isinstance(value, _Tensor) else value),
                       flat=flat)

    def rank4(self, node, value):
        value = self.tensor_input(node, value)
        if len(value.node.shape) != 4 or value.flat:
            raise self.fail(f"node {_describe(node)}: {node.op_type} is imported for 4-D "
                            f"(N, C, H, W) tensors, got shape {value.shape}")
        return value


class _Tensor:
    """A computed tensor: a graph node of the cnnkit model.  ``flat``: the node is (N, C)
    where ONNX has (N, C, 1, 1) (a global pooling whose consumers all flatten)."""

    def __init__(self, node, flat=False):
        self.node, self.flat = node, flat

    @property
    def shape(self):
        return self.node.shape + ((1, 1) if self.flat else ())


def _describe(node):
    return f"{node.name!r} ({node.op_type})" if node.name else f"({node.op_type})"


# ------------------------------------------------------------------------------ geometry
def _spatial_pads(imp, node, attrs, in_hw, kernel, strides, dilations):
    """(top, bottom, left, right) from ``pads`` or ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise imp.fail(f"node {_describe(node)}: auto_pad {auto!r} is not supported")
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto.startswith("SAME"):
        out = []
        for size, k, s, d in zip(in_hw, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return out[0] + out[1]
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or min(pads) < 0:
        raise imp.fail(f"node {_describe(node)}: pads {pads} must be 4 non-negative ints "
                       "(2-D only)")
    return (pads[0], pads[2], pads[1], pads[3])


def _pair_attr(imp, node, attrs, key, default):
    value = list(attrs.get(key, default))
    if len(value) != 2:
        raise imp.fail(f"node {_describe(node)}: {key} {value} must have 2 values (2-D only)")
    return tuple(int(v) for v in value)


# ------------------------------------------------------------------------------ operators
def _conv_geometry(imp, node, attrs, ins, layout):
    """The input, weight, kernel, strides, dilations and group of a Conv or ConvTranspose node
    (``layout``: the weight's axes, for the message)."""
    x = imp.rank4(node, ins[0])
    w = imp.param(node, ins[1] if len(ins) > 1 else None, "weight W")
    if w.ndim != 4:
        raise imp.fail(f"node {_describe(node)}: weight of shape {w.shape} is not 2-D "
                       f"{layout}")
    kernel = _pair_attr(imp, node, attrs, "kernel_shape", w.shape[2:])
    if kernel != w.shape[2:]:
        raise imp.fail(f"node {_describe(node)}: kernel_shape {kernel} does not match the "
                       f"weight {w.shape}")
    strides = _pair_attr(imp, node, attrs, "strides", (1, 1))
    dilations = _pair_attr(imp, node, attrs, "dilations", (1, 1))
    return x, w, kernel, strides, dilations, int(attrs.get("group", 1))


def _conv(imp, node, attrs, ins):
    from ..layers import Conv2D, Pad2D

    x, w, kernel, strides, dilations, group = _conv_geometry(
        imp, node, attrs, ins, "convolution's (M, C/group, kH, kW)")
    in_c, h, wd = x.shape[1:]
    pads = _spatial_pads(imp, node, attrs, (h, wd), kernel, strides, dilations)
    bias = imp.param(node, ins[2], "bias B", (w.shape[0],)) if len(ins) > 2 and ins[2] is not None \
        else None
    name = imp.layer_name(node, node.input[1])
    if pads[0] != pads[1] or pads[2] != pads[3]:
        x = imp.apply(Pad2D((pads[2], pads[3], pads[0], pads[1]),
                            name=None if name is None else f"{name}.pad"), x, node)
        padding = 0
    else:
        padding = (pads[0], pads[2])
    layer = Conv2D(in_c, w.shape[0], kernel, strides, padding, dilations, group,
                   bias=bias is not None, dtype=imp.dtype, name=name)
    _set_params(imp, node, layer, weight=w, bias=bias)
    return imp.apply(layer, x, node)


def _conv_transpose(imp, node, attrs, ins):
    from ..layers import ConvTranspose2D, Pad2D

    x, w, kernel, strides, dilations, group = _conv_geometry(
        imp, node, attrs, ins, "transposed convolution's (C, M/group, kH, kW)")
    out_pad = _pair_attr(imp, node, attrs, "output_padding", (0, 0))
    in_c, h, wd = x.shape[1:]
    full = [s * (n - 1) + op + d * (k - 1) + 1
            for n, s, op, d, k in zip((h, wd), strides, out_pad, dilations, kernel)]
    auto = attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise imp.fail(f"node {_describe(node)}: auto_pad {auto!r} is not supported")
    if "output_shape" in attrs or auto.startswith("SAME"):
        target = (_pair_attr(imp, node, attrs, "output_shape", (0, 0))
                  if "output_shape" in attrs else (h * strides[0], wd * strides[1]))
        pads = []
        for f, t in zip(full, target):
            total = f - t
            if total < 0:
                raise imp.fail(f"node {_describe(node)}: output_shape {target} is larger than "
                               f"the full output {tuple(full)}")
            # ONNX's rule: the odd row/column is cut at the start unless SAME_UPPER
            pads.append((total // 2, total - total // 2) if auto == "SAME_UPPER"
                        else (total - total // 2, total // 2))
        pads = pads[0] + pads[1]
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = _spatial_pads(imp, node, attrs, (h, wd), kernel, strides, dilations)
    bias = imp.param(node, ins[2], "bias B", (w.shape[1] * group,)) \
        if len(ins) > 2 and ins[2] is not None else None
    name = imp.layer_name(node, node.input[1])
    # PyTorch's padding p and output_padding q cut p rows at the start and keep q beyond the
    # end: ONNX's (begin, end) pads and output_padding op are p = begin, q = op + begin - end
    # when that q is allowed; otherwise the full output is cropped by a Pad2D after it
    (top, bottom, left, right) = pads
    q = (out_pad[0] + top - bottom, out_pad[1] + left - right)
    direct = all(0 <= qi < max(s, d) for qi, s, d in zip(q, strides, dilations))
    if not direct and (out_pad[0] > bottom or out_pad[1] > right):
        raise imp.fail(f"node {_describe(node)}: output_padding {out_pad} with pads {pads} is "
                       "not supported")
    layer = ConvTranspose2D(in_c, w.shape[1] * group, kernel, strides,
                            (top, left) if direct else 0, q if direct else 0, group,
                            bias=bias is not None, dilation=dilations, dtype=imp.dtype,
                            name=name)
    _set_params(imp, node, layer, weight=w, bias=bias)
    y = imp.apply(layer, x, node)
    if not direct:
        y = imp.apply(Pad2D((-left, out_pad[1] - right, -top, out_pad[0] - bottom),
                            name=None if name is None else f"{name}.crop"), y, node)
    return y


def _set_params(imp, node, layer, **arrays):
    for key, value in arrays.items():
        if value is None:
            continue
        want = layer.params[key].shape
        if value.shape != want:
            raise imp.fail(f"node {_describe(node)}: {key} has shape {value.shape}, the layer "
                           f"needs {want}")
        layer.params[key] = np.array(value, dtype=imp.dtype)


def _pool(kind):
    def convert(imp, node, attrs, ins):
        from ..layers import AvgPool2D, MaxPool2D

        x = imp.rank4(node, ins[0])
        if len(node.output) > 1 and node.output[1] and imp.consumers.get(node.output[1]):
            raise imp.fail(f"node {_describe(node)}: the Indices output is not supported")
        if attrs.get("storage_order", 0) != 0:
            raise imp.fail(f"node {_describe(node)}: storage_order 1 is not supported")
        if "kernel_shape" not in attrs:
            raise imp.fail(f"node {_describe(node)}: kernel_shape is required")
        kernel = _pair_attr(imp, node, attrs, "kernel_shape", None)
        strides = _pair_attr(imp, node, attrs, "strides", (1, 1))
        dilations = _pair_attr(imp, node, attrs, "dilations", (1, 1))
        top, bottom, left, right = _spatial_pads(imp, node, attrs, x.shape[2:], kernel,
                                                 strides, dilations)
        common = dict(kernel_size=kernel, stride=strides,
                      padding=((top, bottom), (left, right)),
                      ceil_mode=bool(attrs.get("ceil_mode", 0)), dilation=dilations,
                      name=imp.layer_name(node))
        if kind == "max":
            layer = MaxPool2D(**common)
        else:
            layer = AvgPool2D(**common, count_include_pad=bool(attrs.get("count_include_pad", 0)))
        return imp.apply(layer, x, node)
    return convert


def _global_pool(kind):
    def convert(imp, node, attrs, ins, keepdims=True):
        from ..layers import AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D, MaxPool2D

        x = imp.rank4(node, ins[0])
        name = imp.layer_name(node)
        if not keepdims:
            layer = (GlobalMaxPool2D if kind == "max" else GlobalAvgPool2D)(name=name)
            return imp.apply(layer, x, node)
        users = imp.consumers.get(node.output[0], [])
        flattened = (bool(users) and node.output[0] not in imp.graph_outputs
                     and all(c.op_type in ("Flatten", "Reshape") and c.input[0] == node.output[0]
                             for c in users))
        if flattened:  # (N, C) directly; the Flatten/Reshape after it keeps it
            layer = (GlobalMaxPool2D if kind == "max" else GlobalAvgPool2D)(name=name)
            return imp.apply(layer, x, node, flat=True)
        layer = (MaxPool2D if kind == "max" else AvgPool2D)(x.shape[2:], name=name)
        return imp.apply(layer, x, node)
    return convert


def _reduce(kind):
    """ReduceMean / ReduceMax over H and W of (N, C, H, W): a global pooling."""
    def convert(imp, node, attrs, ins):
        x = imp.rank4(node, ins[0])
        if imp.opset < 18:
            axes = attrs.get("axes")
        else:
            axes = (None if len(ins) < 2 or ins[1] is None else
                    [int(a) for a in imp.constant(node, ins[1], "axes").reshape(-1)])
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            raise imp.fail(f"node {_describe(node)}: {node.op_type} over axes {axes} (only over "
                           "H and W, axes [2, 3], of an (N, C, H, W) tensor)")
        return _global_pool(kind)(imp, node, {}, ins[:1],
                                  keepdims=bool(attrs.get("keepdims", 1)))
    return convert


def _elementwise(make):
    def convert(imp, node, attrs, ins):
        x = imp.tensor_input(node, ins[0])
        return imp.apply(make(attrs, imp.layer_name(node)), x, node, flat=x.flat)
    return convert


def _softmax(cls_name):
    def convert(imp, node, attrs, ins):
        from .. import layers

        cls = getattr(layers, cls_name)
        x = imp.tensor_input(node, ins[0])
        rank = len(x.shape)
        axis = int(attrs.get("axis", -1 if imp.opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            raise imp.fail(f"node {_describe(node)}: axis {axis} out of range for shape "
                           f"{x.shape}")
        if imp.opset < 13 and any(s != 1 for s in x.shape[axis + 1:]):
            raise imp.fail(f"node {_describe(node)}: before opset 13 {node.op_type} flattens "
                           f"the axes from {axis} on; only the last axis is supported "
                           f"(shape {x.shape})")
        if x.flat:
            axis = min(axis, 1) if axis <= 1 else None
            if axis is None:
                raise imp.fail(f"node {_describe(node)}: softmax over a 1x1 plane")
        return imp.apply(cls(axis=axis, name=imp.layer_name(node)), x, node, flat=x.flat)
    return convert


def _clip(imp, node, attrs, ins):
    from ..layers import Clip, ReLU, ReLU6

    if imp.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo, hi = (None if len(ins) <= i or ins[i] is None
                  else float(imp.param(node, ins[i], name).reshape(-1)[0])
                  for i, name in ((1, "min"), (2, "max")))
    x = imp.tensor_input(node, ins[0])
    name = imp.layer_name(node)
    if lo == 0 and hi == 6:
        layer = ReLU6(name=name)
    elif lo == 0 and hi is None:
        layer = ReLU(name=name)
    else:
        layer = Clip(lo, hi, name=name)
    return imp.apply(layer, x, node, flat=x.flat)


def _batchnorm(imp, node, attrs, ins):
    from ..layers import BatchNorm1D, BatchNorm2D

    if attrs.get("training_mode", 0) or any(o for o in node.output[1:]):
        raise imp.fail(f"node {_describe(node)}: only inference-mode BatchNormalization "
                       "(one output) is supported")
    x = imp.tensor_input(node, ins[0])
    if len(ins) != 5:
        raise imp.fail(f"node {_describe(node)}: needs 5 inputs (X, scale, B, mean, var)")
    c = x.shape[1]
    scale, bias, mean, var = (imp.param(node, v, what, (c,))
                              for v, what in zip(ins[1:], ("scale", "B", "mean", "var")))
    rank = len(x.node.shape)
    if rank not in (2, 4):
        raise imp.fail(f"node {_describe(node)}: input of shape {x.shape} is neither (N, C) "
                       "nor (N, C, H, W)")
    momentum = 1.0 - float(attrs.get("momentum", 0.9))
    layer = (BatchNorm2D if rank == 4 else BatchNorm1D)(
        c, eps=float(attrs.get("epsilon", 1e-5)), momentum=momentum, dtype=imp.dtype,
        name=imp.layer_name(node, node.input[1]))
    layer.params["weight"], layer.params["bias"] = scale, bias
    layer.buffers["running_mean"], layer.buffers["running_var"] = mean, var
    return imp.apply(layer, x, node, flat=x.flat)


def _dense_from(imp, node, x, weight, bias, weight_name):
    from ..layers import Dense

    if len(x.node.shape) != 2:
        raise imp.fail(f"node {_describe(node)}: input of shape {x.shape} is not (N, features)")
    layer = Dense(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=imp.dtype,
                  name=imp.layer_name(node, weight_name))
    _set_params(imp, node, layer, weight=weight, bias=bias)
    return imp.apply(layer, x, node)


def _gemm(imp, node, attrs, ins):
    x = imp.tensor_input(node, ins[0])
    if attrs.get("transA", 0):
        raise imp.fail(f"node {_describe(node)}: transA=1 is not supported")
    b = imp.param(node, ins[1], "B")
    if b.ndim != 2:
        raise imp.fail(f"node {_describe(node)}: B has shape {b.shape}, not 2-D")
    weight = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))
    bias = None
    if len(ins) > 2 and ins[2] is not None:
        c = imp.param(node, ins[2], "C")
        bias = np.broadcast_to(c, (1, weight.shape[0])).reshape(-1) * float(attrs.get("beta", 1.0))
    return _dense_from(imp, node, x, np.ascontiguousarray(weight), bias, node.input[1])


def _matmul(imp, node, attrs, ins):
    x = imp.tensor_input(node, ins[0])
    b = imp.param(node, ins[1], "B")
    if b.ndim != 2:
        raise imp.fail(f"node {_describe(node)}: B has shape {b.shape}, not 2-D")
    bias = None
    users = imp.consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add" and len(users[0].input) == 2:
        other = users[0].input[1] if users[0].input[0] == node.output[0] else users[0].input[0]
        c = imp.values.get(other)
        if isinstance(c, np.ndarray) and c.dtype.kind == "f" and c.size == b.shape[1] \
                and c.ndim <= 2:
            bias = c.reshape(-1)  # MatMul + Add: one Dense; the Add passes its input on
            imp.absorbed.add(id(users[0]))
    return _dense_from(imp, node, x, np.ascontiguousarray(b.T), bias, node.input[1])


def _binary(op):
    def convert(imp, node, attrs, ins):
        if id(node) in imp.absorbed:  # the bias of the Dense before it
            return ins[0] if isinstance(ins[0], _Tensor) else ins[1]
        if len(ins) != 2:
            raise imp.fail(f"node {_describe(node)}: {op} needs 2 inputs")
        a, b = ins[0], ins[1]
        if not isinstance(a, _Tensor) and not isinstance(b, _Tensor):
            return _fold_arith(imp, node, op, a, b)
        if isinstance(a, _Tensor) and isinstance(b, _Tensor):
            if op != "Add":
                raise imp.fail(f"node {_describe(node)}: {op} of two computed tensors is not "
                               "supported (only Add)")
            from ..layers import Add

            if a.shape != b.shape:
                raise imp.fail(f"node {_describe(node)}: Add of shapes {a.shape} and "
                               f"{b.shape} (broadcasting between computed tensors is not "
                               "supported)")
            return imp.apply(Add(name=imp.layer_name(node)), [a.node, b.node], node,
                             flat=a.flat)
        x, c = (a, b) if isinstance(a, _Tensor) else (b, a)
        if op in ("Sub", "Div") and x is b:
            raise imp.fail(f"node {_describe(node)}: {op} with the constant first is not "
                           "supported")
        c = imp.param(node, c, "constant operand").astype(np.float64)
        kind = op
        if op == "Sub":
            kind, c = "Add", -c
        elif op == "Div":
            kind, c = "Mul", 1.0 / c
        x_name = node.input[0] if x is a else node.input[1]
        return _affine_constant(imp, node, x, x_name, c, kind)
    return convert


def _affine_constant(imp, node, x, x_name, c, op):
    """x + c or x * c with a constant c broadcast per channel (or per feature): an Add is
    folded into the bias of the Dense/Conv2D before it when that layer has a bias and this is
    its output's only use; otherwise, on (N, C, H, W), a depthwise 1x1 Conv2D (weight c and
    no bias, or weight 1 and bias c) computes it, trainable like the rest."""
    from ..layers import Conv2D

    shape = x.shape
    channels = shape[1]
    if c.ndim == len(shape):
        if c.shape[0] != 1:
            raise imp.fail(f"node {_describe(node)}: constant of shape {c.shape} would change "
                           "the batch axis")
        c = c[0]
    try:
        per = np.broadcast_to(c, shape[1:]).reshape(channels, -1)
    except ValueError:
        raise imp.fail(f"node {_describe(node)}: constant of shape {c.shape} does not broadcast "
                       f"over {shape}") from None
    if not np.all(per == per[:, :1]):
        raise imp.fail(f"node {_describe(node)}: constant of shape {c.shape} varies within a "
                       "channel; only per-channel constants are supported")
    values = per[:, 0]
    layer = x.node.layer
    if (op == "Add" and len(imp.consumers.get(x_name, [])) == 1 and layer is not None
            and type(layer).__name__ in ("Dense", "Conv2D", "ConvTranspose2D")
            and layer.params.get("bias") is not None):
        layer.params["bias"] = (layer.params["bias"] + values).astype(imp.dtype)
        return x
    if len(shape) != 4 or x.flat:
        raise imp.fail(f"node {_describe(node)}: {op} of a constant on shape {shape} is only "
                       "supported per channel of (N, C, H, W) tensors or folded into the bias "
                       "of the layer before it")
    conv = Conv2D(channels, channels, 1, groups=channels, bias=(op == "Add"), dtype=imp.dtype,
                  name=imp.layer_name(node))
    conv.params["weight"] = (np.ones(channels) if op == "Add" else values).reshape(
        channels, 1, 1, 1).astype(imp.dtype)
    if op == "Add":
        conv.params["bias"] = values.astype(imp.dtype)
    return imp.apply(conv, x, node)


def _fold_arith(imp, node, op, a, b):
    if a is None or b is None or a.dtype == object or b.dtype == object:
        raise imp.fail(f"node {_describe(node)}: cannot evaluate {op} of the symbolic batch "
                       "size at import")
    fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
    if op == "Div" and a.dtype.kind in "iu":
        fn = np.floor_divide
    with np.errstate(all="ignore"):
        return fn(a, b).astype(np.result_type(a, b))


def _flatten(imp, node, attrs, ins):
    from ..layers import Flatten

    x = imp.tensor_input(node, ins[0])
    axis = int(attrs.get("axis", 1))
    if axis != 1:
        raise imp.fail(f"node {_describe(node)}: Flatten axis {axis} (only 1: keep the batch "
                       "axis)")
    if x.flat or len(x.node.shape) == 2:
        return _Tensor(x.node)
    return imp.apply(Flatten(name=imp.layer_name(node)), x, node)


def _reshape(imp, node, attrs, ins):
    from ..layers import Flatten

    target = imp.constant(node, ins[1] if len(ins) > 1 else None, "shape")
    if attrs.get("allowzero", 0) and any(v is not BATCH and v == 0 for v in target.reshape(-1)):
        raise imp.fail(f"node {_describe(node)}: allowzero=1 with a 0 in the shape (an empty "
                       "axis) is not supported")
    if not isinstance(ins[0], _Tensor):
        data = imp.constant(node, ins[0], "data")
        if target.dtype == object:
            raise imp.fail(f"node {_describe(node)}: cannot reshape to a symbolic shape")
        return data.reshape([int(v) for v in target.reshape(-1)])
    x = ins[0]
    target = [v if v is BATCH else int(v) for v in target.reshape(-1)]
    features = math.prod(x.shape[1:])
    # (batch, features) spelt as the symbolic batch, 0 (keep) or -1 (infer), then the
    # feature count or -1 (not both inferred)
    ok = (len(target) == 2 and (target[0] is BATCH or target[0] in (0, -1))
          and target[1] is not BATCH and target[1] in (-1, features) and target != [-1, -1])
    if not ok:
        raise imp.fail(f"node {_describe(node)}: Reshape of {x.shape} to {target} (only to 2-D "
                       "(batch, features) is supported)")
    if x.flat or len(x.node.shape) == 2:
        return _Tensor(x.node)
    return imp.apply(Flatten(name=imp.layer_name(node)), x, node)


def _concat(imp, node, attrs, ins):
    from ..layers import Concat

    if "axis" not in attrs:
        raise imp.fail(f"node {_describe(node)}: axis is required")
    axis = int(attrs["axis"])
    if all(not isinstance(v, _Tensor) for v in ins):
        arrays = [imp.constant(node, v, "input") for v in ins]
        out = np.concatenate(arrays, axis=axis)
        return out
    tensors = [imp.tensor_input(node, v) for v in ins]
    rank = len(tensors[0].shape)
    axis = axis + rank if axis < 0 else axis
    if axis != 1 or any(t.flat for t in tensors):
        raise imp.fail(f"node {_describe(node)}: Concat along axis {axis} (only the channel "
                       "axis 1 is supported)")
    if len(tensors) == 1:
        return tensors[0]
    return imp.apply(Concat(axis=1, name=imp.layer_name(node)), [t.node for t in tensors],
                     node)


def _pad(imp, node, attrs, ins):
    from ..layers import Pad2D

    x = imp.rank4(node, ins[0])
    mode = attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise imp.fail(f"node {_describe(node)}: Pad mode {mode!r} is not supported")
    if imp.opset < 11:
        pads = list(attrs.get("pads", []))
        value = float(attrs.get("value", 0.0))
    else:
        pads = [int(v) for v in imp.constant(node, ins[1] if len(ins) > 1 else None,
                                             "pads").reshape(-1)]
        value = (float(imp.param(node, ins[2], "constant_value").reshape(-1)[0])
                 if len(ins) > 2 and ins[2] is not None else 0.0)
        if len(ins) > 3 and ins[3] is not None:
            axes = [int(a) % 4 for a in imp.constant(node, ins[3], "axes").reshape(-1)]
            if len(pads) != 2 * len(axes):
                raise imp.fail(f"node {_describe(node)}: {len(pads)} pads for axes {axes}")
            full = [0] * 8
            for i, a in enumerate(axes):
                full[a], full[a + 4] = pads[i], pads[i + len(axes)]
            pads = full
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        raise imp.fail(f"node {_describe(node)}: pads {pads} (only the last two axes of an "
                       "(N, C, H, W) tensor may be padded)")
    layer = Pad2D((pads[3], pads[7], pads[2], pads[6]),
                  mode={"edge": "replicate"}.get(mode, mode),
                  value=value if mode == "constant" else 0.0, name=imp.layer_name(node))
    return imp.apply(layer, x, node)


def _resize(imp, node, attrs, ins):
    from ..layers import Upsample2D

    x = imp.rank4(node, ins[0])
    mode = attrs.get("mode", "nearest")
    if mode != "nearest":
        raise imp.fail(f"node {_describe(node)}: {node.op_type} mode {mode!r} (only 'nearest')")
    if node.op_type == "Upsample" or imp.opset < 11:
        coord, nearest = "asymmetric", "floor"
        if "scales" in attrs:
            scales = list(attrs["scales"])
        else:
            scales = imp.constant(node, ins[1] if len(ins) > 1 else None, "scales")
    else:
        coord = attrs.get("coordinate_transformation_mode", "half_pixel")
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        if attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") \
                != "stretch" or "axes" in attrs:
            raise imp.fail(f"node {_describe(node)}: antialias, axes and "
                           "keep_aspect_ratio_policy are not supported")
        scales = ins[2] if len(ins) > 2 else None
        if scales is None or (isinstance(scales, np.ndarray) and scales.size == 0):
            sizes = imp.constant(node, ins[3] if len(ins) > 3 else None, "scales or sizes")
            sizes = [int(v) for v in sizes.reshape(-1)]
            if len(sizes) != 4 or sizes[1] != x.shape[1]:
                raise imp.fail(f"node {_describe(node)}: sizes {sizes} for input {x.shape}")
            scales = [1, 1] + [s / n for s, n in zip(sizes[2:], x.shape[2:])]
        else:
            scales = imp.constant(node, scales, "scales")
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(scales) != 4 or scales[:2] != [1.0, 1.0] or any(
            s < 1 or s != int(s) for s in scales[2:]):
        raise imp.fail(f"node {_describe(node)}: scales {scales} (only integer factors >= 1 of "
                       "H and W)")
    # with integer factors every output pixel copies one input pixel: which one depends on the
    # coordinate mode; these are the combinations where it is the block's own (a repeat)
    repeat = (coord in ("half_pixel", "pytorch_half_pixel")
              or (coord == "asymmetric" and nearest == "floor"))
    if not repeat:
        raise imp.fail(f"node {_describe(node)}: coordinate_transformation_mode {coord!r} with "
                       f"nearest_mode {nearest!r} is not a plain repeat")
    layer = Upsample2D((int(scales[2]), int(scales[3])), name=imp.layer_name(node))
    return imp.apply(layer, x, node)


def _dropout(imp, node, attrs, ins):
    from ..layers import Dropout

    x = imp.tensor_input(node, ins[0])
    if imp.opset < 12:
        ratio = float(attrs.get("ratio", 0.5))
    else:
        ratio = (float(imp.param(node, ins[1], "ratio").reshape(-1)[0])
                 if len(ins) > 1 and ins[1] is not None else 0.5)
    return imp.apply(Dropout(ratio, name=imp.layer_name(node)), x, node, flat=x.flat)


def _identity(imp, node, attrs, ins):
    return ins[0]


# ----------------------------------------------------------------- constant folding
def _constant(imp, node, attrs, ins):
    keys = list(attrs)
    if len(keys) != 1:
        raise imp.fail(f"node {_describe(node)}: Constant needs exactly one value attribute")
    key, value = keys[0], attrs[keys[0]]
    if key == "value":
        return value
    if key in ("value_float", "value_int"):
        return np.array(value, dtype=np.float32 if key == "value_float" else np.int64)
    return np.array(value, dtype=np.float32 if key == "value_floats" else np.int64)


def _shape(imp, node, attrs, ins):
    value = ins[0]
    if isinstance(value, _Tensor):
        dims, dtype = [BATCH] + list(value.shape[1:]), object
    else:
        dims, dtype = list(imp.constant(node, value, "data").shape), np.int64
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    dims = dims[start:None if end is None else int(end)]
    if dtype is object and BATCH not in dims:
        dtype = np.int64  # the sizes after the batch axis are known
    return np.array(dims, dtype=dtype)


def _gather(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "data")
    idx = imp.constant(node, ins[1], "indices")
    return np.take(data, idx.astype(np.int64), axis=int(attrs.get("axis", 0)))


def _unsqueeze(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "data")
    axes = (attrs["axes"] if imp.opset < 13 else
            [int(a) for a in imp.constant(node, ins[1] if len(ins) > 1 else None,
                                          "axes").reshape(-1)])
    out = data
    rank = data.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "data")
    axes = attrs.get("axes") if imp.opset < 13 else (
        None if len(ins) < 2 or ins[1] is None
        else [int(a) for a in imp.constant(node, ins[1], "axes").reshape(-1)])
    return np.squeeze(data, axis=None if axes is None else tuple(axes))


def _slice(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "data")
    if imp.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = ([int(v) for v in imp.constant(node, ins[i], what).reshape(-1)]
                        for i, what in ((1, "starts"), (2, "ends")))
        axes = ([int(v) for v in imp.constant(node, ins[3], "axes").reshape(-1)]
                if len(ins) > 3 and ins[3] is not None else list(range(len(starts))))
        steps = ([int(v) for v in imp.constant(node, ins[4], "steps").reshape(-1)]
                 if len(ins) > 4 and ins[4] is not None else [1] * len(starts))
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(s, e, st)
    return data[tuple(index)]


def _cast(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "input")
    to = int(attrs.get("to", 0))
    if to not in _DTYPES:
        raise imp.fail(f"node {_describe(node)}: Cast to type {to} is not supported")
    if data.dtype == object:  # a symbolic shape stays one
        if np.dtype(_DTYPES[to][0]).kind not in "iu":
            raise imp.fail(f"node {_describe(node)}: cannot cast the symbolic batch size to a "
                           "non-integer type")
        return data
    return data.astype(_DTYPES[to][0])


def _expand(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "input")
    shape = [int(v) for v in imp.constant(node, ins[1] if len(ins) > 1 else None,
                                          "shape").reshape(-1)]
    if min(shape, default=1) < 0 or math.prod(shape) > 2**24:
        raise imp.fail(f"node {_describe(node)}: Expand to shape {shape} is not supported")
    out_shape = np.broadcast_shapes(data.shape, tuple(shape))
    return np.array(np.broadcast_to(data, out_shape))


def _cast_like(imp, node, attrs, ins):
    data = imp.constant(node, ins[0], "input")
    like = ins[1] if len(ins) > 1 else None
    dtype = imp.dtype if isinstance(like, _Tensor) else imp.constant(node, like, "target").dtype
    if data.dtype == object:
        raise imp.fail(f"node {_describe(node)}: cannot cast the symbolic batch size")
    return data.astype(dtype)


def _only_constants(fold_fn):
    def convert(imp, node, attrs, ins):
        for name, value in zip(node.input, ins):
            if isinstance(value, _Tensor):
                raise imp.fail(f"node {_describe(node)}: {node.op_type} of the computed tensor "
                               f"{name!r} is not supported (only of constants and shapes)")
        return fold_fn(imp, node, attrs, ins)
    return convert


def _make(cls_name, **kw):
    def make(attrs, name):
        from .. import layers

        args = {k: type(default)(attrs.get(onnx_key, default))
                for k, (onnx_key, default) in kw.items()}
        return getattr(layers, cls_name)(**args, name=name)
    return make


_POOL_ATTRS = {"auto_pad", "kernel_shape", "pads", "strides", "dilations", "ceil_mode"}

#: operator -> (handler, attributes it understands)
_OPS = {
    "Conv": (_conv, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}),
    "ConvTranspose": (_conv_transpose, {"auto_pad", "dilations", "group", "kernel_shape",
                                        "output_padding", "output_shape", "pads", "strides"}),
    "MaxPool": (_pool("max"), _POOL_ATTRS | {"storage_order"}),
    "AveragePool": (_pool("avg"), _POOL_ATTRS | {"count_include_pad"}),
    "GlobalAveragePool": (_global_pool("avg"), set()),
    "GlobalMaxPool": (_global_pool("max"), set()),
    "Gemm": (_gemm, {"alpha", "beta", "transA", "transB"}),
    "MatMul": (_matmul, set()),
    "Relu": (_elementwise(_make("ReLU")), set()),
    "LeakyRelu": (_elementwise(_make("LeakyReLU", negative_slope=("alpha", 0.01))), {"alpha"}),
    "Elu": (_elementwise(_make("ELU", alpha=("alpha", 1.0))), {"alpha"}),
    "Gelu": (_elementwise(_make("GELU", approximate=("approximate", "none"))), {"approximate"}),
    "Sigmoid": (_elementwise(_make("Sigmoid")), set()),
    "Tanh": (_elementwise(_make("Tanh")), set()),
    "Clip": (_clip, {"min", "max"}),
    "Softmax": (_softmax("Softmax"), {"axis"}),
    "LogSoftmax": (_softmax("LogSoftmax"), {"axis"}),
    "BatchNormalization": (_batchnorm, {"epsilon", "momentum", "training_mode", "spatial"}),
    "Flatten": (_flatten, {"axis"}),
    "Reshape": (_reshape, {"allowzero"}),
    "Dropout": (_dropout, {"ratio", "seed"}),
    "Identity": (_identity, set()),
    "Add": (_binary("Add"), set()),
    "Sub": (_binary("Sub"), set()),
    "Mul": (_binary("Mul"), set()),
    "Div": (_binary("Div"), set()),
    "Concat": (_concat, {"axis"}),
    "Pad": (_pad, {"mode", "pads", "value"}),
    "Resize": (_resize, {"mode", "coordinate_transformation_mode", "nearest_mode",
                         "cubic_coeff_a", "exclude_outside", "extrapolation_value", "antialias",
                         "axes", "keep_aspect_ratio_policy"}),
    "Upsample": (_resize, {"mode", "scales"}),
    "Constant": (_constant, {"value", "value_float", "value_floats", "value_int",
                             "value_ints"}),
    "Shape": (_shape, {"start", "end"}),
    "Gather": (_only_constants(_gather), {"axis"}),
    "Unsqueeze": (_only_constants(_unsqueeze), {"axes"}),
    "Squeeze": (_only_constants(_squeeze), {"axes"}),
    "Slice": (_only_constants(_slice), {"starts", "ends", "axes"}),
    "Cast": (_only_constants(_cast), {"to", "saturate"}),
    "CastLike": (_cast_like, {"saturate"}),
    "Expand": (_only_constants(_expand), set()),
    "ReduceMean": (_reduce("avg"), {"axes", "keepdims", "noop_with_empty_axes"}),
    "ReduceMax": (_reduce("max"), {"axes", "keepdims", "noop_with_empty_axes"}),
}


#: the operators :func:`load` imports
SUPPORTED_OPS = frozenset(_OPS)


def load(path, *, dtype=None):
    """Import the ONNX model at ``path`` as a trainable :class:`cnnkit.Model`.

    ``dtype``: the model's float type (default: the graph input's, float32 or float64).  The
    weights are the file's; layers are named after their weights' names (PyTorch's module
    paths for PyTorch exports), so ``model.state_dict()`` keeps the exporter's keys where it
    can.  Raises :class:`ONNXImportError` (a ``ValueError``, message starting with the file
    name) for a damaged or hostile file or an operator or attribute cnnkit cannot import, and
    ``ImportError`` with the install command when the ``onnx`` package is missing.
    """
    target = _fspath(path)
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"{target}: dtype must be float32 or float64, got {dtype!r}")
    if not os.path.exists(target):
        raise FileNotFoundError(f"{target}: ONNX file not found")
    imp = _Importer(target, require_onnx())
    model = imp.parse()
    try:
        return imp.build(model, dtype)
    except RecursionError:
        raise imp.fail("the graph is too deeply nested") from None
