"""The cnnkit plugin contract.

Every hook receives a ``register`` callback and calls it once per thing it registers; the host
stamps each registration with the name of the plugin that made it.  Hooks return nothing.  A
plugin module implements any subset of these hooks with functions decorated by
``cnnkit.hookimpl`` and is found through the ``cnnkit`` entry-point group::

    # pyproject.toml of a plugin package
    [project.entry-points.cnnkit]
    my_plugin = "my_package.plugin"

Variant kernels
---------------
A *variant* is one implementation of a layer type.  It is an object (a class, instance or
module) with two callables::

    forward(x, params, config, need_backward) -> (y, ctx)
    backward(dy, ctx) -> (dx, grads)

``x`` is a C-contiguous float32 or float64 NCHW (or N, features) array; ``params`` maps parameter
names to arrays of the same dtype (for ``conv2d``: ``weight`` (out, in/groups, kh, kw) and
``bias`` (out,) or ``None``); ``config`` is the layer's resolved hyper-parameters (see each layer
class's ``config``); ``need_backward`` is False in inference, where ``ctx`` must be ``None`` so
nothing is kept.  ``backward`` returns the input gradient and a dict with one gradient per
non-``None`` parameter.  Variants never modify their inputs.

A variant whose ``backward`` accepts a keyword ``need_input_grad`` is called with
``need_input_grad=False`` when nobody needs the input gradient (a network's first layer during
training); it may then skip that work and return ``None`` for it.
"""
from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("cnnkit")

@hookspec
def cnnkit_register_layers(register: Callable[..., None]) -> None:
    """Register layer types.

    Call ``register(name, layer_class)`` once per layer type.  ``name`` is the lowercase
    layer-type identifier (``"conv2d"``), ``layer_class`` a subclass of ``cnnkit.layers.Layer``
    whose ``layer_type`` attribute equals ``name``.  Registering a name that another plugin has
    already registered is an error naming both plugins.
    """

@hookspec
def cnnkit_register_variants(register: Callable[..., None]) -> None:
    """Register implementation variants of layer types.

    Call ``register(layer_type, name, impl, *, priority=0, dtypes=("float32", "float64"),
    capabilities=(), supports=None, description="")`` once per variant:

    - ``layer_type``: the layer type it implements (``"conv2d"``); the type may come from
      another plugin.
    - ``name``: the variant name users pick with ``impl=`` (``"cython"``, ``"numpy"``, ...).
    - ``impl``: an object with ``forward`` and ``backward`` as described in this module's
      docstring.
    - ``priority``: among the variants that support a request, the highest wins automatic
      selection.  Built-ins use 100 (Cython) and 0 (NumPy reference).
    - ``dtypes``: the input dtypes the variant accepts.
    - ``capabilities``: the non-default features it supports, from the layer type's
      ``FEATURES`` (for conv2d: ``stride``, ``padding``, ``asymmetric_padding``, ``dilation``,
      ``groups``, ``bias``).  A request using a feature not declared here is refused.
    - ``supports``: optional ``callable(config, dtype) -> str | None`` for finer limits; it
      returns ``None`` when it can serve the request, otherwise the reason it cannot.

    Two plugins registering the same ``(layer_type, name)`` is an error naming both.
    """

@hookspec
def cnnkit_register_optimizers(register: Callable[..., None]) -> None:
    """Register optimizers.

    Call ``register(name, optimizer_class)`` once per optimizer.  ``optimizer_class(model_or_params,
    **hyperparameters)`` must implement ``step()``, ``zero_grad()``, ``state_dict()`` and
    ``load_state_dict(state)``; subclassing ``cnnkit.optim.Optimizer`` gives all but ``step``.
    Names are case-insensitive and unique across plugins.
    """

@hookspec
def cnnkit_register_initializers(register: Callable[..., None]) -> None:
    """Register weight initializers.

    Call ``register(name, fn)`` once per initializer, where
    ``fn(shape, *, fan_in, fan_out, rng, dtype, **options) -> numpy.ndarray`` returns a new array
    of ``shape`` and ``dtype`` drawn with the ``numpy.random.Generator`` ``rng``.  ``fan_in`` and
    ``fan_out`` follow PyTorch's convention (for a conv weight (out, in/groups, kh, kw):
    ``in/groups*kh*kw`` and ``out*kh*kw``).  Names are unique across plugins.
    """


__all__ = [
    "hookspec",
    "cnnkit_register_layers",
    "cnnkit_register_variants",
    "cnnkit_register_optimizers",
    "cnnkit_register_initializers",
]

