"""Compiled kernels, one module per layer family (``<name>.pyx`` here builds ``<name>``).

``_blas.pxd`` and ``_omp.pxd`` hold the inline helpers the modules share by ``cimport``.
"""

#: Every compiled module; ``import cnnkit`` checks that each one is built.
MODULES = ("activation", "conv", "dropout", "norm", "pool")
