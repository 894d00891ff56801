"""Graph building, shape inference and the forward/backward executor.

Models are graphs of layer nodes, built Keras-style::

    x = ck.Input((1, 28, 28))
    h = ck.layers.Conv2D(1, 8, 3, padding=1)(x)
    y = ck.layers.Add()([h, ck.layers.ReLU()(h)])
    model = ck.Model(x, y)

Shapes are inferred while the graph is built, so a mismatch is reported at the node that causes
it.  The executor knows nothing about particular layers: it calls ``forward``/``backward`` on
whatever registered layer each node holds, in topological order and its reverse, accumulating
gradients where a node's output fans out.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from ._shapes import fmt_shape as _fmt_shape
from . import fusion as _fusion
from ._threads import blas_pass
from .layers import FLOAT_DTYPES, Layer

_input_counter = itertools.count(1)


class Node:
    """An edge-producing point of a graph: a layer applied to its input nodes."""

    def __init__(self, layer, inputs, shape, name):
        self.layer = layer
        self.inputs: tuple[Node, ...] = tuple(inputs)
        self.shape = tuple(shape)  # includes the batch axis as None
        self.name = name

    def __repr__(self):
        return f"<Node {self.name} {self.shape}>"


class Input(Node):
    """A graph input; ``shape`` excludes the batch axis: ``Input((1, 28, 28))``."""

    def __init__(self, shape, name=None):
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        if (not isinstance(shape, (tuple, list)) or not shape
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                           for s in shape)):
            raise ValueError(f"Input: shape must be a non-empty tuple of positive ints (without "
                             f"the batch axis), got {shape!r}")
        super().__init__(None, (), (None,) + tuple(int(s) for s in shape),
                         name or f"input_{next(_input_counter)}")


def _as_node_list(inputs):
    if isinstance(inputs, Node):
        return [inputs], False
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, Node) for i in inputs):
        return list(inputs), True
    raise TypeError(f"expected a graph node (cnnkit.Input or a layer's output) or a list of "
                    f"nodes, got {inputs!r}")


def apply_layer(layer: Layer, inputs) -> Node:
    """Add ``layer`` to a graph, fed by ``inputs``; infer its output shape now."""
    nodes, is_list = _as_node_list(inputs)
    owner = f"{layer.name} ({type(layer).__name__})"
    if getattr(layer, "_node", None) is not None:
        raise ValueError(f"{owner}: this layer object is already part of a graph; create a new "
                         "layer for each place it is used")
    if layer.is_merge:
        if len(nodes) < 2:
            raise ValueError(f"{owner}: a merge layer needs a list of at least two inputs")
        try:
            shape = layer.output_shape([n.shape for n in nodes])
        except ValueError as exc:
            raise ValueError(f"{exc} (inputs from nodes "
                             f"{', '.join(repr(n.name) for n in nodes)})") from None
    else:
        if is_list and len(nodes) != 1:
            raise ValueError(f"{owner}: takes one input, got {len(nodes)} nodes")
        try:
            shape = layer.output_shape(nodes[0].shape)
        except ValueError as exc:
            raise ValueError(f"{exc} (input from node {nodes[0].name!r})") from None
    node = Node(layer, nodes, shape, layer.name)
    layer._node = node
    return node


class Model:
    """A model as a graph from ``inputs`` to ``outputs`` (nodes or lists of nodes)."""

    #: when True, every layer output and gradient is checked for NaN/Inf and the first layer
    #: that produces one raises ``FloatingPointError`` naming it (costs one pass per array)
    check_finite = False
    _trace = None

    def __init__(self, inputs, outputs, name: str | None = None):
        self.name = name or type(self).__name__.lower()
        self.training = True
        self._build(inputs, outputs)

    # ------------------------------------------------------------------ structure
    def _build(self, inputs, outputs):
        in_nodes, self._multi_in = _as_node_list(inputs)
        out_nodes, self._multi_out = _as_node_list(outputs)
        for n in in_nodes:
            if not isinstance(n, Input):
                raise TypeError(f"model inputs must be cnnkit.Input nodes, got {n!r}")
        order: list[Node] = []
        state: dict[int, int] = {}

        def visit(node):  # iterative DFS, post-order
            stack = [(node, False)]
            while stack:
                n, done = stack.pop()
                if done:
                    if state.get(id(n)) != 2:
                        state[id(n)] = 2
                        order.append(n)
                    continue
                if state.get(id(n)) == 2:
                    continue
                state[id(n)] = 1
                stack.append((n, True))
                for parent in reversed(n.inputs):
                    if state.get(id(parent)) != 2:
                        stack.append((parent, False))

        for n in out_nodes:
            visit(n)
        declared = {id(n) for n in in_nodes}
        for n in order:
            if isinstance(n, Input) and id(n) not in declared:
                raise ValueError(f"graph input {n.name!r} feeds the outputs but is not among the "
                                 "model's inputs")
        names = {}
        for n in order:
            if n.name in names:
                raise ValueError(f"two graph nodes are named {n.name!r}; layer names must be unique")
            names[n.name] = n
        self.inputs, self.outputs = in_nodes, out_nodes
        self.nodes = [n for n in order if not isinstance(n, Input)]
        self._consumers = {id(n): 0 for n in order}
        # who reads each node's output (None: a model output), for the fusion planner
        self._readers: dict[int, list] = {id(n): [] for n in order}
        for n in self.nodes:
            for p in n.inputs:
                self._consumers[id(p)] += 1
                self._readers[id(p)].append(n)
        for n in out_nodes:
            self._consumers[id(n)] += 1
            self._readers[id(n)].append(None)
        self._plan_cache: dict = {}
        self._trace = None  # the steps of the last training forward, with their fused states

    @property
    def layers(self) -> list[Layer]:
        return [n.layer for n in self.nodes]

    def get_layer(self, name: str) -> Layer:
        for n in self.nodes:
            if n.name == name:
                return n.layer
        raise KeyError(f"{self.name}: no layer named {name!r}")

    @property
    def input_shape(self):
        shapes = [n.shape for n in self.inputs]
        return shapes if self._multi_in else shapes[0]

    @property
    def output_shape(self):
        shapes = [n.shape for n in self.outputs]
        return shapes if self._multi_out else shapes[0]

    # ------------------------------------------------------------------ parameters
    def named_parameters(self) -> dict[str, np.ndarray]:
        return {f"{layer.name}.{key}": p for layer in self.layers
                for key, p in layer.params.items() if p is not None}

    def parameters(self) -> list["Parameter"]:
        return [Parameter(layer, key) for layer in self.layers
                for key, p in layer.params.items() if p is not None]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    @property
    def dtype(self):
        for layer in self.layers:
            if layer.dtype is not None:
                return layer.dtype
        return np.dtype(np.float32)

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer under structural names: a Sequential by
        position as ``torch.nn.Sequential`` (``"0.weight"``), a graph by the names the user
        gave its layers, else by position in topological order (see :mod:`cnnkit.state`)."""
        from .state import state_dict

        return state_dict(self)

    def load_state_dict(self, state_dict, strict: bool = True, *, source: str | None = None):
        """Load a state dict (NumPy arrays, or tensors exposing DLPack/``__array__`` such as a
        PyTorch ``state_dict()``), cast to the model's dtypes.  Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``; with ``strict`` (default) any of
        them is an error.  A shape mismatch always is, naming the key and both shapes."""
        from .state import load_state_dict

        return load_state_dict(self, state_dict, strict, source=source)

    def save_weights(self, path, metadata: dict | None = None) -> None:
        """Write the weights and buffers to ``path`` atomically, keyed as :meth:`state_dict`:
        a ``.safetensors`` file for that suffix, otherwise ``.npz`` (no pickle)."""
        from .modelfile import save_weights_file

        save_weights_file(self, path, metadata)

    def load_weights(self, path) -> dict:
        """Load weights written by :meth:`save_weights` or :meth:`save` (``.npz`` or
        safetensors, told apart by content); returns the file's metadata.  ``.npz`` files of
        cnnkit 0.1 load too, their tensors matched by layer position, with a warning."""
        from .modelfile import load_weights_file

        return load_weights_file(self, path)

    def save(self, path, metadata: dict | None = None) -> None:
        """Write the whole model, architecture (its config) and weights, to one file,
        atomically: safetensors (``cnnkit.load_model`` reads it back), or ``.npz`` for that
        suffix."""
        from .modelfile import save_model

        save_model(self, path, metadata)

    # ------------------------------------------------------------------ execution
    def _check_inputs(self, x):
        xs = list(x) if self._multi_in else [x]
        if self._multi_in and (not isinstance(x, (list, tuple)) or len(xs) != len(self.inputs)):
            raise ValueError(f"{self.name}: expected a list of {len(self.inputs)} input arrays")
        batch = None
        for node, arr in zip(self.inputs, xs):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"{self.name}: input {node.name!r} must be a numpy.ndarray, got "
                                f"{type(arr).__name__}")
            if arr.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{self.name}: input {node.name!r} must be float32 or float64, got "
                                f"dtype {arr.dtype}")
            if arr.ndim != len(node.shape) or tuple(arr.shape[1:]) != node.shape[1:]:
                raise ValueError(f"{self.name}: input {node.name!r} expects shape "
                                 f"(N, {', '.join(map(str, node.shape[1:]))}), got {arr.shape}")
            if batch is not None and arr.shape[0] != batch:
                raise ValueError(f"{self.name}: inputs have different batch sizes")
            batch = arr.shape[0]
        return xs

    def forward(self, x, training: bool | None = None):
        """Run the graph.  In training mode each layer keeps what its backward needs; in
        inference nothing is kept and intermediate outputs are freed as soon as consumed."""
        xs = self._check_inputs(x)
        training = self.training if training is None else bool(training)
        if self.check_finite:  # bad data is the input's fault, not the first layer's
            for node, arr in zip(self.inputs, xs):
                if not np.all(np.isfinite(arr)):
                    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                    raise FloatingPointError(f"{self.name}: the input {node.name!r} holds {bad} "
                                             "NaN/Inf value(s) (check_finite is on)")
        values = {id(n): a for n, a in zip(self.inputs, xs)}
        remaining = dict(self._consumers)
        steps = self._steps(xs[0].dtype, training)
        states = {}
        self._trace = None
        with blas_pass():  # the BLAS thread limit is set once for the pass, not per kernel
            for step in steps:
                first, last = step.nodes[0], step.nodes[-1]
                args = [values[id(p)] for p in first.inputs]
                if step.fusion is not None:
                    out, states[id(last)] = _fusion.forward(step, args[0], training)
                elif last.layer.is_merge:
                    out = last.layer.forward(args, training)
                else:
                    out = last.layer.forward(args[0], training)
                if self.check_finite:
                    self._check_finite(last, out, "output")
                values[id(last)] = out
                for p in first.inputs:
                    remaining[id(p)] -= 1
                    if remaining[id(p)] == 0:
                        del values[id(p)]
        if training and states:
            self._trace = (steps, states)
        outs = [values[id(n)] for n in self.outputs]
        return outs if self._multi_out else outs[0]

    def _steps(self, dtype, training):
        if self.check_finite:  # every layer's own output is checked: run them one by one
            return [_fusion.PlanStep((n,)) for n in self.nodes]
        return _fusion.plan(self.nodes, self._readers, dtype, training, self._plan_cache)

    def execution_plan(self, dtype=None, training: bool | None = None) -> list:
        """The steps :meth:`forward` would run now for inputs of ``dtype`` (default: the
        model's) in ``training`` mode (default: the model's): single layers and fused chains
        (``step.fusion`` names the registered fusion, ``step.nodes`` the graph nodes)."""
        if isinstance(self, Sequential) and not self._built:
            raise RuntimeError(f"{self.name}: not built yet; pass input_shape= or call build()")
        dtype = np.dtype(dtype or self.dtype)
        return self._steps(dtype, self.training if training is None else bool(training))

    __call__ = forward

    def _check_finite(self, node, arr, what):
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise FloatingPointError(
                f"{self.name}: layer {node.name!r} ({type(node.layer).__name__}) produced "
                f"{bad} NaN/Inf value(s) in its {what} (check_finite is on)")

    def predict(self, x, batch_size: int = 256):
        """Inference in batches; returns the concatenated outputs (single-output models)."""
        if self._multi_in or self._multi_out:
            raise ValueError(f"{self.name}: predict() supports single-input single-output models")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive int, got {batch_size!r}")
        self._check_inputs(x)
        parts = [self.forward(x[i:i + batch_size], training=False)
                 for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(parts, axis=0)

    def backward(self, dy, input_grads: bool = True):
        """Back-propagate output gradients; fills every layer's ``grads``.

        Returns the gradient(s) w.r.t. the model's input(s); with ``input_grads=False`` they
        are not computed where a variant can skip them (``None`` is returned), as a trainer
        wants."""
        dys = list(dy) if self._multi_out else [dy]
        if self._multi_out and (not isinstance(dy, (list, tuple)) or len(dys) != len(self.outputs)):
            raise ValueError(f"{self.name}: expected a list of {len(self.outputs)} output "
                             "gradients")
        grads: dict[int, np.ndarray] = {}

        def accumulate(node, g):
            key = id(node)
            if key in grads:
                grads[key] = grads[key] + g
            else:
                grads[key] = g

        for node, g in zip(self.outputs, dys):
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"{self.name}: gradient for output {node.name!r} must be a "
                                f"numpy.ndarray, got {type(g).__name__}")
            accumulate(node, g)
        trace, self._trace = self._trace, None
        steps, states = trace if trace else ([_fusion.PlanStep((n,)) for n in self.nodes], {})
        with blas_pass():
            for step in reversed(steps):
                first, last = step.nodes[0], step.nodes[-1]
                g = grads.pop(id(last), None)
                if g is None:
                    raise RuntimeError(f"{self.name}: node {last.name!r} received no gradient "
                                       "(every output needs a gradient)")
                need = input_grads or not all(isinstance(p, Input) for p in first.inputs)
                if step.fusion is not None:
                    dx = _fusion.backward(step, states.pop(id(last), None), g, need)
                else:
                    dx = last.layer.backward(g, need_input_grad=need)
                if self.check_finite:
                    for key, grad in last.layer.grads.items():
                        self._check_finite(last, grad, f"gradient of {key!r}")
                    for d in (dx if last.layer.is_merge else [dx]):
                        if d is not None:
                            self._check_finite(last, d, "input gradient")
                if dx is None:
                    continue
                if first.layer.is_merge:
                    for p, gp in zip(first.inputs, dx):
                        accumulate(p, gp)
                else:
                    accumulate(first.inputs[0], dx)
        dxs = [grads.get(id(n)) if input_grads else None for n in self.inputs]
        return dxs if self._multi_in else dxs[0]

    # ------------------------------------------------------------------ description
    def summary(self, dtype=None) -> str:
        """A table: layer, variant in use, output shape, parameter count, and totals."""
        dtype = np.dtype(dtype or self.dtype)
        rows = [("Layer (type)", "Variant", "Output shape", "Params")]
        for n in self.inputs:
            rows.append((f"{n.name} (Input)", "-", _fmt_shape(n.shape), "0"))
        for node in self.nodes:
            layer = node.layer
            try:
                v = layer.variant(dtype)
                variant = "-" if v is None else f"{v.name} [{v.plugin.rsplit('.', 1)[-1]}]"
            except Exception as exc:  # show the problem rather than failing the summary
                variant = f"unavailable: {exc}"
            rows.append((f"{node.name} ({type(layer).__name__})", variant, _fmt_shape(node.shape),
                         f"{layer.num_params():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = "-" * (sum(widths) + 6)
        out = [f'Model "{self.name}" ({dtype.name})', line]
        for i, r in enumerate(rows):
            out.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w)
                                 for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0:
                out.append(line)
        out.append(line)
        total = self.num_params()
        nbytes = sum(p.nbytes for p in self.named_parameters().values())
        out.append(f"Total params: {total:,} ({nbytes / 1024:.1f} KiB)")
        trainable = sum(layer.num_params() for layer in self.layers if layer.trainable)
        out.append(f"Trainable params: {trainable:,}")
        if trainable != total:
            out.append(f"Frozen params: {total - trainable:,}")
        return "\n".join(out)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}: {len(self.nodes)} layers, " \
               f"{self.num_params():,} params>"

    # ------------------------------------------------------------------ training
    def fit(self, x, y=None, *, validation_data=None, optimizer="adam", **kwargs):
        """Train this model, as Keras' ``model.fit``: ``model.fit(x, y, epochs=5,
        validation_data=(xv, yv))``, or ``model.fit(batches)`` with any re-iterable of
        ``(x_batch, y_batch)`` pairs.  ``optimizer`` is an optimizer object or a registered
        name (``"adam"``, ``"sgd"``, ...; built with its defaults for this model's parameters).
        Other arguments are those of :func:`cnnkit.train.fit`; returns its History."""
        from .optim import Optimizer, create
        from .train import fit

        if isinstance(optimizer, str):
            optimizer = create(optimizer, self)
        elif not (isinstance(optimizer, Optimizer) or callable(getattr(optimizer, "step", None))):
            raise TypeError(f"{self.name}.fit: optimizer must be an optimizer or a registered "
                            f"name, got {optimizer!r}")
        train = x if y is None else (x, y)
        return fit(self, train, validation_data, optimizer=optimizer, **kwargs)

    def evaluate(self, x, y=None, *, batch_size: int = 256, loss=None, metrics=None,
                 sample_weight=None) -> dict:
        """Loss, accuracy and the ``metrics`` named (see :mod:`cnnkit.metrics`) on ``(x, y)``
        in inference mode: ``model.evaluate(x_test, y_test, metrics=["top_k_accuracy:5"])``;
        ``sample_weight`` (N,) weighs the loss and accuracy (see :func:`cnnkit.train.evaluate`)."""
        from .train import evaluate

        data = x if y is None else (x, y)
        return evaluate(self, data, loss=loss, batch_size=batch_size, metrics=metrics,
                        sample_weight=sample_weight)


