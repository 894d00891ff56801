"""Layers: the user-facing objects, one module per family (``conv``, ``pool``, ``activation``,
``dropout``, ``norm``, ``dense``, ``reshape``, ``merge``; see docs/architecture.md).

Each layer validates its inputs, resolves its configuration against the input shape, asks the
plugin registry for the variant that computes it and keeps what its backward pass needs.  The
forward and backward maths live in the variants (``cnnkit.builtin`` for the built-ins); a layer
holds parameters, hyper-parameters and shape inference.  ``base`` holds :class:`Layer`, the base
class every layer, built-in or plugin, derives from.

Every public module of this package is a family: the names in its ``__all__`` are re-exported
here, so a new family needs no edit outside its own file.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import FLOAT_DTYPES, Layer, Resolution

__all__ = ["FLOAT_DTYPES", "Layer", "Resolution"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name == "base":
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)

# The public path of every layer class stays cnnkit.layers.<Name> (what reprs, listings and
# pickles show), whichever family module defines it.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _info, _module, _name, _obj
