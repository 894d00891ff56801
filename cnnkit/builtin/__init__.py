"""The built-in plugins.  They register through the same hooks as third-party plugins.

One module per layer family (``conv``, ``pool``, ``activation``, ...): the family's layer
types, its ``"numpy"`` reference and ``"cython"`` variants, and the hooks that register them;
plus ``optimizers`` and ``initializers``.  Every public module of this package is a built-in
plugin: adding ``builtin/upsample.py`` is all it takes to register a new family.
"""
from __future__ import annotations

import pkgutil

#: The built-in plugin modules, in registration order.  Found by listing the package (nothing
#: is imported here: the registry imports them when it loads); private modules (``_x.py``)
#: hold shared plumbing.
PLUGIN_MODULES = tuple(sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
                              if not m.name.startswith("_")))
