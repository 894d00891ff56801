"""Build the Cython kernel ``cnnkit_example._mish`` (metadata is in pyproject.toml).

OpenMP is used when the compiler accepts ``-fopenmp`` (or the platform's equivalent) and left
out otherwise: the kernel is correct either way, only single-threaded.
``CNNKIT_EXAMPLE_NO_OPENMP=1`` forces it off.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from setuptools import Extension, setup

_OMP_TEST = ("#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\n"
             "n+=1;\nreturn n>0?0:1;}\n")


def openmp_flags():
    """(compile_args, link_args) for OpenMP, or ([], []) when the compiler lacks it."""
    if os.environ.get("CNNKIT_EXAMPLE_NO_OPENMP", "") not in ("", "0"):
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if not shutil.which(cc[0]):
        return [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as fh:
            fh.write(_OMP_TEST)
        for cflags, lflags in candidates:
            try:
                res = subprocess.run(cc + cflags + [src, "-o", os.path.join(tmp, "a.out")]
                                     + lflags, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            if res.returncode == 0:
                return cflags, lflags
    print("cnnkit-example: no OpenMP in this compiler; building single-threaded", file=sys.stderr)
    return [], []


def extensions():
    from Cython.Build import cythonize

    omp_c, omp_l = openmp_flags()
    opt = [] if sys.platform == "win32" else ["-O3"]
    ext = Extension("cnnkit_example._mish", ["cnnkit_example/_mish.pyx"],
                    include_dirs=[np.get_include()],
                    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                    extra_compile_args=opt + omp_c, extra_link_args=omp_l)
    return cythonize([ext], quiet=True, compiler_directives={
        "language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True})


setup(ext_modules=extensions())
