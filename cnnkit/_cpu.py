"""Which instruction-set features the running CPU has, for variants that declare the features
they need (``register(..., cpu_features=("avx2", "fma"))``).

The answer comes from :mod:`cnnkit._ext.cpuinfo` (the compiler's run-time CPU check), else from
NumPy's own CPU dispatch table, else no feature at all (a variant that needs one is then never
chosen: slower, never wrong).  ``CNNKIT_CPU_FEATURES_DISABLE=avx512f,avx2`` makes cnnkit treat
the listed features as missing (``all`` for every one), to test or force the portable
kernels.
"""
from __future__ import annotations

import functools
import os

__all__ = ["DISABLE_ENV", "KNOWN_FEATURES", "cpu_features", "missing_cpu_features"]

#: The feature names a variant may declare (lower case, as GCC's ``-m`` flags spell them).
KNOWN_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")

DISABLE_ENV = "CNNKIT_CPU_FEATURES_DISABLE"

# NumPy's names where they differ from ours
_NUMPY_NAMES = {"fma": "FMA3"}


@functools.lru_cache(maxsize=None)
def detected_cpu_features() -> frozenset:
    """The features of :data:`KNOWN_FEATURES` this CPU (and its operating system) supports."""
    from cnnkit._ext import cpuinfo

    found = cpuinfo.supported()
    if found is None:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
        except ImportError:
            numpy_features = {}
        found = {name: bool(numpy_features.get(_NUMPY_NAMES.get(name, name.upper())))
                 for name in KNOWN_FEATURES}
    return frozenset(name for name in KNOWN_FEATURES if found.get(name))


@functools.lru_cache(maxsize=16)
def _disabled(value: str) -> frozenset:
    names = {item.strip().lower() for item in value.split(",") if item.strip()}
    if "all" in names:
        return frozenset(KNOWN_FEATURES)
    unknown = sorted(names - set(KNOWN_FEATURES))
    if unknown:
        raise ValueError(f"{DISABLE_ENV}: unknown CPU feature(s) {', '.join(unknown)} (known: "
                         f"{', '.join(KNOWN_FEATURES)}, or all)")
    return frozenset(names)


def cpu_features() -> frozenset:
    """The features variants may use: those detected minus those ``CNNKIT_CPU_FEATURES_DISABLE``
    lists (read on every call, so a test can set it)."""
    return detected_cpu_features() - _disabled(os.environ.get(DISABLE_ENV, ""))


def missing_cpu_features(needed) -> list[str]:
    """The features of ``needed`` that :func:`cpu_features` lacks, in ``needed``'s order."""
    have = cpu_features()
    return [name for name in needed if name not in have]
