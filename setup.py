"""Build the Cython kernels in ``cnnkit/_ext``.

OpenMP is used when the compiler accepts it and silently left out when it does not:
the kernels are correct either way, only slower.  ``CNNKIT_DEBUG_BUILD=1`` turns Cython
bounds checking and wraparound back on (for fuzzing and debugging).
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
EXT_DIR = HERE / "cnnkit" / "_ext"
DEBUG = os.environ.get("CNNKIT_DEBUG_BUILD", "") not in ("", "0")


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) if the compiler lacks it."""
    if os.environ.get("CNNKIT_NO_OPENMP", "") not in ("", "0"):
        return [], []
    if sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    if not shutil.which(cc[0]):
        return [], []
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "omp_check.c")
        with open(c_file, "w") as fh:
            fh.write(src)
        for cflags, lflags in candidates:
            try:
                res = subprocess.run(cc + cflags + [c_file, "-o", os.path.join(tmp, "a.out")] + lflags,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            if res.returncode == 0:
                return cflags, lflags
    print("cnnkit: the compiler has no OpenMP; building the kernels single-threaded", file=sys.stderr)
    return [], []


def extensions():
    from Cython.Build import cythonize

    omp_c, omp_l = _openmp_flags()
    compile_args = [] if sys.platform == "win32" else ["-O3", "-Wno-unused-function", "-Wno-sign-compare"]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    exts = []
    for pyx in sorted(EXT_DIR.glob("*.pyx")):
        name = "cnnkit._ext." + pyx.stem
        exts.append(Extension(name, [str(pyx.relative_to(HERE))], include_dirs=[np.get_include()],
                              define_macros=macros, extra_compile_args=compile_args + omp_c,
                              extra_link_args=omp_l))
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "nonecheck": DEBUG,
        "embedsignature": True,
    }
    build_dir = os.environ.get("CNNKIT_CYTHON_BUILD_DIR")
    return cythonize(exts, compiler_directives=directives, build_dir=build_dir, quiet=True)


if __name__ == "__main__":
    setup(ext_modules=extensions())
