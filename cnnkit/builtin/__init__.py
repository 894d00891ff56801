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
_views: dict = {}


class _LegacyView(types.ModuleType):
    """The names of the family modules; an assignment (``monkeypatch.setattr``) is passed on
    to the family module that owns the name, where the code reads it."""

    def __init__(self, name, owners):
        super().__init__(name)
        self.__dict__["_owners"] = owners
        self.__dict__.update({attr: getattr(module, attr) for attr, module in owners.items()})

    def __setattr__(self, attr, value):
        owner = self.__dict__["_owners"].get(attr)
        if owner is None:
            raise AttributeError(f"{self.__name__}: {attr!r} is not one of its names")
        setattr(owner, attr, value)
        self.__dict__[attr] = value


def __getattr__(name):
    """``cnnkit.builtin.numpy_variants`` / ``cython_variants``, the modules that held every
    variant before the per-family layout: a view of the family modules' variant classes (and,
    for ``cython_variants``, their tuning constants such as ``COL_WORKSPACE_BYTES``), so
    ``from cnnkit.builtin import cython_variants as cy; cy.Conv2dCython`` keeps working."""
    suffix = _LEGACY.get(name)
    if suffix is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _views:
        import importlib

        owners = {}
        for module_name in PLUGIN_MODULES:
            module = importlib.import_module(module_name)
            names = getattr(module, "__all__", ())
            if any(n.endswith(suffix) for n in names):
                owners.update({n: module for n in names
                               if n.endswith(suffix) or (suffix == "Cython" and n.isupper())})
        _views[name] = _LegacyView(f"{__name__}.{name}", owners)
    return _views[name]
