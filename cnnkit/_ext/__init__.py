"""Compiled kernels, one module per layer family (``<name>.pyx`` here builds ``<name>``).

``_blas.pxd`` and ``_omp.pxd`` hold the inline helpers the modules share by ``cimport``.

Some modules are also built per instruction set (``conv_avx2``, ``conv_avx512``, ...: the same
source compiled with ``-mavx2 -mfma`` or the AVX-512 flags, see ``setup.py``).  Those builds are
optional: ``import cnnkit`` needs only :data:`MODULES`, and :func:`isa_module` imports an
instruction-set build only on a CPU that has every feature it was compiled for (its code may
use those instructions anywhere, its import included).
"""
import importlib
import importlib.util
import threading
from pathlib import Path

#: Every portable compiled module, one per ``.pyx`` source shipped beside this file (the
#: sources are package data), so a new family's kernel is checked with no edit here;
#: ``import cnnkit`` checks that each one is built.
MODULES = tuple(sorted(p.stem for p in Path(__file__).parent.glob("*.pyx")))

#: The instruction-set builds: suffix -> the CPU features its compiler flags (``setup.py``'s
#: ``ISA_FLAGS``) let the compiler use.
ISA_FEATURES = {
    "avx2": ("avx2", "fma"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"),
}

_loaded = {}
_lock = threading.Lock()


def isa_module(module, isa):
    """``(cnnkit._ext.<module>_<isa>, None)``, or ``(None, reason)`` when it cannot be used:
    the CPU lacks a feature the build needs (it is then never imported), or the build is
    missing (``CNNKIT_NO_ISA=1``, not x86-64, a compiler without the flags) or fails to
    import.  The outcome of an import is kept; the CPU check is made on every call, since
    ``CNNKIT_CPU_FEATURES_DISABLE`` may change."""
    from cnnkit._cpu import missing_cpu_features

    needed = ISA_FEATURES[isa]
    missing = missing_cpu_features(needed)
    if missing:
        return None, (f"needs CPU features {', '.join(needed)} (this CPU lacks "
                      f"{', '.join(missing)})")
    name = f"{__name__}.{module}_{isa}"
    with _lock:
        if name not in _loaded:
            if importlib.util.find_spec(name) is None:
                _loaded[name] = (None, f"not built: {name} is not installed (instruction-set "
                                       "builds need x86-64 and a compiler that accepts the "
                                       "flags; CNNKIT_NO_ISA=1 leaves them out)")
            else:
                try:
                    _loaded[name] = (importlib.import_module(name), None)
                except ImportError as exc:
                    _loaded[name] = (None, f"not built: {name} failed to import: {exc}")
        return _loaded[name]
