"""Compiled kernels, one module per layer family (``<name>.pyx`` here builds ``<name>``).

``_blas.pxd`` and ``_omp.pxd`` hold the inline helpers the modules share by ``cimport``.
"""
from pathlib import Path

#: Every compiled module, one per ``.pyx`` source shipped beside this file (the sources are
#: package data), so a new family's kernel is checked with no edit here; ``import cnnkit``
#: checks that each one is built.
MODULES = tuple(sorted(p.stem for p in Path(__file__).parent.glob("*.pyx")))
