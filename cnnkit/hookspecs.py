"""The cnnkit plugin contract: everything a plugin implements, in one file.

1. **Hooks** (bottom of this file).  A plugin module implements any subset of the six
   ``cnnkit_register_*`` hooks with functions decorated by ``cnnkit.hookimpl``.  Every hook
   receives a ``register`` callback and calls it once per thing it registers; the host stamps
   each registration with the name of the plugin that made it.  Hooks return nothing, and every
   plugin's implementation is called (no "first result wins").  A plugin module is found through
   the ``cnnkit`` entry-point group::

       # pyproject.toml of a plugin package
       [project.entry-points.cnnkit]
       my_plugin = "my_package.plugin"

2. **Variants** (:class:`VariantProtocol`, and the optional :class:`InputGradSkippingVariant`
   and :class:`StatisticsVariant`): the objects ``cnnkit_register_variants`` registers, one
   implementation of a layer type each.

3. **Fusions** (:class:`FusionProtocol`): what ``cnnkit_register_fusions`` registers, a chain
   of layers the model executor may run as one call.

4. **Optimizers** (:class:`OptimizerProtocol`): what an instance of a class registered with
   ``cnnkit_register_optimizers`` provides, including the trait ``needs_closure``.

5. **ONNX exporters** (:class:`OnnxExporter`, writing through :class:`OnnxExportContext`):
   what ``cnnkit_register_onnx_exporters`` registers, the ONNX form of a layer type.

Layer types are subclasses of ``cnnkit.layers.Layer`` (see its docstring); initializers are
plain functions (see :func:`cnnkit_register_initializers`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np
import pluggy

hookspec = pluggy.HookspecMarker("cnnkit")


# ---------------------------------------------------------------------------------- variants
@runtime_checkable
class VariantProtocol(Protocol):
    """One implementation of a layer type: an object (a class with static methods, an
    instance or a module) with ``forward`` and ``backward``.

    Variants never modify their inputs (``x``, ``params``, ``config``, ``dy``).  One variant
    object serves every layer of its type, possibly from several threads at once, so what
    ``backward`` needs travels in ``ctx``, never in the variant.
    """

    def forward(self, x: np.ndarray, params: Mapping[str, np.ndarray | None],
                config: Mapping[str, Any], need_backward: bool) -> tuple[np.ndarray, Any]:
        """Compute the layer's output; return ``(y, ctx)``.

        - ``x``: a C-contiguous float32 or float64 array, batch first (NCHW for image
          layers, (N, features) for dense), of a dtype the variant declared in ``dtypes``.
        - ``params``: parameter name -> array of ``x``'s dtype, or ``None`` for an absent
          parameter (for ``conv2d``: ``weight`` (out, in/groups, kh, kw) and ``bias`` (out,)
          or ``None``).
        - ``config``: the layer's hyper-parameters resolved for this input shape
          (``layer.resolve(x.shape)``, e.g. Conv2D's ``padding="same"`` already turned into
          (top, bottom, left, right)); the layer classes document their keys.
        - ``need_backward``: True when ``backward`` will follow (training).  When False,
          ``ctx`` must be ``None`` so nothing is kept.

        ``y`` must be a new array of ``x``'s dtype with the layer's output shape; ``ctx`` is
        anything the variant's ``backward`` needs, passed back to it unchanged.
        """

    def backward(self, dy: np.ndarray,
                 ctx: Any) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """Back-propagate; return ``(dx, grads)``.

        ``dy`` is the gradient of the loss w.r.t. ``y`` (C-contiguous, ``y``'s shape and
        dtype) and ``ctx`` what ``forward`` returned.  ``dx`` is the gradient w.r.t. ``x``
        (``x``'s shape and dtype); ``grads`` has one gradient per non-``None`` parameter, under
        the parameter's name, of the parameter's shape.
        """


@runtime_checkable
class InputGradSkippingVariant(Protocol):
    """OPTIONAL: a variant whose ``backward`` accepts the keyword ``need_input_grad``.

    The layer then calls ``backward(dy, ctx, need_input_grad=False)`` when nobody needs the
    input gradient (a network's first layer during training); the variant may skip that work
    and return ``(None, grads)``.  Returning a real ``dx`` anyway is allowed.  Variants without
    the keyword are always called as ``backward(dy, ctx)``.
    """

    def backward(self, dy: np.ndarray, ctx: Any, *, need_input_grad: bool = True
                 ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """As :meth:`VariantProtocol.backward`; ``dx`` may be ``None`` when
        ``need_input_grad`` is False."""


@runtime_checkable
class StatisticsVariant(Protocol):
    """OPTIONAL, for ``batchnorm1d`` / ``batchnorm2d`` variants: expose the batch statistics
    the training forward computed, so the layer updates its running averages from them
    instead of computing them again with NumPy."""

    def statistics(self, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, biased_var)`` per channel (shape (C,), any float dtype; the layer
        converts to float64) of the batch whose training ``forward`` returned ``ctx``.
        ``biased_var`` divides by the number of values per channel, not that number - 1."""


# ----------------------------------------------------------------------------------- fusions
@runtime_checkable
class FusionProtocol(Protocol):
    """A chain of layers (``pattern``, e.g. conv2d then relu) computed by one call.

    The model executor uses it in place of the layers one by one where the chain's inner
    outputs feed nothing else (not another layer, not a model output), the fusion is enabled
    (``cnnkit.set_fusion``, ``CNNKIT_FUSION``) and its registration's ``variants``, ``modes``
    and ``supports`` accept the layers.  Fusion is an execution plan: the layers, their names,
    parameters and state dicts are unchanged.  Results must equal the unfused chain's (bitwise
    where the registration says it stands in for given variants, documented otherwise).
    """

    def forward(self, x: np.ndarray, layers: list, configs: list,
                need_backward: bool) -> tuple[np.ndarray, Any]:
        """Compute the last layer's output from the first layer's input; return ``(y, ctx)``.

        ``x`` is the first layer's checked, C-contiguous input; ``layers`` the layer objects of
        the chain (read ``layer.params``, and buffers such as a batch norm's running
        statistics); ``configs`` each layer's configuration resolved for its input shape.
        ``need_backward`` as in :meth:`VariantProtocol.forward`.
        """

    def backward(self, dy: np.ndarray, ctx: Any, *, need_input_grad: bool = True
                 ) -> tuple[np.ndarray | None, list]:
        """Back-propagate through the chain; return ``(dx, grads)`` with ``grads`` a list of
        one dict per layer (as a variant's ``grads``).  ``dx`` may be ``None`` when
        ``need_input_grad`` is False."""


# -------------------------------------------------------------------------------- optimizers
@runtime_checkable
class OptimizerProtocol(Protocol):
    """An instance of a registered optimizer class, built as
    ``optimizer_class(model_or_params, **hyperparameters)``.  Subclassing
    ``cnnkit.optim.Optimizer`` provides all of it but ``step``.
    """

    #: True for an optimizer whose ``step(closure)`` re-evaluates the loss (L-BFGS's line
    #: search).  The trainer then calls ``step(closure)``, where ``closure()`` zeroes the
    #: gradients, runs forward and backward, fills the gradients and returns the loss;
    #: otherwise it runs forward and backward itself and calls ``step()``.  Default False.
    needs_closure: bool

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Update the parameters in place from their gradients (``layer.grads``).  Optimizers
        with ``needs_closure`` receive the closure described above and return the loss its
        first call gave; the others are called without arguments."""

    def zero_grad(self) -> None:
        """Forget the gradients of every parameter this optimizer updates."""

    def state_dict(self) -> dict:
        """A copy of everything needed to continue exactly where the optimizer is
        (hyper-parameters, step count, per-parameter state keyed by parameter name)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, possibly in another process; raise
        ``TypeError``/``ValueError`` naming the optimizer for a state it cannot take."""


# ---------------------------------------------------------------------------------- ONNX export
@runtime_checkable
class OnnxExportContext(Protocol):
    """What an :class:`OnnxExporter` receives to write its nodes (``cnnkit.onnx.export``
    creates it; the ``onnx`` package is imported by then, plugin modules need not import it).

    Names: a layer's parameters and buffers are ONNX initializers under their state-dict names
    (``"0.weight"``, ``"conv1.running_mean"``); every other name is made unique and starts with
    the layer's state-dict prefix (``"0/Conv"``).
    """

    #: the ONNX opset being written (``ai.onnx`` domain), at least ``cnnkit.onnx.MIN_OPSET``
    opset: int
    #: the floating-point dtype of the exported model's tensors (the model's dtype)
    dtype: np.dtype

    def node(self, op_type: str, inputs: list[str], *, outputs: int = 1,
             **attributes: Any) -> Any:
        """Add an ONNX node (standard ``ai.onnx`` operator) reading the value names
        ``inputs`` (``""`` for an omitted optional input), with the given attributes (ints,
        floats, strings and lists of them); return its output name, or a list of
        ``outputs`` names when ``outputs`` > 1."""

    def param(self, layer: Any, key: str) -> str:
        """The initializer holding ``layer``'s parameter or buffer ``key`` (``"weight"``,
        ``"running_var"``) as it is, cast to :attr:`dtype`; added once, under its state-dict
        name."""

    def constant(self, value: Any, hint: str = "const", dtype: Any = None) -> str:
        """A new initializer holding ``value`` (a number or an array, e.g. a weight the
        exporter transformed): floating-point values are cast to :attr:`dtype` unless
        ``dtype`` is given, integers are kept (use int64 for shapes and axes)."""


@runtime_checkable
class OnnxExporter(Protocol):
    """The ONNX form of a layer type, in inference mode (what ``forward(x, training=False)``
    computes), made of standard ONNX operators."""

    def __call__(self, ctx: OnnxExportContext, layer: Any, inputs: list[str],
                 input_shapes: list[tuple]) -> str:
        """Add the nodes computing ``layer`` through ``ctx`` and return the name of the value
        holding its output.

        ``inputs`` are the names of the layer's input values (one, or several for a merge
        layer), ``input_shapes`` their shapes with the batch entry ``None`` (the batch axis
        stays dynamic in the file, so nodes must not depend on it; ``layer.resolve(shape)``
        gives the configuration resolved for the rest of the shape, such as Conv2D's
        ``padding="same"``).  Raise ``ValueError`` naming the layer for a configuration or an
        ``ctx.opset`` it cannot express.
        """


# ------------------------------------------------------------------------------------- hooks
@hookspec
def cnnkit_register_layers(register: Callable[..., None]) -> None:
    """Register layer types.

    Call ``register(name, layer_class)`` once per layer type.  ``name`` is the lowercase
    layer-type identifier (``"conv2d"``), ``layer_class`` a subclass of ``cnnkit.layers.Layer``
    whose ``layer_type`` attribute equals ``name``.  Registering a name that another plugin has
    already registered is an error naming both plugins.  Returns nothing.
    """

@hookspec
def cnnkit_register_variants(register: Callable[..., None]) -> None:
    """Register implementation variants of layer types.

    Call ``register(layer_type, name, impl, *, priority=0, dtypes=("float32", "float64"),
    capabilities=(), supports=None, description="", auto_dtypes=None, auto_supports=None,
    tolerance=None, cpu_features=())`` once per variant:

    - ``layer_type``: the layer type it implements (``"conv2d"``); the type may come from
      another plugin.
    - ``name``: the variant name users pick with ``impl=`` (``"cython"``, ``"numpy"``, ...).
    - ``impl``: the variant, a :class:`VariantProtocol` (optionally also an
      :class:`InputGradSkippingVariant` and, for batch normalisation, a
      :class:`StatisticsVariant`).
    - ``priority``: among the variants that support a request, the highest wins automatic
      selection.  Built-ins use 100 (Cython) and 0 (NumPy reference); conv2d's
      Winograd variant 110 (with ``auto_dtypes`` and ``auto_supports`` limits).
    - ``dtypes``: the input dtypes the variant accepts.
    - ``capabilities``: the non-default features it supports, from the layer type's
      ``FEATURES`` (for conv2d: ``stride``, ``padding``, ``asymmetric_padding``, ``dilation``,
      ``groups``, ``bias``).  A request using a feature not declared here is refused.
    - ``supports``: optional ``callable(config, dtype) -> str | None`` for finer limits, called
      with the resolved ``config`` and the dtype's name (``"float32"``); it returns ``None``
      when it can serve the request, otherwise the reason it cannot.
    - ``description``: one line shown by ``cnnkit kernels``.
    - ``auto_dtypes``: the dtypes automatic selection may pick it for (default: all of
      ``dtypes``); an explicit choice (``impl=``, ``cnnkit.use``, ``CNNKIT_IMPL``) may use it
      for any of ``dtypes``.  For a variant less accurate than the reference in some dtype.
    - ``auto_supports``: optional ``callable(config, dtype) -> str | None`` like ``supports``,
      asked by automatic selection only (for requests it serves, but slowly).
    - ``tolerance``: the largest error relative to the output scale the conformance kit allows
      it against the float64 reference, one number or ``{dtype: number}`` (default: the kit's,
      ``cnnkit.testing.DEFAULT_RTOL``).
    - ``cpu_features``: instruction-set features the variant's compiled code needs, from
      ``avx2``, ``fma``, ``avx512f``, ``avx512bw``, ``avx512vl``, ``avx512dq`` (a build with
      ``-mavx2 -mfma`` declares ``("avx2", "fma")``).  On a CPU lacking one the variant is
      refused with ``needs CPU features ... (this CPU lacks ...)``, so automatic selection
      moves on and an explicit choice raises ``SelectionError``; never call into such code
      before selection chose it.  ``CNNKIT_CPU_FEATURES_DISABLE=avx512f,...`` (or ``all``)
      makes cnnkit treat features as missing.  An ``impl`` may also define
      ``unavailable() -> str | None``: why it cannot run at all in this installation (a
      compiled module the build left out), checked when its CPU features are present.

    Two plugins registering the same ``(layer_type, name)`` is an error naming both.  Returns
    nothing.
    """

@hookspec
def cnnkit_register_optimizers(register: Callable[..., None]) -> None:
    """Register optimizers.

    Call ``register(name, optimizer_class)`` once per optimizer.  ``optimizer_class(model_or_params,
    **hyperparameters)`` must return an :class:`OptimizerProtocol`: ``step()``, ``zero_grad()``,
    ``state_dict()``, ``load_state_dict(state)`` and the ``needs_closure`` trait; subclassing
    ``cnnkit.optim.Optimizer`` gives all but ``step``.  Names are case-insensitive and unique
    across plugins.  Returns nothing.
    """

@hookspec
def cnnkit_register_initializers(register: Callable[..., None]) -> None:
    """Register weight initializers.

    Call ``register(name, fn)`` once per initializer, where
    ``fn(shape, *, fan_in, fan_out, rng, dtype, **options) -> numpy.ndarray`` returns a new array
    of ``shape`` and ``dtype`` drawn with the ``numpy.random.Generator`` ``rng``.  ``fan_in`` and
    ``fan_out`` follow PyTorch's convention (for a conv weight (out, in/groups, kh, kw):
    ``in/groups*kh*kw`` and ``out*kh*kw``).  Names are unique across plugins.  Returns nothing.

    A data-driven initializer sets the function attribute ``needs_data = True`` and takes a
    ``data=None`` keyword: called without data (when the layer is built) it returns a
    data-free start, then ``cnnkit.init.initialize_from_data(model, x)`` (also
    ``fit(..., init_data=True)`` and ``init_data = true`` in a config's training section) calls
    it again with ``data=`` the training images as the layer receives them, (N, C, H, W) for a
    convolution, and writes the result into the parameter in place.  Layers record the fans
    they drew with as ``layer.init_fans = (fan_in, fan_out)``.
    """

@hookspec
def cnnkit_register_fusions(register: Callable[..., None]) -> None:
    """Register fused chains of layers (:class:`FusionProtocol`).

    Call ``register(name, pattern, impl, *, variants=None, modes=("training", "inference"),
    priority=0, supports=None, description="")`` once per fusion:

    - ``name``: unique across plugins (``"conv2d+relu"``).
    - ``pattern``: the layer types of the chain, in order (``("conv2d", "relu")``).
    - ``impl``: a :class:`FusionProtocol`.
    - ``variants``: per layer of the pattern, the variant the layer must have selected for the
      fused call to stand in for it, or ``None`` for any; ``None`` alone: any variants.
    - ``modes``: ``"training"``, ``"inference"`` or both.
    - ``priority``: where several fusions start at the same layer the longest pattern is tried
      first, then the highest priority.
    - ``supports``: optional ``callable(layers, dtype) -> str | None``, the reason it cannot
      run these layers (dtype name such as ``"float32"``), or ``None``.

    Returns nothing.
    """


@hookspec
def cnnkit_register_onnx_exporters(register: Callable[..., None]) -> None:
    """Register the ONNX export of layer types (:class:`OnnxExporter`).

    Call ``register(layer_type, exporter)`` once per layer type; ``cnnkit.onnx.export`` calls
    ``exporter(ctx, layer, inputs, input_shapes)`` for every layer of that type.  The type may
    come from another plugin.  Registering an exporter for a layer type that already has one is
    an error naming both plugins.  Exporting a model with a layer whose type has no exporter
    fails, naming the layer and its type.  Returns nothing.
    """


__all__ = [
    "hookspec",
    "VariantProtocol",
    "InputGradSkippingVariant",
    "StatisticsVariant",
    "FusionProtocol",
    "OptimizerProtocol",
    "OnnxExportContext",
    "OnnxExporter",
    "cnnkit_register_layers",
    "cnnkit_register_variants",
    "cnnkit_register_optimizers",
    "cnnkit_register_initializers",
    "cnnkit_register_fusions",
    "cnnkit_register_onnx_exporters",
]