Graph = Model


class Sequential(Model):
    """A chain of layers.  Built (shapes inferred) from ``input_shape`` if given, otherwise on
    the first forward call."""

    def __init__(self, layers: Sequence[Layer] = (), input_shape=None, name: str | None = None):
        self.name = name or "sequential"
        self.training = True
        if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
            raise TypeError("Sequential: expected a list of layers")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is not a cnnkit layer: {layer!r}")
        self._pending = list(layers)
        self._built = False
        self.nodes, self.inputs, self.outputs = [], [], []
        if input_shape is not None:
            self.build(input_shape)

    def add(self, layer: Layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: not a cnnkit layer: {layer!r}")
        if self._built:
            apply_layer(layer, self.outputs[0])
            self._build(self.inputs[0], layer._node)
        else:
            self._pending.append(layer)
        return self

    def build(self, input_shape):
        """Infer every layer's output shape for inputs of ``input_shape`` (no batch axis)."""
        if self._built:
            raise RuntimeError(f"{self.name}: already built for input shape {self.input_shape}")
        if not self._pending:
            raise ValueError(f"{self.name}: no layers")
        for layer in self._pending:
            if getattr(layer, "_node", None) is not None:
                raise ValueError(f"{layer.name}: this layer object is already part of a graph")
        node = inp = Input(input_shape, name="input")
        try:
            for layer in self._pending:
                node = apply_layer(layer, node)
        except Exception:
            for layer in self._pending:
                layer._node = None
            raise
        self._build(inp, node)
        self._built = True
        return self

    @property
    def layers(self):
        return [n.layer for n in self.nodes] if self._built else list(self._pending)

    def forward(self, x, training=None):
        if not self._built:
            if not isinstance(x, np.ndarray) or x.ndim < 2:
                raise ValueError(f"{self.name}: expected a batched numpy array, got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
            self.build(x.shape[1:])
        return super().forward(x, training)

    __call__ = forward

    def backward(self, dy, input_grads: bool = True):
        if not self._built:
            raise RuntimeError(f"{self.name}: backward() before any forward()")
        return super().backward(dy, input_grads)

    def summary(self, dtype=None):
        if not self._built:
            raise RuntimeError(f"{self.name}: not built yet; pass input_shape= or call build()")
        return super().summary(dtype)


class Parameter:
    """A handle on one parameter of a layer: ``value`` and its latest ``grad``."""

    __slots__ = ("layer", "key")

    def __init__(self, layer, key):
        self.layer, self.key = layer, key

    @property
    def name(self):
        return f"{self.layer.name}.{self.key}"

    @property
    def value(self) -> np.ndarray:
        return self.layer.params[self.key]

    @value.setter
    def value(self, arr):
        self.layer.params[self.key] = arr

    @property
    def grad(self):
        return self.layer.grads.get(self.key)

    def __repr__(self):
        return f"<Parameter {self.name} {self.value.shape}>"
