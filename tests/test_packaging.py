"""Build and packaging behaviour: OpenMP detection, the missing-extension message, the kernel
module list and the files the package ships."""
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_module(monkeypatch):
    monkeypatch.chdir(ROOT)
    return runpy.run_path(str(ROOT / "setup.py"), run_name="cnnkit_setup")


def test_openmp_is_detected_when_the_compiler_has_it(setup_module, monkeypatch):
    if not shutil.which("gcc"):
        pytest.skip("gcc not available")
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.delenv("CNNKIT_NO_OPENMP", raising=False)
    assert setup_module["_openmp_flags"]() == (["-fopenmp"], ["-fopenmp"])


def test_build_goes_on_without_openmp(setup_module, monkeypatch, tmp_path):
    # a "compiler" that rejects everything, as one without OpenMP rejects -fopenmp
    fake = tmp_path / "nocc"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert setup_module["_openmp_flags"]() == ([], [])
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.setenv("CNNKIT_NO_OPENMP", "1")
    assert setup_module["_openmp_flags"]() == ([], [])


def test_import_without_compiled_kernels_says_how_to_build(tmp_path):
    src = ROOT / "cnnkit"
    dst = tmp_path / "cnnkit"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c",
                                                            "__pycache__"))
    res = subprocess.run([sys.executable, "-c", "import cnnkit"], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert res.returncode != 0
    assert "compiled kernels are missing" in res.stderr
    assert "pip install" in res.stderr and "build_ext --inplace" in res.stderr


def _compiled_modules():
    """``cnnkit._ext.MODULES``, read from the file so this needs no built kernels."""
    return runpy.run_path(str(ROOT / "cnnkit" / "_ext" / "__init__.py"))["MODULES"]


def test_every_kernel_source_is_a_listed_module():
    pyx = sorted(p.stem for p in (ROOT / "cnnkit" / "_ext").glob("*.pyx"))
    assert pyx, "no .pyx found"
    assert sorted(_compiled_modules()) == pyx


@pytest.mark.parametrize("module", _compiled_modules())
def test_import_names_each_missing_kernel_module(module, tmp_path):
    """Every compiled module is checked on import, not only the first few."""
    dst = tmp_path / "cnnkit"
    shutil.copytree(ROOT / "cnnkit", dst, ignore=shutil.ignore_patterns("*.c", "__pycache__"))
    built = list((dst / "_ext").glob(module + ".*.so")) + list((dst / "_ext").glob(module + ".*.pyd"))
    if not built:
        pytest.skip("the kernels are not built in place in this checkout")
    for path in built:
        path.unlink()
    res = subprocess.run([sys.executable, "-c", "import cnnkit"], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert res.returncode != 0
    assert f"cnnkit._ext.{module} " in res.stderr
    others = [m for m in _compiled_modules() if m != module]
    assert not any(f"cnnkit._ext.{m} " in res.stderr for m in others)


def test_package_data_ships_kernel_sources_and_pxd(tmp_path):
    """The files a wheel or sdist copies from cnnkit/_ext (setuptools' build_py step, driven by
    pyproject.toml) include every .pyx and the shared .pxd the .pyx files cimport."""
    script = ("import sys; from setuptools import setup; "
              "setup(script_args=['-q', 'egg_info', '--egg-base', sys.argv[1], "
              "'build_py', '--build-lib', sys.argv[2]])")
    lib = tmp_path / "lib"
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(lib)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    src = ROOT / "cnnkit" / "_ext"
    shipped = {p.name for p in (lib / "cnnkit" / "_ext").iterdir()}
    wanted = {p.name for p in src.glob("*.pyx")} | {p.name for p in src.glob("*.pxd")}
    assert {"_blas.pxd", "_omp.pxd"} <= wanted
    assert wanted <= shipped, f"not shipped: {sorted(wanted - shipped)}"


def test_isa_builds_need_x86_64_and_a_compiler_that_takes_the_flags(setup_module, monkeypatch,
                                                                    tmp_path):
    monkeypatch.delenv("CNNKIT_NO_ISA", raising=False)
    platform = setup_module["platform"]
    if shutil.which("gcc") and platform.machine().lower() in ("x86_64", "amd64"):
        monkeypatch.setenv("CC", "gcc")
        assert setup_module["_isa_flags"]() == setup_module["ISA_FLAGS"]
        monkeypatch.setenv("CNNKIT_NO_ISA", "1")
        assert setup_module["_isa_flags"]() == {}
        monkeypatch.delenv("CNNKIT_NO_ISA")
    fake = tmp_path / "nocc"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert setup_module["_isa_flags"]() == {}
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert setup_module["_isa_flags"]() == {}


def test_isa_sources_include_the_portable_source(setup_module):
    """The instruction-set modules are compiled from the portable .pyx itself, not a copy."""
    for module in setup_module["ISA_MODULES"]:
        path = ROOT / setup_module["_isa_source"](module, "avx2")
        text = path.read_text()
        assert path.name == f"{module}_avx2.pyx"
        assert f'include "../../cnnkit/_ext/{module}.pyx"' in text
        assert len(text.splitlines()) <= 4
