"""The built-in plugins.  They register through the same hooks as third-party plugins.

One module per layer family (``conv``, ``pool``, ``activation``, ...): the family's layer
types, its ``"numpy"`` reference and ``"cython"`` variants, and the hooks that register them;
plus ``optimizers`` and ``initializers``.  Every public module of this package is a built-in
plugin: adding ``builtin/upsample.py`` is all it takes to register a new family.
"""
from __future__ import annotations

import pkgutil
import types

#: The built-in plugin modules, in registration order.  Found by listing the package (nothing
#: is imported here: the registry imports them when it loads); private modules (``_x.py``)
#: hold shared plumbing.
PLUGIN_MODULES = tuple(sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
                              if not m.name.startswith("_")))

_LEGACY = {"numpy_variants": "Numpy", "cython_variants": "Cython"}


def __getattr__(name):
    """``cnnkit.builtin.numpy_variants`` / ``cython_variants``, the modules that held every
    variant class before the per-family layout: a read-only view of the family modules' classes,
    so ``from cnnkit.builtin import numpy_variants as nv; nv.Conv2dNumpy`` keeps working."""
    suffix = _LEGACY.get(name)
    if suffix is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    view = types.SimpleNamespace()
    for module_name in PLUGIN_MODULES:
        module = importlib.import_module(module_name)
        for attr in getattr(module, "__all__", ()):
            if attr.endswith(suffix):
                setattr(view, attr, getattr(module, attr))
    return view
