"""cnnkit: convolutional networks for Python with compiled Cython kernels, where every layer
variant, optimizer and initializer is a pluggy plugin."""
from __future__ import annotations

__version__ = "0.1.0"


def _check_compiled():
    import importlib

    from ._ext import MODULES

    missing = []
    for mod in MODULES:
        try:
            importlib.import_module(f"cnnkit._ext.{mod}")
        except ImportError as exc:
            missing.append(f"cnnkit._ext.{mod} ({exc})")
    if missing:
        raise ImportError(
            "cnnkit's compiled kernels are missing: " + "; ".join(missing) + ". "
            "Build them by installing the package (`pip install .` or `pip install -e .` from a "
            "source checkout; a C compiler, Cython>=3 and NumPy>=2 are needed), or in place with "
            "`python setup.py build_ext --inplace`.")


from ._runtime import openmp_wait_policy as _openmp_wait_policy  # noqa: E402

with _openmp_wait_policy():  # libgomp reads its wait policy when the kernels load it
    _check_compiled()
del _check_compiled, _openmp_wait_policy

from ._threads import get_num_threads, num_threads, set_num_threads  # noqa: E402
from ._runtime import tune_malloc as _tune_malloc  # noqa: E402

_tune_malloc()

from . import (config, datasets, init, io, layers, losses, metrics, models, onnx,  # noqa: E402
               optim, plot, schedules, train, transforms)
from . import boosting  # noqa: E402  (after train: it builds on fit)
from ._random import seed  # noqa: E402
from .fusion import fusion_enabled, set_fusion  # noqa: E402
from .graph import Graph, Input, Model, Parameter, Sequential  # noqa: E402
from .hookspecs import hookspec  # noqa: E402
from .modelfile import load_model  # noqa: E402
from .plugins import SelectionError, PluginError, get_registry, hookimpl, use  # noqa: E402
from .autotuning import AutotuneWarning, autotune  # noqa: E402

__all__ = [
    "__version__", "config", "datasets", "init", "io", "layers", "losses", "models", "onnx", "optim",
    "metrics", "plot", "schedules", "train", "transforms", "boosting", "seed", "get_num_threads",
    "num_threads",
    "set_num_threads", "Graph", "Input", "Model", "Parameter", "Sequential", "hookimpl", "hookspec", "use", "get_registry",
    "SelectionError", "PluginError", "load_model", "autotune", "AutotuneWarning",
    "set_fusion", "fusion_enabled",
]
